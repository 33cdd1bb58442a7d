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


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
    """q: (B, n_heads, T, head_dim) at positions start_pos.., k/v: (B, n_kv_heads, start_pos + T, head_dim).

    Query i may see keys 0 .. start_pos + i. One-token decode sees everything, so it needs no mask.
    When n_kv_heads < n_heads (GQA), SDPA broadcasts each KV head over its group of query heads.
    """
    T, S = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if start_pos == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=start_pos)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def decode_attention(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
    """One new position's attention over the first `length` cached ones (a decode step's).

    q: (n_kv_heads, group, head_dim), already scaled by 1 / sqrt(head_dim), query heads grouped by the
    KV head they share (group = n_heads / n_kv_heads; 1 without GQA); k_t: (n_kv_heads, head_dim, max_len);
    v: (n_kv_heads, max_len, head_dim) -> (n_kv_heads, group, head_dim).
    For one query, SDPA's CPU kernel takes as long as these two matmuls and a softmax at 40 cached
    positions and twice as long at 500 (SmolLM2's shapes).
    """
    scores = torch.bmm(q, k_t[:, :, :length])  # (n_kv_heads, group, length)
    probs = torch.softmax(scores.float(), dim=-1).type_as(v)  # a float32 softmax, as SDPA's
    return torch.bmm(probs, v[:, :length])
