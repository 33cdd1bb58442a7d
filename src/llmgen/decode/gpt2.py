"""GPT-2 decode steps: the model's math for one token, written flat over a plan (see decode/llama.py
for why). pytorch_step runs on PyTorch's ops; kernel_step runs each block's attention (cache writes
included) as one call into llmgen's kernels (kernels/attention.cpp) instead of ~10 tensor ops, where the
caches are float32. tests/generation/test_generation.py holds each equal to forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from llmgen import kernels
from llmgen.models.gpt2 import GPT2, Block
from llmgen.models.kv_cache import DecodeWindow, KVCache, decode_attention
from llmgen.quantization.linear import linear_function


def caches(model: GPT2) -> list[KVCache]:
    return [block.attn.cache for block in model.blocks]


def first_cache(model: GPT2) -> KVCache | None:
    """setup_cache replaces every block's cache at once: the first one says whether a plan is current."""
    return cast(Block, model.h[0]).attn.kv_cache


@dataclass(slots=True)
class Plan:
    """What decode steps need of the model, looked up once per setup_cache."""

    caches: list[KVCache]
    blocks: list[DecodeBlock]
    window: DecodeWindow
    kernel_attention: list[kernels.AttentionStep] | None  # per block, for kernel_step

    @classmethod
    def of(cls, model: GPT2, window_step: int, with_kernels: bool) -> Plan:
        model_caches = caches(model)
        attention = [kernels.AttentionStep(c.k_t[0], c.v[0], model.config.n_heads, None) for c in model_caches] \
            if with_kernels else None
        return cls(model_caches, [DecodeBlock.of(block) for block in model.blocks], DecodeWindow(model_caches, window_step),
                   attention)


@dataclass(slots=True)
class DecodeBlock:
    """What a decode step needs of one Block: plain functions of (1, features) inputs and the caches."""

    ln_1: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], torch.Tensor]
    attention_proj: Callable[[torch.Tensor], torch.Tensor]
    ln_2: Callable[[torch.Tensor], torch.Tensor]
    fc: Callable[[torch.Tensor], torch.Tensor]
    mlp_proj: Callable[[torch.Tensor], torch.Tensor]
    k_cache: torch.Tensor  # (n_heads, head_dim, max_len): keys transposed (see KVCache)
    v_cache: torch.Tensor  # (n_heads, max_len, head_dim)

    @classmethod
    def of(cls, block: Block) -> DecodeBlock:
        def layer_norm(norm: nn.LayerNorm) -> Callable[[torch.Tensor], torch.Tensor]:
            return partial(F.layer_norm, normalized_shape=norm.normalized_shape, weight=norm.weight,
                           bias=norm.bias, eps=norm.eps)

        attention, mlp = block.attn, block.mlp
        return cls(layer_norm(block.ln_1), linear_function(attention.c_attn), linear_function(attention.c_proj),
                   layer_norm(block.ln_2), linear_function(mlp.c_fc), linear_function(mlp.c_proj),
                   attention.cache.k_t[0], attention.cache.v[0])


def kernel_blocker(model: GPT2) -> str | None:
    """Why kernel_step cannot run this model (None when it can): the attention kernel needs float32 caches."""
    if model.wte.weight.dtype != torch.float32:
        return f"its caches are {model.wte.weight.dtype} (llmgen's kernels attend over float32)"
    return None


def head(model: GPT2, x: torch.Tensor) -> torch.Tensor:
    x = model.ln_f(x)
    logits = F.linear(x, model.wte.weight) if model.output is None else model.output(x)
    return logits[0].float()  # (vocab,)


def kernel_step(model: GPT2, plan: Plan, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    x = model.wte(token) + F.embedding(pos, model.wpe.weight)  # (1, dim); wte a module: it may be a shard (parallel/)
    assert plan.kernel_attention is not None  # a plan made with_kernels
    for block, attention in zip(plan.blocks, plan.kernel_attention):
        y = attention(block.qkv(block.ln_1(x)), pos)  # (1, dim)
        x = x + block.attention_proj(y)
        x = x + block.mlp_proj(F.gelu(block.fc(block.ln_2(x)), approximate="tanh"))
    return head(model, x)


def pytorch_step(model: GPT2, plan: Plan, token: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n_heads, head_dim = model.config.n_heads, model.config.head_dim
    x = model.wte(token) + F.embedding(pos, model.wpe.weight)  # (1, dim); wte a module: it may be a shard (parallel/)
    for block, (keys_t, values) in zip(plan.blocks, plan.window.views):
        qkv = block.qkv(block.ln_1(x)).to(block.v_cache.dtype)  # (1, 3 dim)
        q, k, v = qkv.view(3, n_heads, head_dim)
        block.k_cache.index_copy_(2, pos, k[:, :, None])  # k_cache: (n_heads, head_dim, max_len)
        block.v_cache.index_copy_(1, pos, v[:, None])  # v_cache: (n_heads, max_len, head_dim)
        y = decode_attention(q[:, None], keys_t, values, mask, head_dim ** -0.5)  # (n_heads, 1, head_dim)
        x = x + block.attention_proj(y.view(1, n_heads * head_dim))
        x = x + block.mlp_proj(F.gelu(block.fc(block.ln_2(x)), approximate="tanh"))
    return head(model, x)
