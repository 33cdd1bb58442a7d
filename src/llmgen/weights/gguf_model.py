"""A GGUF file's model: the LLaMA-family config from its metadata, and its tensors by llmgen's names.

Quantized matrices are kept as stored (keep_quantized): their blocks become Int4Groups or Int8Groups for
llmgen's kernels (stored.py, quantization/), read one matrix at a time with no float32 detour, and a
quantized embedding table stays in its blocks (BlockEmbedding). Otherwise (`--quantize none`) they are
dequantized to float32. llama.cpp's converter stores a "llama" file's q/k rows in Meta's interleaved RoPE
order, which is ours; the other architectures' are reordered as read.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from llmgen.config import LlamaConfig
from llmgen.errors import LLMGenError
from llmgen.weights.gguf_file import GGUFFile
from llmgen.weights.memory import check_memory
from llmgen.weights.stored import BlockEmbedding, DeferredGroups

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
ROPE_FREQS = "rope_freqs.weight"


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
    parts: tuple[tuple[str, int], ...]
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
    from llmgen.weights.stored import select_rows

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
