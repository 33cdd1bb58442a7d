"""`--quantize int4|int8` on a float checkpoint (Meta's layout, or a Hugging Face LLaMA that `llmgen quantize`
writes): quantized once to a GGUF file under llmgen's data directory (weights/gguf_write.py, streamed), then
loaded from there like any GGUF, its blocks kept as stored on llmgen's kernels. The second run loads in
seconds instead of quantizing the model again.

The cached file is named by a fingerprint of the source's content (sha256 of its files' names and bytes),
so another model copied over it (`cp -p` keeps sizes and times) gets a file of its own. Hashing a large
checkpoint takes seconds, so the fingerprint is remembered under the files' identity: path, size, inode,
modification and change times (a change time cannot be set back, so any write to a file makes a new
identity and a fresh hash). Beside each cached file a check file holds its size and CRC-32, read back on
every load: a damaged or truncated file is written again, never used.

A cache directory that cannot be written (read-only, full) raises CacheUnwritable: the caller quantizes in
memory instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from functools import partial
from pathlib import Path

from llmgen import assets
from llmgen.errors import LLMGenError

# --quantize -> GGUF block type: int4 as llmgen quantizes it (groups of 32 between their minimum and
# maximum: Q4_1's rule), int8 in Q8_0's groups of 32.
GGUF_TYPE = {"int4": "q4_1", "int8": "q8_0"}
WRITER_VERSION = 2  # bump when the writer's output changes, so old cached files are not reused
SOURCE_SUFFIXES = (".pth", ".json", ".model", ".safetensors", ".bin")
CHUNK = 16 << 20


class CacheUnwritable(LLMGenError):
    """The cache directory cannot hold the quantized file (read-only, full, not a directory)."""


def cache_directory() -> Path:
    """$LLMGEN_QUANTIZED_DIR, else `quantized` in llmgen's data directory (an 8B model's int4 file is 4.7 GB)."""
    return Path(os.environ["LLMGEN_QUANTIZED_DIR"]) if os.environ.get("LLMGEN_QUANTIZED_DIR") else (
        assets.data_dir() / "quantized")


def quantized_copy(directory: Path, quantize: str) -> tuple[Path, bool]:
    """(the cached GGUF file, whether it was written now): an intact cached copy, else a new one."""
    from llmgen.weights.gguf_write import OutputError, write_gguf
    from llmgen.weights.sources import open_source

    directory = Path(directory).resolve()
    path = cache_directory() / f"{directory.name}-{fingerprint(directory)[:16]}-{GGUF_TYPE[quantize]}.gguf"
    if intact(path):
        return path, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_gguf(open_source(directory), path, GGUF_TYPE[quantize])
        assets.write_atomically(_check_path(path), json.dumps(_check_of(path)).encode())
    except OutputError as e:
        raise CacheUnwritable(str(e)) from None
    except OSError as e:
        raise CacheUnwritable(f"cannot write {path}: {e.strerror or e}") from None
    return path, True


def fingerprint(directory: Path) -> str:
    """sha256 of the source's files (names and bytes), remembered under their identity."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SOURCE_SUFFIXES)
    identity = [str(directory), WRITER_VERSION]
    for p in files:
        status = p.stat()
        identity.append((p.name, status.st_size, status.st_dev, status.st_ino, status.st_mtime_ns, status.st_ctime_ns))
    remembered = cache_directory() / "sources" / hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    try:
        known = remembered.read_text(encoding="ascii").strip()
        if len(known) == 64 and all(c in "0123456789abcdef" for c in known):
            return known
    except (OSError, UnicodeDecodeError):
        pass
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as f:
            for chunk in iter(partial(f.read, CHUNK), b""):
                digest.update(chunk)
    try:
        assets.write_atomically(remembered, digest.hexdigest().encode())
    except OSError as e:
        raise CacheUnwritable(f"cannot write to {remembered.parent}: {e.strerror or e}") from None
    return digest.hexdigest()


def intact(path: Path) -> bool:
    """Whether a cached file is there and is what was written: its size and CRC-32 as its check file says."""
    try:
        recorded = json.loads(_check_path(path).read_text(encoding="utf-8"))
        return isinstance(recorded, dict) and recorded == _check_of(path)
    except (OSError, ValueError, RecursionError):
        return False


def _check_of(path: Path) -> dict[str, int]:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
    return {"size": path.stat().st_size, "crc32": crc, "writer": WRITER_VERSION}


def _check_path(path: Path) -> Path:
    return path.with_name(path.name + ".check")
