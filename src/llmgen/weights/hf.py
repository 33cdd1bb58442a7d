"""Hugging Face's layout: config.json and safetensors (or pytorch_model.bin) under Hugging Face's names, renamed
to llmgen's (maps.py), Phi-3's fused tensors split, and q/k rows put in RoPE's interleaved order."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from llmgen.config import HF_LLAMA_FAMILIES, GPT2Config, LlamaConfig, ModelConfig
from llmgen.errors import LLMGenError
from llmgen.weights import maps
from llmgen.weights.layout import hf_weight_files
from llmgen.weights.readers import read_json, read_shards
from llmgen.weights.shapes import names_error


def read_hf(directory: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and tensors by llmgen's names; q/k rows still in Hugging Face's order (reorder_rope_rows)."""
    hf_config = read_json(directory / "config.json")
    model_type = hf_config.get("model_type")
    state = read_shards(hf_weight_files(directory))
    if model_type == "gpt2":
        return GPT2Config.from_hf(hf_config), rename(
            {k.removeprefix("transformer."): v for k, v in state.items()},
            {k.removeprefix("transformer."): v for k, v in maps.HF_GPT2.items()},
            transposed=maps.HF_GPT2_TRANSPOSED, ignored=maps.HF_GPT2_IGNORED,
        )
    if model_type in HF_LLAMA_FAMILIES:
        config = LlamaConfig.from_hf(hf_config)
        if model_type == "phi3":
            state = _split_phi3(state, config)
        ignored = set(maps.HF_LLAMA_IGNORED) | ({"lm_head.weight"} if config.tie_embeddings else set())
        if model_type == "gemma3_text":
            # Gemma's RMSNorm scales by (1 + weight): stored here as the weight llmgen's RMSNorm multiplies by.
            state = {k: v.float() + 1 if "norm" in k.rsplit(".", 2)[-2] else v for k, v in state.items()}
            return config, rename(state, maps.HF_GEMMA3, ignored=ignored)
        return config, rename(state, maps.HF_LLAMA, ignored=ignored)
    raise LLMGenError(f"{directory / 'config.json'}: model_type {model_type!r:.40} is not supported "
                      f"(gpt2, {', '.join(HF_LLAMA_FAMILIES)})")


def reorder_rope_rows(state: dict[str, Any], config: LlamaConfig) -> dict[str, Any]:
    """A Hugging Face LLaMA-family checkpoint's q/k rows (maps.LLAMA_ROPE_PERMUTED) into RoPE's interleaved
    pairs, for the heads config has (a tensor-parallel rank's, once cut)."""
    heads = {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "one_head": 1}
    reordered = {}
    for name, tensor in state.items():
        count = maps.LLAMA_ROPE_PERMUTED.get(maps.strip_layer(name))
        if count is not None:
            require_rows(name, tensor, 2 * heads[count])
            tensor = unpermute_rope(tensor, heads[count], config.rotary_dim)
        reordered[name] = tensor
    return reordered


def _split_phi3(state: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Phi-3 stores q, k and v as one qkv_proj and gate and up as one gate_up_proj: split them by rows into
    the names the LLaMA map knows (views: nothing is copied)."""
    q_rows, kv_rows = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    split = {}
    for name, tensor in state.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            require_rows(name, tensor, 1)
            if tensor.dim() != 2 or tensor.size(0) != q_rows + 2 * kv_rows:
                raise LLMGenError(f"tensor {name!r} has shape {list(tensor.shape)}, not q, k and v's "
                                  f"{q_rows + 2 * kv_rows} rows")
            prefix = name.removesuffix("qkv_proj.weight")
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), tensor.split((q_rows, kv_rows, kv_rows))):
                split[f"{prefix}{part}.weight"] = rows
        elif name.endswith("mlp.gate_up_proj.weight"):
            if tensor.dim() != 2 or tensor.size(0) != 2 * config.ffn_dim:
                raise LLMGenError(f"tensor {name!r} has shape {list(tensor.shape)}, not gate and up's "
                                  f"{2 * config.ffn_dim} rows")
            prefix = name.removesuffix("gate_up_proj.weight")
            split[f"{prefix}gate_proj.weight"], split[f"{prefix}up_proj.weight"] = tensor.chunk(2)
        else:
            split[name] = tensor
    return split


def rename(state: dict[str, Any], table: dict[str, str], *, transposed=frozenset(),
            ignored=frozenset()) -> dict[str, torch.Tensor]:
    """Checkpoint names -> ours through a template table; reshape what the maps say must be reshaped."""
    renamed, unexpected = {}, []
    for name, tensor in state.items():
        template = re.sub(r"\.\d+\.", ".{}.", name, count=1)
        layer = re.search(r"\.(\d+)\.", name)
        if any(name == s or name.endswith("." + s) for s in ignored):
            continue
        if template not in table:
            unexpected.append(name)
            continue
        if any(name.endswith(s) for s in transposed):
            _require_matrix(name, tensor, 1)
            tensor = tensor.t()  # a view: made contiguous once sharded (_load_weights), copying only a shard
        renamed[table[template].format(layer.group(1) if layer else "")] = tensor
    if unexpected:
        raise LLMGenError(names_error("has unexpected tensor", unexpected))
    return renamed


def _require_matrix(name: str, tensor: torch.Tensor, rows_multiple_of: int) -> None:
    """Before reshaping a tensor the maps say to reshape: it must be a matrix of the expected rows."""
    if tensor.dim() != 2 or tensor.size(0) % rows_multiple_of:
        raise LLMGenError(f"tensor {name!r} has shape {list(tensor.shape)}, not a matrix with rows in "
                          f"multiples of {rows_multiple_of}")


def require_rows(name: str, tensor: torch.Tensor, rows_multiple_of: int) -> None:
    """A matrix or vector (a bias, a norm's weight) whose rows come in multiples of rows_multiple_of."""
    if tensor.dim() not in (1, 2) or tensor.size(0) % rows_multiple_of:
        raise LLMGenError(f"tensor {name!r} has shape {list(tensor.shape)}, not rows in multiples of "
                          f"{rows_multiple_of}")


def unpermute_rope(weight: torch.Tensor, n_heads: int, rotary_dim: int | None = None) -> torch.Tensor:
    """HF's q/k rows (n_heads, 2, head_dim/2, dim) -> Meta's interleaved (n_heads, head_dim/2, 2, dim);
    a vector (bias, norm weight) as a matrix of one column. With partial RoPE only each head's first
    rotary_dim rows are in halves; the rows after them pass through, and stay."""
    if weight.dim() == 1:
        return unpermute_rope(weight[:, None], n_heads, rotary_dim)[:, 0].contiguous()
    rows, cols = weight.shape
    head_dim = rows // n_heads
    rotary_dim = rotary_dim or head_dim
    if rotary_dim > head_dim or rotary_dim % 2 or head_dim % 2:
        raise LLMGenError(f"a q/k tensor of {rows} rows has heads of {head_dim}, which cannot turn "
                          f"{rotary_dim} dimensions each (check the config's heads and partial_rotary_factor)")
    if rotary_dim == head_dim:
        return weight.view(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)
    heads = weight.view(n_heads, head_dim, cols)
    turned = heads[:, :rotary_dim].reshape(n_heads, 2, rotary_dim // 2, cols).transpose(1, 2)
    return torch.cat((turned.reshape(n_heads, rotary_dim, cols), heads[:, rotary_dim:]), dim=1).reshape(rows, cols)
