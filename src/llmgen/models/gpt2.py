"""GPT-2: learned positions, pre-LayerNorm blocks, fused qkv projection, GELU MLP, tied output head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from llmgen import kernels
from llmgen.config import GPT2Config
from llmgen.models.kv_cache import DecodeWindow, KVCache, causal_attention, decode_attention, same_cache
from llmgen.quantize import linear_function


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.n_heads = config.n_heads
        self.c_attn = nn.Linear(config.dim, 3 * config.dim)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.dim, config.dim)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # (B, n_heads, T, head_dim)
        k, v = self.kv_cache.update(start_pos, k, v)
        y = causal_attention(q, k, v, start_pos)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(config.dim, 4 * config.dim)
        self.c_proj = nn.Linear(4 * config.dim, config.dim)

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
        # The head is tied to wte; quantization may give it its own module (see quantize.py).
        self.output: nn.Module | None = None
        self._decode_plan: DecodePlan | None = None

    def setup_cache(self, batch_size: int, max_len: int) -> None:
        """Preallocate the KV cache for up to max_len positions (at most the context length); one of
        the same shape is kept (see Llama.setup_cache)."""
        max_len = min(max_len, self.config.context_length)
        weight = self.wte.weight
        if same_cache(self.h[0].attn.kv_cache, batch_size, max_len, weight):
            return
        for block in self.h:
            block.attn.kv_cache = KVCache(batch_size, self.config.n_heads, max_len, self.config.head_dim,
                                          weight.dtype, weight.device)
        self._decode_plan = None  # built on the first decode_step

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

    def decode_plan(self, window_step: int = DecodeWindow.STEP) -> DecodePlan:
        """What decode steps need, built once per setup_cache; window_step: see DecodeWindow."""
        if self._decode_plan is None or self._decode_plan.window.step != window_step:
            blocks = [DecodeBlock.of(block) for block in self.h]
            caches = [block.attn.kv_cache for block in self.h]
            kernel_attention = None  # llmgen's attention kernel, where it runs and the caches are float32
            if kernels.library() is not None and caches[0].v.dtype == torch.float32:
                kernel_attention = [kernels.AttentionStep(c.k_t[0], c.v[0], self.config.n_heads, None) for c in caches]
            self._decode_plan = DecodePlan(blocks, DecodeWindow(caches, window_step), kernel_attention)
        return self._decode_plan

    def decode_step(self, token: int, pos: int, window_step: int = DecodeWindow.STEP,
                    decode_tokens: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """One token at position `pos` (after setup_cache and a prefill) -> (vocab,) float32 logits,
        through decode_tokens or a compiled one of it (compiled.py)."""
        plan, device = self.decode_plan(window_step), self.wte.weight.device
        token_t, pos_t = torch.tensor([token], device=device), torch.tensor([pos], device=device)
        if plan.kernel_attention is not None and decode_tokens is None:
            return self.decode_with_kernels(token_t, pos_t)
        return (decode_tokens or self.decode_tokens)(token_t, pos_t, plan.window.at(pos))

    def decode_with_kernels(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """decode_tokens with each block's attention (cache writes included) as one call into llmgen's
        kernels (kernels/attention.cpp) instead of ~10 tensor ops; tests hold this equal to forward."""
        plan = self._decode_plan
        x = F.embedding(token, self.wte.weight) + F.embedding(pos, self.wpe.weight)  # (1, dim)
        for block, attention in zip(plan.blocks, plan.kernel_attention):
            y = attention(block.qkv(block.ln_1(x)), pos)  # (1, dim)
            x = x + block.attention_proj(y)
            x = x + block.mlp_proj(F.gelu(block.fc(block.ln_2(x)), approximate="tanh"))
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight) if self.output is None else self.output(x)
        return logits[0].float()  # (vocab,)

    def decode_tokens(self, token: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """decode_step with its inputs as tensors: token and pos (1,), mask from decode_plan().window.at(pos).

        The same math as forward() for B = T = 1, written flat over a plan of plain functions (see
        Llama.decode_tokens for why); tests hold the two equal.
        """
        n_heads, head_dim = self.config.n_heads, self.config.head_dim
        plan = self._decode_plan
        x = F.embedding(token, self.wte.weight) + F.embedding(pos, self.wpe.weight)  # (1, dim)
        for block, (keys_t, values) in zip(plan.blocks, plan.window.views):
            qkv = block.qkv(block.ln_1(x)).to(block.v_cache.dtype)  # (1, 3 dim)
            q, k, v = qkv.view(3, n_heads, head_dim)
            block.k_cache.index_copy_(2, pos, k[:, :, None])  # k_cache: (n_heads, head_dim, max_len)
            block.v_cache.index_copy_(1, pos, v[:, None])  # v_cache: (n_heads, max_len, head_dim)
            y = decode_attention(q[:, None], keys_t, values, mask, head_dim ** -0.5)  # (n_heads, 1, head_dim)
            x = x + block.attention_proj(y.view(1, n_heads * head_dim))
            x = x + block.mlp_proj(F.gelu(block.fc(block.ln_2(x)), approximate="tanh"))
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight) if self.output is None else self.output(x)
        return logits[0].float()  # (vocab,)


@dataclass(slots=True)
class DecodePlan:
    """What decode steps need of the model, looked up once per setup_cache (see GPT2.decode_tokens)."""

    blocks: list[DecodeBlock]
    window: DecodeWindow
    kernel_attention: list[kernels.AttentionStep] | None  # per block, for GPT2.decode_with_kernels


@dataclass(slots=True)
class DecodeBlock:
    """What a decode step needs of one Block, looked up once per setup_cache: plain functions of
    (1, features) inputs and the cache tensors."""

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
                   attention.kv_cache.k_t[0], attention.kv_cache.v[0])
