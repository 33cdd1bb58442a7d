"""A preallocated key/value cache and attention over it, shared by both architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache(nn.Module):
    """Keys and values of every position seen so far, written in place (no per-step reallocation).

    Keys are kept transposed, (B, n_kv_heads, head_dim, max_len), so that a decode step's scores are one
    plain batched matmul q @ k_t over a prefix of the columns (decode_attention).
    """

    k_t: torch.Tensor  # (B, n_kv_heads, head_dim, max_len)
    v: torch.Tensor  # (B, n_kv_heads, max_len, head_dim)

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        self.register_buffer("k_t", torch.zeros(batch_size, n_kv_heads, head_dim, max_len, dtype=dtype,
                                                device=device), persistent=False)
        self.register_buffer("v", torch.zeros(batch_size, n_kv_heads, max_len, head_dim, dtype=dtype,
                                              device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.v.size(2)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (B, n_kv_heads, T, head_dim) for positions start_pos .. start_pos + T - 1
        end = start_pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.k_t[..., start_pos:end] = k.transpose(-1, -2)
        self.v[:, :, start_pos:end] = v
        return self.k_t[..., :end].transpose(-1, -2), self.v[:, :, :end]  # (B, n_kv_heads, end, head_dim)


class CachedAttention(nn.Module):
    """An attention layer's KV cache, made by its model's setup_cache."""

    kv_cache: KVCache | None  # set in __init__ (a submodule once set: no class default may shadow it)

    @property
    def cache(self) -> KVCache:
        """The cache setup_cache made (a forward or decode step before it is a bug)."""
        if self.kv_cache is None:
            raise RuntimeError("setup_cache first")
        return self.kv_cache


def cached_attentions(model: nn.Module) -> list[CachedAttention]:
    """Every attention layer of a model that holds a KV cache, in order."""
    return [module for module in model.modules() if isinstance(module, CachedAttention)]


def same_cache(cache: KVCache | None, batch_size: int, max_len: int, like: torch.Tensor) -> bool:
    """Whether `cache` already is what setup_cache(batch_size, max_len) would make for weights `like`."""
    return (cache is not None and cache.v.size(0) == batch_size and cache.max_len == max_len
            and cache.v.dtype == like.dtype and cache.v.device == like.device)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, window: int = 0,
                     scale: float | None = None) -> torch.Tensor:
    """q: (B, n_heads, T, head_dim) at positions start_pos.., k/v: (B, n_kv_heads, start_pos + T, head_dim).

    Query i may see keys 0 .. start_pos + i; with a window (Gemma's local layers), only the last `window`
    of them. One-token decode without a window sees everything, so it needs no mask. When n_kv_heads <
    n_heads (GQA), SDPA broadcasts each KV head over its group of query heads. scale: None for
    head_dim ** -0.5.
    """
    T, S = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if window and S > window:
        positions = torch.arange(S, device=q.device)
        distance = (start_pos + torch.arange(T, device=q.device))[:, None] - positions  # query - key
        mask = (distance >= 0) & (distance < window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, scale=scale)
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, scale=scale)
    if start_pos == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa, scale=scale)
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=start_pos)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, scale=scale)


class DecodeWindow:
    """The cached positions a decode step attends to: the first `size`, grown `step` at a time.

    Positions inside the window but not yet written are masked out (-inf scores, zero weight), so the
    per-layer views of the caches change only when the window grows. Slicing every cache at every step
    costs more than attending to up to step - 1 masked positions (~10 us a layer on SmolLM2). A step of
    at least max_len makes the window the whole cache: the same shapes at every position (torch.compile).
    """

    STEP = 128

    def __init__(self, caches: list[KVCache], step: int = STEP):
        self.caches, self.step = caches, step
        v = caches[0].v
        self.full_mask = torch.full((caches[0].max_len,), float("-inf"), dtype=v.dtype, device=v.device)
        self.size = 0
        self.mask = self.full_mask[:0]
        # Each layer's (keys_t (n_kv_heads, head_dim, size), values (n_kv_heads, size, head_dim)), batch row 0.
        self.views: list[tuple[torch.Tensor, torch.Tensor]] = []

    def at(self, pos: int) -> torch.Tensor:
        """For a step writing position `pos`: the (size,) mask, 0 up to pos and -inf after it (views
        are grown to match)."""
        size = min(-(-(pos + 1) // self.step) * self.step, self.full_mask.size(0))
        if size != self.size:
            self.size, self.mask = size, self.full_mask[:size]
            self.views = [(cache.k_t[0, :, :, :size], cache.v[0, :, :size]) for cache in self.caches]
        self.full_mask[:pos + 1] = 0
        self.full_mask[pos + 1:] = float("-inf")
        return self.mask


def decode_attention(q: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """One new position's attention over a window of cached ones (a decode step's; see DecodeWindow).

    q: (n_kv_heads, group, head_dim), query heads grouped by the KV head they share (group =
    n_heads / n_kv_heads; 1 without GQA); keys_t: (n_kv_heads, head_dim, window); values: (n_kv_heads,
    window, head_dim); mask: (window,), 0 or -inf -> (n_kv_heads, group, head_dim).
    Two batched matmuls and a softmax: for one query, SDPA's CPU kernel takes as long at 40 cached
    positions and twice as long at 500 (SmolLM2's shapes).
    """
    scores = torch.baddbmm(mask, q, keys_t, alpha=scale)  # (n_kv_heads, group, window): mask + scale q k
    if scores.dtype == torch.float32:
        return torch.bmm(torch.softmax(scores, dim=-1), values)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)  # a float32 softmax, as SDPA's
    return torch.bmm(probs.type_as(values), values)
