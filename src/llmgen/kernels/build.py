"""Which level of llmgen's kernels runs here, and its library: compiled once per machine, verified, loaded.

Levels: the same sources are built for the best instruction set the CPU has (LEVELS: avx512 with VNNI,
avx2, or portable C++ for anything else, ARM included), and LLMGEN_KERNELS=avx512|avx2|portable forces
a level the CPU supports, so every level can be tested on any machine able to run it. Without a C++
compiler, or with LLMGEN_KERNELS=0, models use PyTorch's kernels and ops instead.

Each level's library is compiled once per machine (a few seconds) into llmgen's data directory, named by
a hash of the sources, the compiler, the level and the CPU, and called through ctypes: plain pointers,
no Python objects, so no torch headers to compile against. Its OpenMP threads are PyTorch's: torch
loads libgomp first, and the library links the same libgomp.so.1.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from llmgen.errors import LLMGenWarning, first_line
from llmgen.kernels.abi import declare

HERE = Path(__file__).parent
SOURCES = (HERE / "int4_matmul.cpp", HERE / "int8_matmul.cpp", HERE / "bf16_matmul.cpp", HERE / "linear.cpp",
           HERE / "attention.cpp", HERE / "llama_layers.cpp", HERE / "repack.cpp")
HEADERS = (HERE / "kernels.h", HERE / "fast_exp.h", HERE / "simd.h")
FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


@dataclass(frozen=True)
class Level:
    name: str
    cpu_flags: tuple[str, ...]  # what /proc/cpuinfo must list
    compiler_flags: tuple[str, ...]  # what selects this level's code in the sources (int4_matmul.cpp)


# Best first: "auto" picks the first the CPU supports.
LEVELS = (
    Level("avx512", ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
          ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni")),
    Level("avx2", ("avx2", "fma", "f16c"), ("-mavx2", "-mfma", "-mf16c")),
    # Plain C++ for the machine's own vector unit (SSE, NEON, ...), the intrinsics left out.
    Level("portable", (), ("-march=native", "-DLLMGEN_PORTABLE")),
)
X86 = ("x86_64", "amd64", "i386", "i686")


def library() -> ctypes.CDLL | None:
    """The compiled kernel library of the selected level, or None where none runs (see unavailable_reason)."""
    chosen, reason = selected()
    return None if chosen is None or reason else _library(chosen)


def loaded() -> ctypes.CDLL:
    """The library, for code that runs only where the kernels do (after checking library())."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"llmgen's kernels do not run here: {unavailable_reason()}")
    return lib


def unavailable_reason() -> str | None:
    """Why llmgen's kernels are not used on this machine, or None when they are."""
    return selected()[1]


def level() -> str | None:
    """The name of the level in use ("avx512", "avx2", "portable"), or None."""
    chosen, reason = selected()
    return None if chosen is None or reason else chosen.name


def selected() -> tuple[Level | None, str | None]:
    """(the level llmgen's kernels run at, None) or (None, why they do not run): LLMGEN_KERNELS=0|auto|LEVEL
    (default auto: the best level this CPU supports), a C++ compiler, and a build that succeeds."""
    wanted = os.environ.get("LLMGEN_KERNELS", "auto").strip().lower() or "auto"
    if wanted in ("0", "off", "none"):
        return None, f"turned off by LLMGEN_KERNELS={wanted}"
    by_name = {lv.name: lv for lv in LEVELS}
    if wanted not in ("auto", "1", *by_name):
        return None, f"LLMGEN_KERNELS={wanted} is not one of 0, auto, {', '.join(by_name)}"
    if wanted in by_name:
        chosen = by_name[wanted]
        if missing := missing_features(chosen):
            return None, f"LLMGEN_KERNELS={wanted}, but the CPU lacks {', '.join(missing)}"
    else:
        chosen = next(lv for lv in LEVELS if not missing_features(lv))
    return chosen, _build_failure(chosen)


