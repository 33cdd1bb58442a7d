"""LLaMA decode steps: the model's math for one token (B = T = 1), written flat over a plan.

The same math as Llama.forward for one token, without what forward does to serve any batch and length
(module calls, attribute lookups, reshapes, mask logic): at ~100 tokens/s a step is ~10 ms, and on
SmolLM2-135M those cost a third of it (each tensor op costs 1-3 us of Python and dispatch, a step makes
~1,000). Two steps, chosen by decode/__init__.py:
- pytorch_step: tensor ops over a Plan of plain functions; positions are tensors so that torch.compile
  sees one graph for every position (compiled.py);
- kernel_step: all blocks in one call into llmgen's kernels (kernels/llama_layers.cpp), each block five
  kernel calls with the norms, SwiGLU/GeGLU and residual adds inside them (Gemma 3's post-norms and local
  windows too), where every block's matmuls are quantized on llmgen's kernels and the caches are float32.
tests/generation/test_generation.py holds each equal to forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F

from llmgen import parallel
from llmgen.kernels import BlockKernels, LlamaLayers
from llmgen.models.kv_cache import DecodeWindow, KVCache, decode_attention
from llmgen.models.llama import Llama, RMSNorm, TransformerBlock, rms_norm, rope_matrix
from llmgen.quantization.linear import KernelLinear, linear_function


def caches(model: Llama) -> list[KVCache]:
    return [layer.attention.cache for layer in model.blocks]


def first_cache(model: Llama) -> KVCache | None:
    """setup_cache replaces every layer's cache at once: the first one says whether a plan is current."""
    return cast(TransformerBlock, model.layers[0]).attention.kv_cache


@dataclass(slots=True)
class Plan:
    """What decode steps need of the model, looked up once per setup_cache."""

    caches: list[KVCache]  # the caches it was built for: a new setup_cache needs a new plan
    layers: list[Layer]
    window: DecodeWindow
    rope_cos_sin: torch.Tensor  # (max_len, 2, head_dim / 2): each position's RoPE cos and sin
    dtype: torch.dtype  # the caches'
    kernel_layers: LlamaLayers | None  # for kernel_step
    local_rope_cos_sin: torch.Tensor | None  # Gemma's local layers' RoPE, or None

    @classmethod
    def of(cls, model: Llama, window_step: int, with_kernels: bool) -> Plan:
        model_caches = caches(model)
        rotations = model.rope_rotations  # (max_len, head_dim / 2) complex
        rope_cos_sin = torch.stack((rotations.real, rotations.imag), dim=1)
        local = model.local_rope_rotations if model.config.local_layers else None
        local_cos_sin = None if local is None else torch.stack((local.real, local.imag), dim=1)
        return cls(model_caches, [Layer.of(layer) for layer in model.blocks], DecodeWindow(model_caches, window_step),
                   rope_cos_sin, model_caches[0].v.dtype,
                   kernel_layers(model, rope_cos_sin, local_cos_sin) if with_kernels else None, local_cos_sin)


@dataclass(slots=True)
class Layer:
    """What a decode step needs of one TransformerBlock: plain functions of (1, features) inputs and the
    cache tensors."""

    attention_norm: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], torch.Tensor]  # -> q, k, v side by side
    wo: Callable[[torch.Tensor], torch.Tensor]
    ffn_norm: Callable[[torch.Tensor], torch.Tensor]
    gate_up: Callable[[torch.Tensor], torch.Tensor]  # -> gate, up side by side
    down: Callable[[torch.Tensor], torch.Tensor]
    k_cache: torch.Tensor  # (n_kv_heads, head_dim, max_len): keys transposed (see KVCache)
    v_cache: torch.Tensor  # (n_kv_heads, max_len, head_dim)
    q_norm: Callable[[torch.Tensor], torch.Tensor] | None  # Qwen3's per-head norms, or None
    k_norm: Callable[[torch.Tensor], torch.Tensor] | None
    activation: Callable[[torch.Tensor], torch.Tensor]  # SiLU, or Gemma's tanh GELU
    post_attention_norm: Callable[[torch.Tensor], torch.Tensor] | None  # Gemma's post-norms, or None
    post_ffn_norm: Callable[[torch.Tensor], torch.Tensor] | None
    local: bool  # Gemma: a sliding-window layer

    @classmethod
    def of(cls, block: TransformerBlock) -> Layer:
        attention, feed_forward = block.attention, block.feed_forward
        if attention.wqkv is not None:
            qkv = linear_function(attention.wqkv)
        else:
            wq, wk, wv = (linear_function(m) for m in (attention.wq, attention.wk, attention.wv))
            qkv = lambda h: torch.cat((wq(h), wk(h), wv(h)), dim=-1)  # noqa: E731
        if feed_forward.w13 is not None:
            gate_up = linear_function(feed_forward.w13)
        else:
            w1, w3 = linear_function(feed_forward.w1), linear_function(feed_forward.w3)
            gate_up = lambda h: torch.cat((w1(h), w3(h)), dim=-1)  # noqa: E731
        q_norm, k_norm, post_attention_norm, post_ffn_norm = (
            None if n is None else norm_function(n)
            for n in (attention.q_norm, attention.k_norm, block.post_attention_norm, block.post_ffn_norm))
        return cls(norm_function(block.attention_norm), qkv, linear_function(attention.wo),
                   norm_function(block.ffn_norm), gate_up, linear_function(feed_forward.w2),
                   attention.cache.k_t[0], attention.cache.v[0], q_norm, k_norm, feed_forward.activation,
                   post_attention_norm, post_ffn_norm, block.local)


