"""Refuse, before reading, a checkpoint whose tensors would not fit in memory once loaded.

Sizes come from headers (GGUF tensor tables, safetensors headers, the shapes of memory-mapped tensors),
so the answer costs nothing. Memory-mapped tensors kept as stored are not counted: their pages belong to
the file and the kernel can drop them; what is counted is what loading copies (dequantized GGUF
tensors, dtype conversions).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from llmgen.errors import LLMGenError

HEADROOM = 1.1  # the model's own buffers, caches and the allocator's slack


def available_bytes() -> int | None:
    """Memory the system can give us without swapping out others (Linux MemAvailable + free swap)."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:]}
        return info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None  # unknown (not Linux or a BSD): let the allocator decide


def check_memory(needed: int, what: str) -> None:
    available = available_bytes()
    if available is not None and needed * HEADROOM > available:
        raise LLMGenError(f"{what} needs about {needed * HEADROOM / 1e9:.1f} GB of memory once loaded, but only "
                          f"{available / 1e9:.1f} GB are available; use a smaller or more quantized model")


def return_freed_memory() -> None:
    """Hand memory freed by Python and torch back to the system (glibc's malloc_trim; nothing elsewhere).

    Converting a model's weights frees many chunks of a few MB; glibc keeps them for reuse, so without
    this a 1B model's loading ends ~250 MB above what the model holds (benchmarks/kquant_engines.py)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
