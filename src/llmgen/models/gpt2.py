"""GPT-2: learned positions, pre-LayerNorm blocks, fused qkv projection, GELU MLP, tied output head."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from llmgen.config import GPT2Config
from llmgen.models.kv_cache import CachedAttention, KVCache, causal_attention, same_cache


class CausalSelfAttention(CachedAttention):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        width = config.n_heads * config.head_dim  # dim, but for a tensor-parallel shard's heads
        self.c_attn: nn.Module = nn.Linear(config.dim, 3 * width)  # q, k, v for all heads at once
        self.c_proj: nn.Module = nn.Linear(width, config.dim)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        B, T, _ = x.shape
        width = self.n_heads * self.head_dim
        q, k, v = self.c_attn(x).split(width, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        # (B, n_heads, T, head_dim)
        k, v = self.cache.update(start_pos, k, v)
        y = causal_attention(q, k, v, start_pos)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, width))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc: nn.Module = nn.Linear(config.dim, config.ffn_dim)
        self.c_proj: nn.Module = nn.Linear(config.ffn_dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), start_pos)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.dim)
        self.wpe = nn.Embedding(config.context_length, config.dim)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.dim, eps=config.norm_eps)
        # The head is tied to wte; quantization may give it its own module (see quantization/model.py).
        self.output: nn.Module | None = None

    @property
    def blocks(self) -> list[Block]:
        """The blocks, typed (to a type checker nn.ModuleList's items are plain Modules)."""
        return cast(list[Block], list(self.h))

    def setup_cache(self, batch_size: int, max_len: int) -> None:
        """Preallocate the KV cache for up to max_len positions (at most the context length); one of
        the same shape is kept (see Llama.setup_cache)."""
        max_len = min(max_len, self.config.context_length)
        weight = self.wte.weight
        if same_cache(self.blocks[0].attn.kv_cache, batch_size, max_len, weight):
            return
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch_size, self.config.n_heads, max_len, self.config.head_dim,
                                          weight.dtype, weight.device)

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, last_only: bool = False) -> torch.Tensor:
        """tokens: (B, T) at positions start_pos.. -> logits (B, T, vocab), or (B, 1, vocab) with last_only."""
        T = tokens.size(1)
        positions = torch.arange(start_pos, start_pos + T, device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)  # (B, T, dim)
        for block in self.h:
            x = block(x, start_pos)
        x = self.ln_f(x[:, -1:] if last_only else x)
        logits = F.linear(x, self.wte.weight) if self.output is None else self.output(x)
        return logits.float()  # (B, T, vocab)
