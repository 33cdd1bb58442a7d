"""LLaMA-3 (3, 3.1, 3.2): RMSNorm pre-norm, RoPE, grouped-query attention, SwiGLU, tied or untied head.
The same code runs the families that differ from it in a detail the config names (config.py): Mistral,
Qwen2/2.5 (bias on q, k, v), Qwen3 (RMSNorm on each q and k head), Phi-3 and Gemma 3 (scaled
embeddings, post-norms, GeGLU, local sliding-window layers between global ones).

Weight names follow Meta's checkpoints (tok_embeddings, layers.N.attention.wq, feed_forward.w1, ...), and
RoPE rotates interleaved pairs (x0, x1), (x2, x3), ... as Meta's code does; Hugging Face checkpoints are
permuted into this layout when they are loaded (weights/maps.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from llmgen.config import LlamaConfig, RopeScaling
from llmgen.models.kv_cache import CachedAttention, KVCache, causal_attention, same_cache

Activation = Callable[[torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor, doubled_weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x², last dim) + eps), times the weight, given twice over: [weight, weight].

    Computed as LayerNorm over [x, -x]: that pair has mean 0 and variance mean(x²), so LayerNorm's
    fused kernel gives RMSNorm. PyTorch's own rms_norm on a CPU is six ops and takes twice as long,
    and a decode step normalises 2 n_layers + 1 times.
    """
    dim = x.size(-1)
    return F.layer_norm(torch.cat((x, -x), dim=-1), (2 * dim,), doubled_weight, None, eps)[..., :dim]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return rms_norm(x, torch.cat((self.weight, self.weight)), self.eps)
        # Normalise in float32 (as Meta and HF do), then scale in the model's dtype.
        return rms_norm(x.float(), None, self.eps).type_as(x) * self.weight


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None,
                     factors: tuple[float, ...] | None = None, rotary_dim: int | None = None) -> torch.Tensor:
    """(head_dim / 2,) rotation frequencies, with Llama 3.1's scaling of the low frequencies: from its
    parameters, or as precomputed divisors (a GGUF's rope_freqs, which llama.cpp divides by).

    Partial RoPE (rotary_dim < head_dim): the first rotary_dim / 2 pairs turn at rotary_dim's frequencies,
    the rest at frequency 0, a rotation by nothing: they pass through."""
    rotary_dim = rotary_dim or head_dim
    freqs = _turning_frequencies(rotary_dim, theta, scaling, factors)
    return torch.cat((freqs, freqs.new_zeros((head_dim - rotary_dim) // 2)))


def _turning_frequencies(rotary_dim: int, theta: float, scaling: RopeScaling | None,
                         factors: tuple[float, ...] | None) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    if factors is not None:
        return (freqs / torch.tensor(factors, dtype=torch.float64)).float()
    if scaling is None:
        return freqs.float()
    wavelen = 2 * math.pi / freqs
    low_freq_wavelen = scaling.original_context_length / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_context_length / scaling.high_freq_factor
    smooth = (scaling.original_context_length / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * freqs / scaling.factor + smooth * freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / scaling.factor, blended)
    return torch.where(wavelen < high_freq_wavelen, freqs, scaled).float()


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """x: (B, T, n_heads, head_dim); rotations: (T, head_dim / 2) complex, e^(i * position * frequency).

    Each pair (x[2j], x[2j+1]) is a complex number, turned by its position's angle: one multiply.
    Returns float32 (the caller casts to its own dtype).
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, T, n_heads, head_dim / 2)
    return torch.view_as_real(pairs * rotations[:, None]).flatten(-2)


def rope_matrix(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One position's (head_dim / 2,) cos and sin -> (head_dim, head_dim) R, with x @ R == apply_rope(x).

    R is block diagonal: pair j, (x[2j], x[2j+1]), times [[cos, sin], [-sin, cos]] of its angle. For one
    token, one small matmul per layer turns all the q and k heads: 12 us against 20 us for the complex route.
    """
    half = cos.size(0)
    blocks = torch.stack((cos, sin, -sin, cos)).view(2, 2, half)  # blocks[:, :, j]: pair j's 2x2
    matrix = cos.new_zeros(half, 2, half, 2)
    matrix.diagonal(dim1=0, dim2=2).copy_(blocks)  # matrix[j, a, j, b] = blocks[a, b, j]
    return matrix.view(2 * half, 2 * half)


class Attention(CachedAttention):
    # wqkv: q, k and v as one matmul, when quantization fuses them (quantization/model.py). Loading keeps them
    # apart, so that float weights stay memory-mapped instead of being copied into a concatenation.
    FUSIONS = {"wqkv": ("wq", "wk", "wv")}

    def __init__(self, config: LlamaConfig, local: bool = False):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.scale = config.attention_scale or None  # None: SDPA's head_dim ** -0.5
        self.window = config.sliding_window if local else 0  # Gemma's local layers: the last `window` positions
        self.wq: nn.Module = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=config.qkv_bias)
        self.wk: nn.Module = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=config.qkv_bias)
        self.wv: nn.Module = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=config.qkv_bias)
        self.wqkv: nn.Module | None = None
        self.wo: nn.Module = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        # Qwen3: each q and k head RMS-normalised (one weight of head_dim, shared by the heads) before RoPE.
        self.q_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, start_pos: int) -> torch.Tensor:
        B, T, _ = x.shape
        if self.wqkv is None:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        else:
            kv_size = self.n_kv_heads * self.head_dim
            q, k, v = self.wqkv(x).split((self.n_heads * self.head_dim, kv_size, kv_size), dim=-1)
        cache = self.cache
        dtype = cache.v.dtype  # the model's: quantized layers compute in bfloat16
        q, k = q.view(B, T, self.n_heads, self.head_dim), k.view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rotations).to(dtype), apply_rope(k, rotations).to(dtype)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        k, v = cache.update(start_pos, k, v)  # (B, n_kv_heads, start_pos + T, head_dim)
        y = causal_attention(q, k, v, start_pos, self.window, self.scale)  # (B, n_heads, T, head_dim)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Activation] = {"silu": F.silu, "gelu_tanh": gelu_tanh}  # SwiGLU, Gemma's GeGLU


