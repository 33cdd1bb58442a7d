"""GGUF (llama.cpp's format): LLaMA-architecture config, weights and tokenizer from one file.

Quantized matrices are kept as stored (keep_quantized): their blocks become Int4Groups or Int8Groups
for llmgen's kernels (gguf_blocks.py, quantize.py), read one matrix at a time with no float32 detour, and
a quantized embedding table stays in its blocks (BlockEmbedding). Otherwise (`--quantize none`) they are
dequantized to float32 (torch code for the common block types, the `gguf` package for the rest). GGUF
lists shapes innermost-first,
the reverse of torch, and llama.cpp's converter already stores q/k rows in Meta's interleaved RoPE order,
which is ours, so no permutation is needed.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmgen.config import LlamaConfig
from llmgen.errors import LLMGenError
from llmgen.quantize import DeferredGroups
from llmgen.tokenizers import GPT2_PATTERN, LLAMA3_PATTERN, Tokenizer, bytes_to_unicode, encoding_from_vocab
from llmgen.weights.gguf_blocks import FOUR_BIT, SPLITTERS, BlockEmbedding, deferred_matrix, split
from llmgen.weights.memory import check_memory

# general.architecture values read onto the LLaMA model. llama.cpp writes "llama" files with q and k rows
# permuted for RoPE on interleaved pairs (llmgen's order), and Qwen's in Hugging Face's order (RoPE on
# halves, llama.cpp's NEOX): those rows are put in llmgen's order as they are read.
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3", "gemma3")
ROPE_ON_HALVES = ("qwen2", "qwen3", "phi3", "gemma3")
# Gemma 3 (llama.cpp's src/models/gemma3.cpp): with a sliding window, layer i is local when i % 6 < 5 unless
# gemma3.attention.sliding_window_pattern says otherwise (a period, or one flag per layer); local layers
# turn by rope.freq_base_swa (10000 when absent). The converter has already added Gemma's 1 to every norm.
GEMMA3_SWA_PERIOD = 6
GEMMA3_LOCAL_ROPE_BASE = 10000.0
# Phi-3's long-context RoPE factors (llama.cpp writes both; within the original window the short ones
# apply, and llmgen stops the context there).
ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG = "rope_factors_short.weight", "rope_factors_long.weight"

# SmolLM2, StarCoder, Refact (llama.cpp's "smollm", "starcoder", "refact"; HF's Digits(individual_digits=True)
# then ByteLevel): every numeral is split off first, then GPT-2's regex runs on each piece between numerals. As
# one regex: numerals alone, no " ?\p{N}+", and a whitespace run before a numeral ends like one at the end of
# the text (whole).
DIGITS_THEN_GPT2_PATTERN = r"\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?=\p{N})|\s+(?!\S)|\s"
# Qwen2/2.5/3: LLaMA-3's regex with numerals one at a time; Qwen3.5 also keeps combining marks with letters.
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
QWEN35_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                  r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> the pre-tokenizer regex of that vocabulary (llama.cpp's llama-vocab.cpp names).
PRE_TOKENIZER_PATTERNS = {
    "default": GPT2_PATTERN,
    "gpt-2": GPT2_PATTERN,
    "smollm": DIGITS_THEN_GPT2_PATTERN,
    "starcoder": DIGITS_THEN_GPT2_PATTERN,
    "refact": DIGITS_THEN_GPT2_PATTERN,
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "qwen2": QWEN2_PATTERN,
    "qwen35": QWEN35_PATTERN,
}
ROPE_FREQS = "rope_freqs.weight"
TOKEN_TYPE_NORMAL = 1
STOP_TOKEN_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>")


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
        total, untied = 0, "output.weight" in self.names
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
        self._release(start, (stop - first) * row_bytes)
        return torch.from_numpy(rows).view(stop - first, row_bytes)

    def _release(self, start: int, length: int) -> None:
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


def read_llama_gguf(path: Path, keep_quantized: bool = False
                    ) -> tuple[LlamaConfig, dict[str, torch.Tensor | DeferredGroups | BlockEmbedding], GGUFFile]:
    """Config, tensors by GGUF name, and the open file. With keep_quantized, quantized matrices come as
    DeferredGroups and a quantized token_embd as a BlockEmbedding (see quantize_model)."""
    gguf_file = GGUFFile(path)
    config = gguf_llama_config(gguf_file)
    arch, names = gguf_file.typed("general.architecture", str), [t.name for t in gguf_file.tensors]
    check_memory(gguf_file.materialized_bytes(keep_quantized), gguf_file.path.name)
    state = {}
    for i, name in enumerate(names):
        if name in (ROPE_FREQS, ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG):
            continue
        stored = None
        if keep_quantized:
            stored = gguf_file.embedding(i) if name == "token_embd.weight" else gguf_file.stored_groups(i)
        tensor = stored if stored is not None else gguf_file.tensor(i)
        for part_name, part in _unfused(name, tensor, config, arch):
            state[part_name] = part
            if arch in ROPE_ON_HALVES and (heads := _rotated_heads(part_name, config)) is not None:
                state[part_name] = rows_in_interleaved_order(part, heads, config.rotary_dim)
    return config, state, gguf_file


def gguf_llama_config(gguf_file: GGUFFile) -> LlamaConfig:
    """The model's config from a GGUF file's metadata (and which tensors it has), read as llama.cpp reads
    each architecture."""
    arch = gguf_file.typed("general.architecture", str)
    if arch not in GGUF_ARCHITECTURES:
        raise LLMGenError(f"{gguf_file.path.name}: GGUF architecture {arch!r:.40} is not supported "
                          f"({', '.join(GGUF_ARCHITECTURES)})")
    names = [t.name for t in gguf_file.tensors]
    rope_factors = None
    for factors_name in (ROPE_FREQS, ROPE_FACTORS_SHORT):  # RoPE scaling as llama.cpp writes it: not weights
        if factors_name in names:
            factors = gguf_file.tensors[names.index(factors_name)]
            if factors.tensor_type.name != "F32" or len(factors.shape) != 1:
                raise LLMGenError(f"{gguf_file.path.name}: GGUF {factors_name} must be a float32 vector")
            rope_factors = tuple(gguf_file.tensor(names.index(factors_name)).tolist())
    context = gguf_file.typed(f"{arch}.context_length", int, 2048)
    if ROPE_FACTORS_SHORT in names:  # Phi-3 longrope: see ROPE_FACTORS_SHORT
        context = min(context, gguf_file.require(f"{arch}.rope.scaling.original_context_length", int))
    window = gguf_file.typed(f"{arch}.attention.sliding_window", int) or 0
    if window and arch != "gemma3":
        # Phi-3's: llama.cpp turns its sliding window off (its converters do not say which layers use it),
        # transformers keeps it on every layer. Within the window both agree: the context stops there.
        context = min(context, window)
    n_heads = gguf_file.require(f"{arch}.attention.head_count", int)
    n_layers = gguf_file.require(f"{arch}.block_count", int)
    dim = gguf_file.require(f"{arch}.embedding_length", int)
    head_dim = gguf_file.typed(f"{arch}.attention.key_length", int) or 0
    scaling = gguf_file.typed(f"{arch}.rope.scaling.type", str, "none")
    if rope_factors is None and scaling == "linear":  # positions divided by the factor (Gemma 3: global layers)
        factor = gguf_file.require(f"{arch}.rope.scaling.factor", float)
        turned = gguf_file.typed(f"{arch}.rope.dimension_count", int) or head_dim or dim // max(n_heads, 1)
        rope_factors = (float(factor),) * (turned // 2)
    tokens = gguf_file.typed("tokenizer.ggml.tokens", list)
    family = _gemma3_fields(gguf_file, n_layers, dim, n_heads, head_dim, window) if arch == "gemma3" else {}
    config = LlamaConfig(  # LlamaConfig checks every value's range
        vocab_size=gguf_file.typed(f"{arch}.vocab_size", int) or (len(tokens) if tokens else 0),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=gguf_file.typed(f"{arch}.attention.head_count_kv", int) or n_heads,
        ffn_dim=gguf_file.require(f"{arch}.feed_forward_length", int),
        norm_eps=gguf_file.typed(f"{arch}.attention.layer_norm_rms_epsilon", float, 1e-5),
        rope_theta=gguf_file.typed(f"{arch}.rope.freq_base", float, 10000.0),
        context_length=context,
        tie_embeddings="output.weight" not in names,
        rope_freq_factors=rope_factors,
        rope_attention_factor=gguf_file.typed(f"{arch}.rope.scaling.attn_factor", float, 1.0),
        head_dim=head_dim,
        qkv_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        rotary_dim=gguf_file.typed(f"{arch}.rope.dimension_count", int) or 0,  # Phi-4-mini: part of each head
        **family,
    )
    return config


def _gemma3_fields(gguf_file: GGUFFile, n_layers: int, dim: int, n_heads: int, head_dim: int, window: int
                   ) -> dict[str, Any]:
    """The LlamaConfig fields by which Gemma 3 differs from LLaMA, read as llama.cpp reads them."""
    if gguf_file.typed("gemma3.final_logit_softcapping", float, 0.0):
        raise LLMGenError(f"{gguf_file.path.name}: Gemma 3 final logit soft-capping is not supported")
    local: tuple[bool, ...] = ()
    if window > 0:
        pattern = gguf_file.get("gemma3.attention.sliding_window_pattern", GEMMA3_SWA_PERIOD)
        if isinstance(pattern, list) and len(pattern) == n_layers and all(isinstance(p, bool) for p in pattern):
            local = tuple(pattern)
        elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 0:
            local = tuple(pattern == 0 or i % pattern < pattern - 1 for i in range(n_layers))
        else:
            raise LLMGenError(f"{gguf_file.path.name}: GGUF gemma3.attention.sliding_window_pattern must be a "
                              f"period or {n_layers} flags")
    # Gemma 3 27B (62 layers) scales queries by hidden size / heads, the others by the head size.
    scale_dim = dim // n_heads if n_layers == 62 else (head_dim or dim // n_heads)
    return dict(embedding_scale=dim ** 0.5, post_norms=True, activation="gelu_tanh",
                attention_scale=scale_dim ** -0.5, sliding_window=window if local else 0,
                local_layers=local if any(local) else (),
                local_rope_theta=gguf_file.typed("gemma3.rope.freq_base_swa", float, GEMMA3_LOCAL_ROPE_BASE))


def _unfused(name: str, tensor, config: LlamaConfig, arch: str) -> list[tuple[str, Any]]:
    """Phi-3's fused tensors as the parts the LLaMA map names: attn_qkv -> attn_q, attn_k, attn_v by rows,
    ffn_up (gate and up) -> ffn_gate, ffn_up. Quantized ones stay as stored, each part a run of rows."""
    q_rows, kv_rows = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    if arch == "phi3" and (match := re.fullmatch(r"blk\.(\d+)\.attn_qkv\.weight", name)):
        parts = (("attn_q", q_rows), ("attn_k", kv_rows), ("attn_v", kv_rows))
    elif arch == "phi3" and (match := re.fullmatch(r"blk\.(\d+)\.ffn_up\.weight", name)):
        parts = (("ffn_gate", config.ffn_dim), ("ffn_up", config.ffn_dim))
    else:
        return [(name, tensor)]
    if tensor.shape[0] != sum(rows for _, rows in parts):
        raise LLMGenError(f"GGUF {name} has {tensor.shape[0]} rows, not {sum(rows for _, rows in parts)}")
    out, first = [], 0
    for part, rows in parts:
        out.append((f"blk.{match.group(1)}.{part}.weight", _row_range(tensor, first, rows)))
        first += rows
    return out


def _row_range(tensor, first: int, rows: int):
    """Rows first .. first + rows of a float tensor or of quantized rows as stored."""
    if isinstance(tensor, torch.Tensor):
        return tensor[first:first + rows]
    whole = tensor
    return DeferredGroups((rows, whole.shape[1]), whole.kind,
                          lambda start, stop: whole.rows(first + start, first + min(stop, rows)))


def _rotated_heads(name: str, config: LlamaConfig) -> int | None:
    """For a tensor whose rows RoPE turns (q and k weights and biases, the per-head q/k norms): how many
    heads its rows hold."""
    if re.fullmatch(r"blk\.\d+\.attn_q\.(weight|bias)", name):
        return config.n_heads
    if re.fullmatch(r"blk\.\d+\.attn_k\.(weight|bias)", name):
        return config.n_kv_heads
    if re.fullmatch(r"blk\.\d+\.attn_[qk]_norm\.weight", name):
        return 1
    return None


def rows_in_interleaved_order(tensor, n_heads: int, rotary_dim: int):
    """Rows of q or k (n_heads, 2, head_dim / 2) for RoPE on halves -> (n_heads, head_dim / 2, 2) for RoPE
    on interleaved pairs: a float tensor (weight or vector), or quantized rows as stored (DeferredGroups),
    whose rows are reordered whole, blocks and all. With partial RoPE, only each head's first rotary_dim
    rows (rope.dimension_count)."""
    from llmgen.quantize import select_rows

    rows = tensor.shape[0]
    if rows % (2 * n_heads) or rotary_dim > rows // n_heads:
        raise LLMGenError(f"a q/k tensor of {rows} rows does not split into {n_heads} heads of pairs")
    heads = torch.arange(rows).view(n_heads, rows // n_heads)
    turned = heads[:, :rotary_dim].reshape(n_heads, 2, rotary_dim // 2).transpose(1, 2).reshape(n_heads, -1)
    order = torch.cat((turned, heads[:, rotary_dim:]), dim=1).reshape(-1)
    if isinstance(tensor, torch.Tensor):
        return tensor[order].contiguous()
    whole = tensor  # DeferredGroups: q and k are small enough to read whole, then reorder
    return DeferredGroups(whole.shape, whole.kind, lambda first, stop: select_rows(whole.read(), order[first:stop]))


def gguf_tokenizer(gguf_file: GGUFFile) -> Tokenizer:
    """The vocabulary stored in the GGUF metadata as a tiktoken Encoding (byte-level BPE models)."""
    model = gguf_file.require("tokenizer.ggml.model", str)
    if model == "llama":
        return _sentencepiece_tokenizer(gguf_file)
    if model != "gpt2":
        raise LLMGenError(f"{gguf_file.path.name}: GGUF tokenizer model {model!r:.40} is not supported "
                          "(gpt2, llama)")
    pre = gguf_file.typed("tokenizer.ggml.pre", str, "default")
    if pre not in PRE_TOKENIZER_PATTERNS:
        raise LLMGenError(f"{gguf_file.path.name}: GGUF pre-tokenizer {pre!r:.40} is not supported "
                          f"({', '.join(PRE_TOKENIZER_PATTERNS)})")
    tokens = gguf_file.require("tokenizer.ggml.tokens", list)
    types = gguf_file.typed("tokenizer.ggml.token_type", list) or [TOKEN_TYPE_NORMAL] * len(tokens)
    if not all(isinstance(t, str) for t in tokens) or len(types) != len(tokens):
        raise LLMGenError(f"{gguf_file.path.name}: GGUF tokenizer.ggml.tokens must be strings, one type each")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise LLMGenError(f"{gguf_file.path.name}: GGUF vocabulary lists a token twice")
    special = {token for token, kind in zip(tokens, types) if kind != TOKEN_TYPE_NORMAL}
    encoding = encoding_from_vocab(f"gguf:{gguf_file.path.name}", vocab, PRE_TOKENIZER_PATTERNS[pre], special)
    present = {token[0] for token in tokens if len(token) == 1}  # the byte-level alphabet's characters
    missing = frozenset(b for b, ch in bytes_to_unicode().items() if ch not in present)
    stop = {vocab[t] for t in STOP_TOKEN_TEXTS if t in vocab}
    if (eos := gguf_file.typed("tokenizer.ggml.eos_token_id", int)) is not None:
        stop.add(eos)
    declared_bos = gguf_file.typed("tokenizer.ggml.bos_token_id", int)
    if any(i is not None and not 0 <= i < len(tokens) for i in (eos, declared_bos)):
        raise LLMGenError(f"{gguf_file.path.name}: GGUF BOS/EOS token ids lie outside the vocabulary")
    bos = declared_bos if gguf_file.get("tokenizer.ggml.add_bos_token") else None
    return Tokenizer(name=f"gguf:{pre}", encoding=encoding, bos_id=bos, stop_ids=tuple(sorted(stop)),
                     chat_format=_chat_format(gguf_file), missing_bytes=missing,
                     chat_template=gguf_file.typed("tokenizer.chat_template", str), eos_id=eos,
                     chat_template_source=f"{gguf_file.path} (tokenizer.chat_template)",
                     declared_bos_id=declared_bos)


def _chat_format(gguf_file: GGUFFile) -> str | None:
    template = gguf_file.typed("tokenizer.chat_template", str) or ""
    return "chatml" if "<|im_start|>" in template else "llama3" if "<|start_header_id|>" in template else None


def _sentencepiece_tokenizer(gguf_file: GGUFFile) -> Tokenizer:
    """A SentencePiece vocabulary (LLaMA-2, Mistral, Phi-3): pieces, scores and types (spm.py)."""
    from llmgen.spm import SentencePieceEncoding

    name = gguf_file.path.name
    tokens = gguf_file.require("tokenizer.ggml.tokens", list)
    scores = gguf_file.typed("tokenizer.ggml.scores", list) or [0.0] * len(tokens)
    types = gguf_file.typed("tokenizer.ggml.token_type", list) or [TOKEN_TYPE_NORMAL] * len(tokens)
    if (not all(isinstance(t, str) for t in tokens) or len(scores) != len(tokens) or len(types) != len(tokens)
            or not all(isinstance(s, (int, float)) for s in scores) or not all(isinstance(t, int) for t in types)):
        raise LLMGenError(f"{name}: GGUF SentencePiece vocabulary must give each token a score and a type")
    try:
        encoding = SentencePieceEncoding(f"gguf:{name}", tokens, scores, types,
                                         add_space_prefix=gguf_file.typed("tokenizer.ggml.add_space_prefix",
                                                                          bool, True))
    except ValueError as e:
        raise LLMGenError(f"{name}: {e}") from None
    ids = {"bos": None, "eos": None}
    for key in ids:
        ids[key] = gguf_file.typed(f"tokenizer.ggml.{key}_token_id", int)
        if ids[key] is not None and not 0 <= ids[key] < len(tokens):
            raise LLMGenError(f"{name}: GGUF BOS/EOS token ids lie outside the vocabulary")
    stop = {i for t, i in encoding.special_tokens.items() if t in STOP_TOKEN_TEXTS + ("</s>", "<|end|>")}
    if ids["eos"] is not None:
        stop.add(ids["eos"])
    add_bos = gguf_file.typed("tokenizer.ggml.add_bos_token", bool, True)  # SentencePiece models default to BOS
    return Tokenizer(name="gguf:llama", encoding=encoding, bos_id=ids["bos"] if add_bos else None,
                     stop_ids=tuple(sorted(stop)), chat_format=_chat_format(gguf_file),
                     chat_template=gguf_file.typed("tokenizer.chat_template", str), eos_id=ids["eos"],
                     chat_template_source=f"{gguf_file.path} (tokenizer.chat_template)",
                     declared_bos_id=ids["bos"])
