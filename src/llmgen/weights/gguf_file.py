"""GGUF (llama.cpp's format) as data: the header, metadata and tensor table checked against the file, and each
tensor read on demand from the memory-mapped file: dequantized to float32 (torch code for the common block
types, the `gguf` package for the rest), or kept as stored (DeferredGroups, a BlockEmbedding).
GGUF lists shapes innermost-first, the reverse of torch.
"""
from __future__ import annotations

import math
import mmap
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmgen.errors import LLMGenError
from llmgen.weights.gguf_blocks import FOUR_BIT, SPLITTERS, split
from llmgen.weights.stored import BlockEmbedding, DeferredGroups, deferred_matrix

# GGUF metadata value types (ggml/docs/gguf.md): fixed-size scalars by struct format; 8 string; 9 array.
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
LENGTH = struct.Struct("<Q")  # string lengths and counts
MAX_DIMS = 4
DEQUANTIZE_CHUNK = 16 << 20  # bytes of a tensor's blocks converted at a time
MAX_ARRAY_DEPTH = 4  # GGUF allows arrays of arrays; real files nest at most 2 deep (llama.cpp rejects deeper)


@dataclass
class GGUFTensor:
    name: str
    shape: list[int]  # GGUF order: innermost dimension first (the reverse of torch)
    tensor_type: Any  # gguf.GGMLQuantizationType
    n_elements: int
    n_bytes: int
    offset: int  # absolute, in the file