def norm_function(norm: RMSNorm) -> Callable[[torch.Tensor], torch.Tensor]:
    """RMSNorm.forward with the attribute lookups done once."""
    if norm.weight.dtype == torch.float32:
        return partial(rms_norm, doubled_weight=torch.cat((norm.weight, norm.weight)), eps=norm.eps)
    return norm.forward


def _unwrapped(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """A tensor-parallel shard's wo or down (parallel/layers.RowParallelLinear): the layer inside; kernel_step
    does the all-reduce between its kernel calls."""
    return getattr(module, "inner", module)


def _on_kernels(module: torch.nn.Module | None) -> KernelLinear:
    """A block's matmul as kernel_blocker found it: a KernelLinear (the shard's layer inside, for wo and down)."""
    layer = _unwrapped(module)
    if not isinstance(layer, KernelLinear):
        raise TypeError(f"{type(layer).__name__} is not on llmgen's kernels (kernel_blocker says why)")
    return layer


def kernel_blocker(model: Llama) -> str | None:
    """Why kernel_step cannot run this model (None when it can): it needs every block's matmuls fused
    quantized layers on llmgen's kernels (int4, or a GGUF's types as stored), and float32 caches."""
    for block in model.blocks:
        linears = (block.attention.wqkv, _unwrapped(block.attention.wo), block.feed_forward.w13,
                   _unwrapped(block.feed_forward.w2))
        if not all(isinstance(m, KernelLinear) for m in linears):
            return "its matmuls are not all quantized for them (int4, or a GGUF's quantized types)"
        if not all(m.own_kernel for m in linears if isinstance(m, KernelLinear)):
            return "its int4 layers were built for PyTorch's kernel"
    if model.norm.weight.dtype != torch.float32:
        return f"its caches are {model.norm.weight.dtype} (llmgen's kernels attend over float32)"
    return None


def kernel_layers(model: Llama, rope_cos_sin: torch.Tensor, local_rope_cos_sin: torch.Tensor | None) -> LlamaLayers:
    """The model's blocks as one call into llmgen's kernels (see kernel_blocker for when)."""
    config, blocks = model.config, []
    for block in model.blocks:
        attention, feed_forward, cache = block.attention, block.feed_forward, block.attention.cache
        norms = block.attention_norm, block.ffn_norm
        rope = local_rope_cos_sin if block.local else rope_cos_sin
        assert rope is not None  # a local block has its table
        q_norm, k_norm, post_attention, post_ffn = attention.q_norm, attention.k_norm, block.post_attention_norm, \
            block.post_ffn_norm
        blocks.append(BlockKernels(
            _on_kernels(attention.wqkv).kernel_matmul(norms[0].weight, norms[0].eps),
            _on_kernels(attention.wo).kernel_matmul(),
            _on_kernels(feed_forward.w13).kernel_matmul(norms[1].weight, norms[1].eps),
            _on_kernels(feed_forward.w2).kernel_matmul(gated=True, activation=config.activation), cache.k_t,
            cache.v, rope,
            qk_norms=None if q_norm is None or k_norm is None else (q_norm.weight, k_norm.weight),
            post_norms=None if post_attention is None or post_ffn is None else (post_attention.weight,
                                                                                 post_ffn.weight),
            window=config.sliding_window if block.local else 0))
    sharded = parallel.of(model)  # a tensor-parallel shard: its all-reduces between the kernel calls
    return LlamaLayers(blocks, config.n_heads, config.norm_eps, config.attention_scale or config.head_dim ** -0.5,
                       all_reduce=None if sharded is None else sharded.all_reduce)


def head(model: Llama, x: torch.Tensor) -> torch.Tensor:
    """Final norm and output head: (1, dim) -> (vocab,) float32 logits."""
    return head_rows(model, x)[0]


def head_rows(model: Llama, x: torch.Tensor) -> torch.Tensor:
    """Final norm and output head: (rows, dim) -> (rows, vocab) float32 logits, row by row the same
    arithmetic (the norm reduces each row on its own; the head's kernels take rows independently)."""
    x = model.norm(x)
    logits = F.linear(x, model.tok_embeddings.weight) if model.output is None else model.output(x)
    return logits.float()


def kernel_step(model: Llama, plan: Plan, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """token, pos: (1,) -> (vocab,) logits, the blocks in one call into llmgen's kernels."""
    return kernel_block(model, plan, token, pos, last_only=True)[0]


def kernel_block(model: Llama, plan: Plan, tokens: torch.Tensor, pos: torch.Tensor, last_only: bool) -> torch.Tensor:
    """tokens: (T,) at positions pos, pos + 1, ..., pos: (1,) -> (T, vocab) logits, or (1, vocab) of the
    last token with last_only; the blocks in one call into llmgen's kernels, which compute each row exactly
    as a one-token step would (so a prompt in one block and token by token give the same logits)."""
    x = model.tok_embeddings(tokens)  # (T, dim): a new tensor, so updating it is safe
    if model.config.embedding_scale != 1.0:  # Gemma
        x = x * torch.tensor(model.config.embedding_scale, dtype=x.dtype)
    assert plan.kernel_layers is not None  # a plan made with_kernels
    plan.kernel_layers(x, pos)
    return head_rows(model, x[-1:] if last_only else x)


def kernel_rows(model: Llama, plan: Plan, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                logit_rows: torch.Tensor) -> torch.Tensor:
    """tokens, positions, slots: (rows,) -> (len(logit_rows), vocab) logits of the rows logit_rows picks:
    several sequences' next tokens (and prompt chunks) in one call, row m at positions[m] of cache slot
    slots[m] (the caches' batch index). Each row is computed bit for bit as its sequence alone would be."""
    x = model.tok_embeddings(tokens)  # (rows, dim)
    if model.config.embedding_scale != 1.0:  # Gemma
        x = x * torch.tensor(model.config.embedding_scale, dtype=x.dtype)
    assert plan.kernel_layers is not None  # a plan made with_kernels
    plan.kernel_layers.rows(x, positions, slots)
    if logit_rows.numel() == 0:  # prompt chunks only: their keys and values are what this pass was for
        return x.new_zeros(0, model.config.vocab_size)
    return head_rows(model, x.index_select(0, logit_rows))


def pytorch_step(model: Llama, plan: Plan, token: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """token, pos: (1,); mask from plan.window.at(pos) -> (vocab,) logits, on PyTorch's ops."""
    config = model.config
    n_heads, n_kv_heads, head_dim = config.n_heads, config.n_kv_heads, config.head_dim
    n_rotated = n_heads + n_kv_heads  # q and k heads turn, v's do not
    scale = config.attention_scale or head_dim ** -0.5
    rope = rope_matrix(*plan.rope_cos_sin.index_select(0, pos)[0])  # (head_dim, head_dim)
    local_rope, local_mask = rope, mask  # a model without local layers uses neither
    if plan.local_rope_cos_sin is not None:  # Gemma's local layers: their own RoPE, the last window positions
        local_rope = rope_matrix(*plan.local_rope_cos_sin.index_select(0, pos)[0])
        positions = torch.arange(mask.size(0), device=mask.device)
        local_mask = mask.masked_fill(positions <= pos - config.sliding_window, float("-inf"))
    x = model.tok_embeddings(token)  # (1, dim)
    if config.embedding_scale != 1.0:
        x = x * torch.tensor(config.embedding_scale, dtype=x.dtype)
    for layer, (keys_t, values) in zip(plan.layers, plan.window.views):
        heads = layer.qkv(layer.attention_norm(x)).view(n_rotated + n_kv_heads, head_dim).float()
        if layer.q_norm is not None and layer.k_norm is not None:
            heads = torch.cat((layer.q_norm(heads[:n_heads]), layer.k_norm(heads[n_heads:n_rotated]),
                               heads[n_rotated:])).float()
        turned = torch.mm(heads[:n_rotated], local_rope if layer.local else rope).to(plan.dtype)  # RoPE on q, k
        layer.k_cache.index_copy_(2, pos, turned[n_heads:, :, None])  # into (n_kv_heads, head_dim, max_len)
        layer.v_cache.index_copy_(1, pos, heads[n_rotated:, None].to(plan.dtype))  # (n_kv_heads, max_len, hd)
        q = turned[:n_heads].view(n_kv_heads, n_heads // n_kv_heads, head_dim)
        y = decode_attention(q, keys_t, values, local_mask if layer.local else mask, scale)  # like q
        h = layer.wo(y.view(1, n_heads * head_dim))
        x = x + (h if layer.post_attention_norm is None else layer.post_attention_norm(h))
        gate, up = layer.gate_up(layer.ffn_norm(x)).chunk(2, dim=-1)
        h = layer.down(layer.activation(gate) * up)
        x = x + (h if layer.post_ffn_norm is None else layer.post_ffn_norm(h))
    return head(model, x)