class FeedForward(nn.Module):
    FUSIONS = {"w13": ("w1", "w3")}  # see Attention

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.w1: nn.Module = nn.Linear(config.dim, config.ffn_dim, bias=False)  # gate
        self.w2: nn.Module = nn.Linear(config.ffn_dim, config.dim, bias=False)  # down
        self.w3: nn.Module = nn.Linear(config.dim, config.ffn_dim, bias=False)  # up
        self.w13: nn.Module | None = None
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = (self.w1(x), self.w3(x)) if self.w13 is None else self.w13(x).chunk(2, dim=-1)
        return self.w2(self.activation(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, config: LlamaConfig, local: bool = False):
        super().__init__()
        self.local = local  # Gemma: a sliding-window layer, with its own RoPE base
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, local)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)
        # Gemma: the sublayers' outputs normalised too, before each residual add.
        self.post_attention_norm = RMSNorm(config.dim, config.norm_eps) if config.post_norms else None
        self.post_ffn_norm = RMSNorm(config.dim, config.norm_eps) if config.post_norms else None

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, start_pos: int) -> torch.Tensor:
        h = self.attention(self.attention_norm(x), rotations, start_pos)
        x = x + (h if self.post_attention_norm is None else self.post_attention_norm(h))
        h = self.feed_forward(self.ffn_norm(x))
        return x + (h if self.post_ffn_norm is None else self.post_ffn_norm(h))


class Llama(nn.Module):
    rope_rotations: torch.Tensor  # (max_len, head_dim / 2) complex64, made by setup_cache
    local_rope_rotations: torch.Tensor  # the same for local layers (Gemma's own base), when there are any

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        local = config.local_layers or (False,) * config.n_layers
        self.layers = nn.ModuleList(TransformerBlock(config, local[i]) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        # A tied head reuses the embedding matrix; the checkpoint then has no output.weight.
        self.output: nn.Module | None = (None if config.tie_embeddings
                                         else nn.Linear(config.dim, config.vocab_size, bias=False))

    @property
    def blocks(self) -> list[TransformerBlock]:
        """The transformer blocks, typed (to a type checker nn.ModuleList's items are plain Modules)."""
        return cast(list[TransformerBlock], list(self.layers))

    def setup_cache(self, batch_size: int, max_len: int) -> None:
        """Preallocate KV caches and RoPE tables for up to max_len positions.

        Caches of the same shape are kept, with what they hold: every step writes its positions before
        anything reads them. Keeping them keeps a compiled decode step's graph valid (decode/compiled.py).
        """
        max_len = min(max_len, self.config.context_length)
        weight = self.norm.weight  # the model's dtype and device (the embedding may be kept quantized)
        if same_cache(self.blocks[0].attention.kv_cache, batch_size, max_len, weight):
            return
        for layer in self.blocks:
            layer.attention.kv_cache = KVCache(batch_size, self.config.n_kv_heads, max_len, self.config.head_dim,
                                               weight.dtype, weight.device)
        freqs = rope_frequencies(self.config.head_dim, self.config.rope_theta, self.config.rope_scaling,
                                 self.config.rope_freq_factors, self.config.rotary_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), freqs)  # (max_len, head_dim / 2)
        magnitude = torch.ones_like(angles)  # 1 but for Phi-3's longrope, on the pairs that turn
        magnitude[:, :self.config.rotary_dim // 2] = self.config.rope_attention_factor
        rotations = torch.polar(magnitude, angles).to(weight.device)  # complex64
        self.register_buffer("rope_rotations", rotations, persistent=False)
        if self.config.local_layers and self.config.local_rope_theta:  # Gemma's: their own base, unscaled
            local_freqs = rope_frequencies(self.config.head_dim, self.config.local_rope_theta, None)
            local_angles = torch.outer(torch.arange(max_len, dtype=torch.float32), local_freqs)
            self.register_buffer("local_rope_rotations", torch.polar(torch.ones_like(local_angles), local_angles)
                                 .to(weight.device), persistent=False)
        elif self.config.local_layers:  # Mistral's, Phi-3's: the same turns as every layer's
            self.register_buffer("local_rope_rotations", rotations, persistent=False)

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, last_only: bool = False) -> torch.Tensor:
        """tokens: (B, T) at positions start_pos.. -> logits (B, T, vocab), or (B, 1, vocab) with last_only."""
        T = tokens.size(1)
        rotations = self.rope_rotations[start_pos:start_pos + T]
        local_rotations = self.local_rope_rotations[start_pos:start_pos + T] if self.config.local_layers else None
        x = self.tok_embeddings(tokens)  # (B, T, dim)
        if self.config.embedding_scale != 1.0:  # Gemma; in the embedding's dtype, as Gemma's code does
            x = x * torch.tensor(self.config.embedding_scale, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, local_rotations if layer.local else rotations, start_pos)
        x = self.norm(x[:, -1:] if last_only else x)
        logits = F.linear(x, self.tok_embeddings.weight) if self.output is None else self.output(x)
        return logits.float()  # (B, T, vocab)
