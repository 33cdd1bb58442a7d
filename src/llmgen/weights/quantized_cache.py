"""`--quantize int4|int8` on a float checkpoint (Meta's layout, or a Hugging Face LLaMA that `llmgen quantize`
writes): quantized once to a GGUF file under llmgen's
data directory (weights/gguf_writer.py, streamed), then loaded from there like any GGUF, its blocks kept as
stored on llmgen's kernels. The second run loads in seconds instead of quantizing the model again.

The file is keyed by the source's identity (its resolved path, and each weight and config file's name,
size and modification time) and the type, so an edited or replaced checkpoint gets a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from llmgen import assets

# --quantize -> GGUF block type: int4 as llmgen quantizes it (groups of 32 between their minimum and
# maximum: Q4_1's rule), int8 in Q8_0's groups of 32.
GGUF_TYPE = {"int4": "q4_1", "int8": "q8_0"}
WRITER_VERSION = 1  # bump when the writer's output changes, so old cached files are not reused


def cache_directory() -> Path:
    """$LLMGEN_QUANTIZED_DIR, else `quantized` in llmgen's data directory (an 8B model's int4 file is 4.7 GB)."""
    return Path(os.environ["LLMGEN_QUANTIZED_DIR"]) if os.environ.get("LLMGEN_QUANTIZED_DIR") else (
        assets.data_dir() / "quantized")


def cached_path(directory: Path, quantize: str) -> Path:
    directory = Path(directory).resolve()
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.suffix in (".pth", ".json", ".model", ".safetensors", ".bin"))
    identity = {"source": str(directory), "type": GGUF_TYPE[quantize], "writer": WRITER_VERSION,
                "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return cache_directory() / f"{directory.name}-{key}-{GGUF_TYPE[quantize]}.gguf"


def quantized_copy(directory: Path, quantize: str) -> tuple[Path, bool]:
    """(the cached GGUF file, whether it was written now)."""
    from llmgen.weights.gguf_writer import open_source, write_gguf

    path = cached_path(directory, quantize)
    if path.is_file():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(open_source(directory), path, GGUF_TYPE[quantize]), True