class GGUFFile:
    """Metadata and tensor table of a GGUF file, memory-mapped; nothing is dequantized until asked.

    The `gguf` package's GGUFReader builds a numpy view per metadata string, which takes seconds for a
    50k-token vocabulary; this reads the same header layout with struct in one pass, checking every
    length against the file size (the files are untrusted). The gguf package still provides the tensor
    type table and dequantization.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise LLMGenError(f"{self.path.name} is not a readable GGUF file: {e}") from None
        self._pos = 0
        try:
            self._parse()
        except (struct.error, UnicodeDecodeError, ValueError, OverflowError, MemoryError) as e:
            raise LLMGenError(f"{self.path.name} is not a readable GGUF file: {str(e)[:200]}") from None

    # --- parsing ---------------------------------------------------------------------------------
    def _read(self, fmt: str):
        value = struct.unpack_from(fmt, self._map, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def _read_str(self) -> str:
        n = self._read("<Q")
        if self._pos + n > len(self._map):
            raise ValueError(f"a string of {n} bytes runs past the end of the file")
        text = self._map[self._pos:self._pos + n].decode("utf-8")
        self._pos += n
        return text

    def _read_strings(self, count: int) -> list[str]:
        # The vocabulary and merges: ~100k strings, so the loop is kept tight.
        data, pos, end, unpack = self._map, self._pos, len(self._map), LENGTH.unpack_from
        strings = []
        for _ in range(count):
            (n,) = unpack(data, pos)
            pos += 8
            if pos + n > end:
                raise ValueError(f"a string of {n} bytes runs past the end of the file")
            strings.append(data[pos:pos + n].decode("utf-8"))
            pos += n
        self._pos = pos
        return strings

    def _read_value(self, kind: int, depth: int = 0):
        if kind in SCALAR_FORMATS:
            return self._read(SCALAR_FORMATS[kind])
        if kind == STRING:
            return self._read_str()
        if kind == ARRAY:
            item_kind, count = self._read("<I"), self._read("<Q")
            if count > len(self._map) - self._pos:  # every item takes at least one byte
                raise ValueError(f"an array of {count} items is larger than the file")
            if item_kind in SCALAR_FORMATS:
                fmt = SCALAR_FORMATS[item_kind]
                size = struct.calcsize(fmt) * count
                if self._pos + size > len(self._map):
                    raise ValueError("an array runs past the end of the file")
                values = list(struct.unpack_from(f"<{count}{fmt[1]}", self._map, self._pos))
                self._pos += size
                return values
            if item_kind == STRING:
                return self._read_strings(count)
            if item_kind == ARRAY and depth + 1 >= MAX_ARRAY_DEPTH:
                raise ValueError(f"metadata arrays nest deeper than {MAX_ARRAY_DEPTH} levels")
            return [self._read_value(item_kind, depth + 1) for _ in range(count)]
        raise ValueError(f"unknown metadata value type {kind}")

    def _parse(self) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        if self._map[:4] != b"GGUF":
            raise ValueError("bad magic (not a GGUF file)")
        self._pos = 4
        version = self._read("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = self._read("<Q"), self._read("<Q")
        if n_tensors > len(self._map) // 24 or n_kv > len(self._map) // 12:
            raise ValueError(f"{n_tensors} tensors / {n_kv} metadata keys cannot fit in the file")
        self.fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._read_str()
            if key in self.fields:  # as gguf-py does: a second value must not silently win
                raise ValueError(f"duplicate metadata key {key[:80]!r}")
            self.fields[key] = self._read_value(self._read("<I"))
        infos, names = [], set()
        for _ in range(n_tensors):
            name = self._read_str()
            if name in names:
                raise ValueError(f"duplicate tensor name {name[:80]!r}")
            names.add(name)
            n_dims = self._read("<I")
            if n_dims > MAX_DIMS:
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            shape = [self._read("<Q") for _ in range(n_dims)]
            if 0 in shape:
                raise ValueError(f"tensor {name[:80]} has an empty dimension {shape}")
            kind, offset = self._read("<I"), self._read("<Q")
            try:
                tensor_type = GGMLQuantizationType(kind)
            except ValueError:
                raise ValueError(f"tensor {name} has unknown type {kind}") from None
            infos.append((name, shape, tensor_type, offset))
        alignment = self.fields.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ValueError(f"bad general.alignment {alignment!r}")
        data_start = -(-self._pos // alignment) * alignment
        self.tensors: list[GGUFTensor] = []
        for name, shape, tensor_type, offset in infos:
            n_elements = math.prod(shape)
            block, block_bytes = GGML_QUANT_SIZES[tensor_type]
            if shape and shape[0] % block:  # ggml quantizes each row on its own: rows are whole blocks
                raise ValueError(f"tensor {name}: rows of {shape[0]} weights are not whole blocks of {block}")
            n_bytes = n_elements // block * block_bytes
            if data_start + offset + n_bytes > len(self._map):
                raise ValueError(f"tensor {name} runs past the end of the file (truncated?)")
            self.tensors.append(GGUFTensor(name, shape, tensor_type, n_elements, n_bytes, data_start + offset))

    # --- access ----------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def require(self, key: str, kind: type | tuple[type, ...]) -> Any:
        """A metadata value that must be there, of the expected type (see typed)."""
        value = self.typed(key, kind)
        if value is None:
            raise LLMGenError(f"{self.path.name}: GGUF metadata has no {key!r}")
        return value

    def typed(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        """A metadata value of the expected Python type (int, float, str, list), else one clear error."""
        value = self.get(key, default)
        numeric = kind in (float, (int, float))
        if value is None or (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))) or (
                numeric and isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise LLMGenError(f"{self.path.name}: GGUF metadata {key} has the wrong type ({type(value).__name__}: "
                          f"{value!r:.40})")

    def materialized_bytes(self, keep_quantized: bool) -> int:
        """Memory that reading every tensor takes: float32, or with keep_quantized the kernels' forms of
        quantized matrices (4 bits and two fp16 per 32 weights; Q6_K as stored; a byte and up to two fp16
        per 16), and nothing for a quantized embedding, which stays in the file's pages."""
        total, untied = 0.0, "output.weight" in self.names
        for t in self.tensors:
            if keep_quantized and self.kept(t):
                if t.name == "token_embd.weight" and untied:
                    continue  # looked up from the file's blocks
                kind = t.tensor_type.name
                total += t.n_elements * (0.625 if kind in FOUR_BIT else 210 / 256 if kind == "Q6_K" else 1.25)
            else:
                total += t.n_elements * 4
        return int(total)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @staticmethod
    def kept(t: GGUFTensor) -> bool:
        """Whether a tensor can stay as stored: a matrix in a block type the kernels take."""
        return t.tensor_type.name in SPLITTERS and len(t.shape) == 2

    def metadata(self) -> dict[str, Any]:
        """Every key except the long tokenizer arrays."""
        skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores"}
        return {k: v for k, v in self.fields.items() if k not in skip}

    def _dequantized_in_chunks(self, t: GGUFTensor, dequantize) -> torch.Tensor:
        """(n_elements,) float32, converted DEQUANTIZE_CHUNK bytes of blocks at a time: the temporaries of
        a conversion (several per weight) never exist for the whole tensor, only the result does."""
        from gguf import GGML_QUANT_SIZES

        block, block_bytes = GGML_QUANT_SIZES[t.tensor_type]
        n_blocks, step = t.n_elements // block, max(1, DEQUANTIZE_CHUNK // block_bytes)
        out = torch.empty(t.n_elements, dtype=torch.float32)
        for first in range(0, n_blocks, step):
            count = min(step, n_blocks - first)
            raw = np.frombuffer(self._map, dtype=np.uint8, count=count * block_bytes, offset=t.offset + first * block_bytes)
            out[first * block:(first + count) * block] = dequantize(torch.from_numpy(raw.copy())).reshape(-1)
        return out

    def _raw(self, t: GGUFTensor) -> torch.Tensor:
        # A copy of the stored bytes: the map is read-only, and torch wants writable memory.
        return torch.from_numpy(np.frombuffer(self._map, dtype=np.uint8, count=t.n_bytes, offset=t.offset).copy())

    def _rows(self, t: GGUFTensor, first: int, stop: int) -> torch.Tensor:
        """Rows first..stop of a matrix's stored bytes, (stop - first, row bytes) uint8, copied; the file's
        pages they came from are then let go (they would otherwise stay in this process's resident set
        beside the converted weights)."""
        row_bytes = t.n_bytes // int(t.shape[1])
        start = t.offset + first * row_bytes
        rows = np.frombuffer(self._map, dtype=np.uint8, count=(stop - first) * row_bytes, offset=start).copy()
        self.release(start, (stop - first) * row_bytes)
        return torch.from_numpy(rows).view(stop - first, row_bytes)

    def release(self, start: int, length: int) -> None:
        page = mmap.PAGESIZE
        first, end = start // page * page, -(-(start + length) // page) * page
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, first, min(end, len(self._map)) - first)

    def stored_groups(self, index: int) -> DeferredGroups | None:
        """A quantized matrix as stored (Int4Groups or Int8Groups), read from the file when used; None for
        a tensor that cannot stay as stored."""
        t = self.tensors[index]
        if not self.kept(t):
            return None
        shape = (int(t.shape[1]), int(t.shape[0]))
        return deferred_matrix(t.tensor_type.name, shape, lambda first, stop: self._rows(t, first, stop))

    def embedding(self, index: int) -> BlockEmbedding | None:
        """A quantized embedding table kept in the file's blocks, memory-mapped (only the rows looked up
        are read); None for a tensor that cannot."""
        t = self.tensors[index]
        if not self.kept(t):
            return None
        rows = int(t.shape[1])
        with warnings.catch_warnings():  # read-only memory: nothing here writes to it
            warnings.simplefilter("ignore")
            blocks = torch.frombuffer(self._map, dtype=torch.uint8, count=t.n_bytes, offset=t.offset)
        return BlockEmbedding(blocks.view(rows, t.n_bytes // rows), t.tensor_type.name, int(t.shape[0]),
                              read_rows=lambda first, stop: self._rows(t, first, stop))

    def tensor(self, index: int) -> torch.Tensor:
        """One tensor dequantized to float32, in torch's shape order."""
        from gguf import GGML_QUANT_SIZES
        from gguf.quants import dequantize

        t = self.tensors[index]
        shape = [int(d) for d in reversed(t.shape)]
        kind = t.tensor_type.name
        if kind in TORCH_DEQUANTIZERS:
            return self._dequantized_in_chunks(t, TORCH_DEQUANTIZERS[kind]).reshape(shape)
        if kind in SPLITTERS:
            _, block_bytes = GGML_QUANT_SIZES[t.tensor_type]
            dequantized = self._dequantized_in_chunks(t, lambda raw: split(kind, raw.view(-1, block_bytes)).dequantize())
            return dequantized.reshape(shape)
        raw = self._raw(t)
        try:
            return torch.from_numpy(dequantize(raw.numpy().reshape(shape[:-1] + [-1]), t.tensor_type).astype(np.float32))
        except (NotImplementedError, ValueError) as e:
            raise LLMGenError(f"{self.path.name}: tensor {t.name} of type {kind} cannot be read: {e}") from None


# Unquantized types; the quantized ones are read by gguf_blocks.py.
TORCH_DEQUANTIZERS = {
    "F32": lambda raw: raw.view(torch.float32).clone(),
    "F16": lambda raw: raw.view(torch.float16).float(),
    "BF16": lambda raw: raw.view(torch.bfloat16).float(),
}
