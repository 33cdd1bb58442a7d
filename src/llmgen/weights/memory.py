"""Refuse, before reading, a checkpoint whose tensors would not fit in memory once loaded.

Sizes come from headers (GGUF tensor tables, safetensors headers, the shapes of memory-mapped tensors),
so the answer costs nothing. Memory-mapped tensors kept as stored are not counted: their pages belong to
the file and the kernel can drop them; what is counted is what loading copies (dequantized GGUF
tensors, dtype conversions).
"""

from __future__ import annotations

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
