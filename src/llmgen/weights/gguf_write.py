"""`llmgen quantize`'s writer: a checkpoint read as a Source (sources.py) -> a standard GGUF file that llama.cpp
runs, written one tensor at a time.

The file holds what llama.cpp's convert_hf_to_gguf.py writes for a "llama" model: its tensor names, the
hyperparameters under `llama.*`, RoPE scaling as a `rope_freqs` tensor, and the tokenizer (LLaMA-3's
tiktoken ranks as GPT-2-style tokens and merges with the "llama-bpe" pre-tokenizer; a tokenizer.json's
vocabulary and merges with its pre-tokenizer's llama.cpp name; a GGUF source's own tokenizer metadata as
it was). q and k rows stay in Meta's order: llama.cpp's "llama" architecture turns
interleaved pairs, as llmgen does.

Blocks are made by the `gguf` package's quantizers (llama.cpp's reference rounding, so files match
llama-quantize's in quality): matrices in the chosen type, norms in F32, and in the 4-bit types the output
head in Q8_0 (llama-quantize gives it Q6_K, which gguf-py cannot make; Q8_0 is closer to the source).

Memory: the source is memory-mapped; each tensor is converted a few rows at a time, written, and its
source pages are handed back to the kernel (madvise), so peak memory is about the largest tensor's
output, not the model. The file is written under a temporary name, read back and checked, then renamed:
an interrupted or failed run leaves nothing at the output path.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
import torch

from llmgen.config import LlamaConfig
from llmgen.errors import LLMGenError
from llmgen.tokenization.vocab import bytes_to_unicode
from llmgen.weights.gguf_blocks import FOUR_BIT
from llmgen.weights.gguf_file import GGUFFile
from llmgen.weights.maps import GGUF_LLAMA
from llmgen.weights.shapes import check_shapes
from llmgen.weights.sources import Source, SourceTensor

# --type -> the block type of the matrices; general.file_type (llama.cpp's LLAMA_FTYPE_MOSTLY_*).
OUT_TYPES = {"f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7), "q4_0": ("Q4_0", 2),
             "q4_1": ("Q4_1", 3)}
CHUNK_BYTES = 64 << 20  # float32 rows converted at a time
LLAMA3_CHAT_TEMPLATE = (  # Llama 3's chat format, for a tokenizer that has its header markers
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


@dataclass
class Planned:
    gguf_name: str
    source: SourceTensor | None  # None: made here (rope_freqs)
    kind: str  # GGML type name
    shape: tuple[int, ...]  # torch order (rows, columns)
    data: np.ndarray | None = None  # for tensors made here


def gguf_name(ours: str) -> str:

    template = re.sub(r"\.\d+\.", ".{}.", ours, count=1)
    for theirs, mine in GGUF_LLAMA.items():
        if mine == template:
            layer = re.search(r"\.(\d+)\.", ours)
            return theirs.format(layer.group(1) if layer else "")
    raise LLMGenError(f"tensor {ours!r:.80} has no GGUF name")


def block_type(name: str, shape: tuple[int, ...], out_type: str) -> str:
    """The GGML type a tensor is written in: vectors F32; matrices out_type, but the head in Q8_0 for the
    4-bit types, and F16 where rows are not whole 32-weight blocks."""
    kind = OUT_TYPES[out_type][0]
    if len(shape) != 2:
        return "F32"
    if kind in FOUR_BIT and name == "output.weight":
        return "Q8_0"
    if kind.startswith("Q") and shape[1] % 32:
        return "F16"
    return kind


def plan(source: Source, out_type: str) -> list[Planned]:
    config, planned = source.config, []
    factors = _rope_factors(config)
    if factors is not None:
        planned.append(Planned("rope_freqs.weight", None, "F32", (len(factors),), np.asarray(factors, np.float32)))
    order = {"tok_embeddings.weight": 0, "norm.weight": 2, "output.weight": 3}
    for tensor in sorted(source.tensors, key=lambda t: _order(t.name, order)):
        planned.append(Planned(gguf_name(tensor.name), tensor, block_type(tensor.name, tensor.shape, out_type),
                               tensor.shape))
    return planned


def _order(name: str, fixed: dict[str, int]) -> tuple[int, int, str]:
    """token_embd, the blocks in layer order, then the final norm and head (llama.cpp's order)."""
    if name in fixed:
        return (fixed[name], 0, name)
    layer = re.search(r"\.(\d+)\.", name)
    return (1, int(layer.group(1)) if layer else 0, name)


def _rope_factors(config: LlamaConfig) -> list[float] | None:
    """Llama 3.1's RoPE scaling as llama.cpp's converter stores it: a divisor per frequency."""
    if config.rope_freq_factors is not None:
        return list(config.rope_freq_factors)
    scaling = config.rope_scaling
    if scaling is None:
        return None
    factors = []
    low_wavelen = scaling.original_context_length / scaling.low_freq_factor
    high_wavelen = scaling.original_context_length / scaling.high_freq_factor
    for i in range(config.head_dim // 2):
        wavelen = 2 * math.pi * config.rope_theta ** (2 * i / config.head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(scaling.factor)
        else:
            smooth = (scaling.original_context_length / wavelen - scaling.low_freq_factor) / (
                scaling.high_freq_factor - scaling.low_freq_factor)
            factors.append(1 / ((1 - smooth) / scaling.factor + smooth))
    return factors


def encoded(tensor: torch.Tensor, kind: str) -> np.ndarray:
    """A tensor's bytes in a GGML type: float types by torch's rounding (to nearest even), blocks by
    gguf-py's quantizers (llama.cpp's reference rounding), CHUNK_BYTES of float32 rows at a time."""
    import gguf

    if kind == "F32":
        return tensor.detach().float().contiguous().numpy()
    if kind in ("F16", "BF16"):
        dtype = torch.float16 if kind == "F16" else torch.bfloat16
        return tensor.detach().to(dtype).contiguous().view(torch.int16).numpy().view(np.uint8)
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    rows, columns = tensor.shape
    out = np.empty(gguf.quants.quant_shape_to_byte_shape((rows, columns), qtype), dtype=np.uint8)
    step = max(1, CHUNK_BYTES // (4 * columns))
    for first in range(0, rows, step):
        chunk = tensor[first:first + step].detach().float().numpy()
        out[first:first + step] = gguf.quants.quantize(chunk, qtype)
    return out


def _byte_shape(shape: tuple[int, ...], kind: str) -> tuple[tuple[int, ...], int]:
    import gguf

    if kind == "F32":
        return shape, 4 * math.prod(shape)
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, getattr(gguf.GGMLQuantizationType, kind))
    return byte_shape, math.prod(byte_shape)


class OutputError(LLMGenError):
    """The output could not be written (a full disk, a read-only directory): the source is not at fault."""


def write_gguf(source: Source, out: Path, out_type: str,
               on_tensor: Callable[[str, int, int], None] | None = None) -> Path:
    """Write `source` as a GGUF file at `out` with matrices in `out_type` (OUT_TYPES). on_tensor(name,
    bytes written so far, total bytes) is called after each tensor (progress).

    The file is written beside `out` under a temporary name and renamed over it only once complete and
    read back: a failure at any point leaves `out` as it was and no partial file. `out` may not be any
    file the source is read from, by whatever name (a symlink, a hard link, `..`, a bind mount)."""
    import gguf

    if out_type not in OUT_TYPES:
        raise LLMGenError(f"unknown GGUF type {out_type!r}; choose one of: {', '.join(OUT_TYPES)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise LLMGenError(f"{out.name}: the output file name must end in .gguf")
    if out.is_dir():
        raise LLMGenError(f"{out} is a directory; name the .gguf file to write")
    if not out.parent.is_dir():
        raise LLMGenError(f"{out.parent} is not a directory")
    if (same := _source_file_at(source, out)) is not None:
        raise LLMGenError(f"{out} names the input file {same}: writing it would destroy the input; "
                          "choose another output file")
    check_tensors(source)
    planned = plan(source, out_type)
    writer = gguf.GGUFWriter(None, "llama")
    _add_hyperparameters(writer, source, out_type)
    _add_tokenizer(writer, source)
    total = 0
    for item in planned:
        byte_shape, n_bytes = _byte_shape(item.shape, item.kind)
        dtype = np.dtype(np.float32) if item.kind == "F32" else np.dtype(np.uint8)
        writer.add_tensor_info(item.gguf_name, byte_shape, dtype, n_bytes,
                               raw_dtype=None if item.kind == "F32" else getattr(gguf.GGMLQuantizationType, item.kind))
        total += n_bytes
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        try:
            writer.write_header_to_file(partial)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            _write_tensors(writer, planned, total, on_tensor)
            writer.close()
        except OSError as e:
            raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
        _check(partial, planned)
        os.replace(partial, out)
    except BaseException:
        with contextlib.suppress(OSError):
            writer.close()  # its buffer may fail to flush to a full disk again
        with contextlib.suppress(OSError):  # FileNotFoundError, or a read-only place where none was made
            partial.unlink()
        raise
    return out


def _write_tensors(writer, planned: list[Planned], total: int, on_tensor) -> None:
    done = 0
    for item in planned:
        if item.source is None:
            assert item.data is not None  # made here (rope_freqs)
            data = item.data
        else:
            tensor = item.source.read()
            if tuple(tensor.shape) != item.shape:
                raise LLMGenError(f"tensor {item.source.name} has shape {list(tensor.shape)}, not {list(item.shape)}")
            data = encoded(tensor, item.kind)
            item.source.release(tensor)
            del tensor
        writer.write_tensor_data(data)
        done += data.nbytes
        del data
        if on_tensor is not None:
            on_tensor(item.gguf_name, done, total)


def _source_file_at(source: Source, out: Path) -> Path | None:
    """The source's file that `out` names (same device and inode), or None."""
    for path in source.files:
        try:
            if os.path.samefile(path, out):
                return path
        except OSError:  # out does not exist yet (or a source file went away): not the same file
            continue
    return None


def check_tensors(source: Source) -> None:
    """Every tensor the config implies, in its shape, and no other: checked before anything is written,
    so a bad checkpoint names its tensor instead of making a file that fails later."""

    check_shapes(source.config, {t.name: t.shape for t in source.tensors})


def _add_hyperparameters(writer, source: Source, out_type: str) -> None:
    config = source.config
    writer.add_name(source.name or "llmgen")
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_dimension_count(config.rotary_dim)
    if config.head_dim * config.n_heads != config.dim:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(OUT_TYPES[out_type][1])
    writer.add_quantization_version(2)


def _add_tokenizer(writer, source: Source) -> None:
    if source.tokenizer_fields is not None:  # a GGUF source's, as it was
        for key, value in source.tokenizer_fields.items():
            _add_value(writer, key, value)
        return
    tokenizer, vocab_size = source.tokenizer, source.config.vocab_size
    encoding = tokenizer.encoding  # a Meta source's: LLaMA-3's tiktoken ranks
    if not isinstance(encoding, tiktoken.Encoding):
        raise LLMGenError(f"{source.name}: its tokenizer is not tiktoken's, which a Meta-layout source has")
    ranks, special = encoding._mergeable_ranks, encoding._special_tokens
    add_bpe_tokenizer(writer, ranks, special, "llama-bpe", tokenizer.bos_id, special.get("<|end_of_text|>",
                      tokenizer.stop_ids[0] if tokenizer.stop_ids else 0), vocab_size)
    writer.add_add_bos_token(tokenizer.bos_id is not None)
    if "<|start_header_id|>" in special:
        writer.add_chat_template(LLAMA3_CHAT_TEMPLATE)


def _add_value(writer, key: str, value: object) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list):
        writer.add_array(key, value)
    else:
        raise LLMGenError(f"GGUF metadata {key} has a value llmgen cannot write again ({type(value).__name__})")


def merges_from_ranks(ranks: dict[bytes, int]) -> Iterator[tuple[bytes, bytes]]:
    """The merge that made each multi-byte token, in rank order: BPE of the token's bytes with only the
    ranks below its own stops at the two parts that were merged into it."""
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, math.inf) for a, b in zip(parts, parts[1:])]
            best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[best] >= rank:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            yield parts[0], parts[1]


def add_bpe_tokenizer(writer, ranks: dict[bytes, int], special: dict[str, int], pre: str, bos: int | None,
                      eos: int, vocab_size: int = 0) -> None:
    """A tiktoken vocabulary as llama.cpp's "gpt2" tokenizer: each token's bytes in GPT-2's byte-to-unicode
    spelling, the special tokens as CONTROL, the merges recovered from the ranks; ids past the last token
    up to vocab_size (a padded embedding) as unused padding tokens."""
    tokens, types, merges = _bpe_vocabulary(ranks, special, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if bos is not None:
        writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)


_VOCABULARY: list = []  # [(ranks, special, vocab_size), (tokens, types, merges)]: the last one made


def _bpe_vocabulary(ranks: dict[bytes, int], special: dict[str, int], vocab_size: int
                    ) -> tuple[list[str], list[int], list[str]]:
    """(tokens, types, merges) for add_bpe_tokenizer, made once per vocabulary (LLaMA-3's merges take
    seconds to recover)."""
    import gguf

    if not (_VOCABULARY and _VOCABULARY[0][0] is ranks and _VOCABULARY[0][1] is special
            and _VOCABULARY[0][2] == vocab_size):  # the same objects (held here, so not reused)
        spell = bytes_to_unicode()

        def text(token: bytes) -> str:
            return "".join(spell[b] for b in token)

        size = max(vocab_size, max([*ranks.values(), *special.values()]) + 1)
        tokens = [f"[PAD{i}]" for i in range(size)]
        types = [int(gguf.TokenType.UNUSED)] * size
        for token_bytes, rank in ranks.items():
            tokens[rank], types[rank] = text(token_bytes), int(gguf.TokenType.NORMAL)
        for token, token_id in special.items():
            tokens[token_id], types[token_id] = token, int(gguf.TokenType.CONTROL)
        merges = [f"{text(a)} {text(b)}" for a, b in merges_from_ranks(ranks)]
        _VOCABULARY[:] = [(ranks, special, vocab_size), (tokens, types, merges)]  # LLaMA-3's: ~30 MB
    return _VOCABULARY[1]


def _check(path: Path, planned: list[Planned]) -> None:
    """Read the written file back: every tensor there, in its type and shape, and the file whole."""

    written = GGUFFile(path)  # checks every length against the file size
    got = [(t.name, t.tensor_type.name, tuple(reversed(t.shape))) for t in written.tensors]
    expected = [(p.gguf_name, p.kind, p.shape) for p in planned]
    if got != expected:
        raise LLMGenError(f"{path.name}: the written file does not hold the tensors planned")
