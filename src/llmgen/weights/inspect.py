"""What a checkpoint holds, as data: tensor names, shapes, dtypes, parameter counts, bytes, and config.

Nothing is dequantized or copied: safetensors and GGUF are read from their headers, torch files are
memory-mapped through the weights-only unpickler (tensor data is never touched), so a 16 GB checkpoint
is inspected in seconds with little memory.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmgen.errors import LLMGenError, first_line
from llmgen.weights.readers import read_json, read_torch, shards_from_index

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt", ".gguf")
CONFIG_FILES = ("params.json", "config.json")


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    params: int
    nbytes: int
    file: str = ""


@dataclass
class Inspection:
    format: str
    config: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(t.params for t in self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def by_dtype(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for t in self.tensors:
            counts[t.dtype] += t.params
        return dict(counts.most_common())

    def bytes_by_dtype(self) -> dict[str, int]:
        """Bytes per dtype or GGUF block type (what each type costs to store and to read per token)."""
        sizes: Counter[str] = Counter()
        for t in self.tensors:
            sizes[t.dtype] += t.nbytes
        return dict(sizes.most_common())

    def filtered(self, pattern: str | None) -> Inspection:
        if pattern is None:
            return self
        return Inspection(self.format, self.config, [t for t in self.tensors if fnmatch.fnmatchcase(t.name, pattern)])

    def unknown_tensors(self) -> list[str]:
        """Tensors no model llmgen loads has (maps.unknown_names)."""
        from llmgen.weights.maps import unknown_names

        return unknown_names(t.name for t in self.tensors)

    def to_json(self, with_tensors: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "config": self.config, "unknown_tensors": self.unknown_tensors()}
        if with_tensors:
            out["tensors"] = [{k: v for k, v in asdict(t).items() if k in ("name", "shape", "dtype", "params", "nbytes")}
                              for t in self.tensors]
        out |= {"total_params": self.total_params, "total_bytes": self.total_bytes, "params_by_dtype": self.by_dtype(),
                "bytes_by_dtype": self.bytes_by_dtype()}
        return out


def inspect_path(path: Path) -> Inspection:
    path = Path(path)
    if not path.exists():
        raise LLMGenError(f"no such file or directory: {path}")
    if path.is_dir():
        return _inspect_directory(path)
    return _inspect_file(path)


def _inspect_file(path: Path) -> Inspection:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return Inspection("safetensors", tensors=_safetensors_tensors(path))
    if suffix == ".gguf":
        return _inspect_gguf(path)
    if suffix in (".pth", ".bin", ".pt"):
        return Inspection("pytorch", tensors=_torch_tensors(path))
    raise LLMGenError(f"{path.name}: unknown checkpoint format; expected one of {', '.join(WEIGHT_SUFFIXES)}")


def _inspect_directory(directory: Path) -> Inspection:
    config: dict[str, Any] = {}
    for name in CONFIG_FILES:
        if (directory / name).is_file():
            config = read_json(directory / name)
            break
    files = _weight_files(directory)
    if not files:
        raise LLMGenError(f"{directory} holds no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    parts = [_inspect_file(f) for f in files]
    formats = sorted({p.format for p in parts})
    tensors = []
    for f, part in zip(files, parts):
        for t in part.tensors:
            t.file = f.name
            tensors.append(t)
    return Inspection("+".join(formats), config or parts[0].config, tensors)


def _weight_files(directory: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index).is_file():
            return shards_from_index(directory / index)
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)


# --- formats -----------------------------------------------------------------------------------------

def _safetensors_tensors(path: Path) -> list[TensorInfo]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            tensors = []
            for name in f.keys():
                piece = f.get_slice(name)
                shape = list(piece.get_shape())
                dtype = piece.get_dtype()
                params = math.prod(shape)
                torch_name, itemsize = _SAFETENSORS_DTYPES.get(dtype, (dtype.lower(), 0))
                tensors.append(TensorInfo(name, shape, torch_name, params, params * itemsize))
            return tensors
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        reason = first_line(e)
        raise LLMGenError(f"{path.name} is not a readable safetensors file: {reason[:200]}") from None


# safetensors dtype -> (torch's name for it, bytes per element)
_SAFETENSORS_DTYPES = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "I16": ("int16", 2), "U16": ("uint16", 2), "F16": ("float16", 2),
    "BF16": ("bfloat16", 2), "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "I64": ("int64", 8), "U64": ("uint64", 8), "F64": ("float64", 8),
}


def _torch_tensors(path: Path) -> list[TensorInfo]:
    state = read_torch(path)  # memory-mapped: shapes and dtypes without reading the data
    return [TensorInfo(name, list(t.shape), str(t.dtype).removeprefix("torch."), t.numel(),
                       t.numel() * t.element_size()) for name, t in state.items()]


def _inspect_gguf(path: Path) -> Inspection:
    from llmgen.weights.gguf_file import GGUFFile

    gguf_file = GGUFFile(path)
    tensors = [TensorInfo(t.name, [int(d) for d in reversed(t.shape)], t.tensor_type.name.lower(),
                          int(t.n_elements), int(t.n_bytes)) for t in gguf_file.tensors]
    return Inspection("gguf", config=gguf_file.metadata(), tensors=tensors)

