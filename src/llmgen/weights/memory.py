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
from collections.abc import Callable

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
    if callable(_malloc_trim):
        _malloc_trim(0)


_malloc_trim: Callable[[int], int] | bool | None = None  # None: not looked up yet


def release_file_pages(tensor) -> None:
    """Hand the pages under a tensor that lies in a file mapping back to the kernel (a memory-mapped
    checkpoint: they are read again from the file if touched), so that they leave this process's resident
    set once what was needed is copied out of them. A tensor in any other memory is left alone: dropping
    anonymous pages would lose their data."""
    import mmap

    length = tensor.numel() * tensor.element_size()
    if length == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = tensor.data_ptr()
    if not _in_file_mapping(start, start + length):
        return
    page = mmap.PAGESIZE
    first, end = start // page * page, -(-(start + length) // page) * page
    # Pages shared with a neighbouring tensor are in the file too: dropping them only costs a re-read.
    _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), mmap.MADV_DONTNEED)


def _in_file_mapping(start: int, end: int) -> bool:
    """Whether start..end lies inside one mapping of a file (Linux's /proc/self/maps: an inode, a path)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= start and end <= high:
                    return len(fields) >= 6 and fields[4] != "0" and fields[5].startswith("/")
    except (OSError, ValueError, IndexError):
        pass
    return False


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _LIBC