def supported_levels() -> list[str]:
    """Every level this CPU can run (for tests and benchmarks that go through each)."""
    return [lv.name for lv in LEVELS if not missing_features(lv)]


def missing_features(chosen: Level) -> list[str]:
    if chosen.cpu_flags and platform.machine().lower() not in X86:
        return ["x86-64 instructions"]
    return [f for f in chosen.cpu_flags if f not in _cpu_flags()]


@cache
def _build_failure(chosen: Level) -> str | None:
    if _compiler() is None:
        return "no C++ compiler (g++ or clang++; or set CXX)"
    try:
        _library(chosen)
    except (OSError, subprocess.SubprocessError) as e:
        return f"building them failed: {str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}"
    return None


@cache
def _library(chosen: Level) -> ctypes.CDLL:
    return _load(_build(chosen))


@cache
def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


@cache
def _build(chosen: Level) -> Path:
    """Compile SOURCES for a level unless this machine already has it, intact; -> the library's path.

    Beside each library is the sha256 it had when built: a library that no longer matches it (truncated by
    a full disk, replaced by another file) is never loaded, since loading a damaged shared object can crash
    the process (SIGBUS); it is built again, with one warning."""
    from llmgen.assets import data_dir, sha256_file, write_atomically

    compiler = _compiler()
    if compiler is None:  # _build_failure checks first
        raise OSError("no C++ compiler")
    flags = (*FLAGS, *chosen.compiler_flags)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    texts = [path.read_text() for path in (*SOURCES, *HEADERS)]
    key = hashlib.sha256("\n".join((*texts, compiler, version, " ".join(flags),
                                    " ".join(sorted(_cpu_flags())))).encode()).hexdigest()[:16]
    library = data_dir() / "kernels" / f"llmgen_kernels-{chosen.name}-{key}.so"
    recorded = library.with_name(library.name + ".sha256")
    if library.exists() and recorded.exists():  # (without a record: built by an older llmgen, so built again)
        try:
            if recorded.read_text(encoding="ascii").strip() == sha256_file(library):
                return library
        except (OSError, UnicodeDecodeError):
            pass
        warnings.warn(f"llmgen's kernel library {library} is damaged or not llmgen's; building it again",
                      LLMGenWarning, stacklevel=2)
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        result = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"{Path(compiler).name} failed: {(result.stderr.strip() or 'no output').splitlines()[0]}")
        write_atomically(recorded, sha256_file(built).encode())
        os.replace(built, library)  # atomic: another process may be building the same file
    return library


@cache
def _load(path: Path) -> ctypes.CDLL:
    try:
        lib = declare(ctypes.CDLL(str(path)))
    except (OSError, AttributeError) as e:  # AttributeError: a symbol these sources define is missing
        reason = first_line(e)[:160]
        warnings.warn(f"cannot load llmgen's kernel library {path.name} ({reason}); using PyTorch's kernels",
                      LLMGenWarning, stacklevel=2)
        raise OSError(reason) from None
    lib.set_gemm(int(os.environ.get("LLMGEN_GEMM", "1").strip() != "0"))
    return lib


def matmul_path(rows: int) -> str:
    """Which path a 4-bit matmul over `rows` rows of input takes: "gemm" (each weight unpacked once for a
    tile of rows; avx512, avx2) or "gemv" (one row at a time: decode steps, the portable level, or
    LLMGEN_GEMM=0, which forces it)."""
    lib = library()
    return "gemm" if rows > 1 and lib is not None and lib.has_gemm() and os.environ.get(
        "LLMGEN_GEMM", "1").strip() != "0" else "gemv"


def library_path(name: str) -> Path:
    """The verified library of level `name` on this machine, built first if needed."""
    return _build(next(lv for lv in LEVELS if lv.name == name))


def forget() -> None:
    """Forget what this process found out about the levels and their libraries (for tests that change
    LLMGEN_KERNELS, CXX or LLMGEN_HOME)."""
    for cached in (_build_failure, _library, _build, _load):
        cached.cache_clear()
