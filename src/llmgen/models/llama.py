"""LLaMA-3 (3, 3.1, 3.2): RMSNorm pre-norm, RoPE, grouped-query attention, SwiGLU, tied or untied head.

Weight names follow Meta's checkpoints (tok_embeddings, layers.N.attention.wq, feed_forward.w1, ...), and
RoPE rotates interleaved pairs (x0, x1), (x2, x3), ... as Meta's code does; Hugging Face checkpoints are
permuted into this layout when they are loaded (weights/maps.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from llmgen.config import LlamaConfig, RopeScaling
from llmgen.models.kv_cache import DecodeWindow, KVCache, causal_attention, decode_attention, same_cache
from llmgen.kernels import LlamaLayers
from llmgen.quantize import Int4Linear, linear_function


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

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """forward with the attribute lookups done once (for decode steps)."""
        if self.weight.dtype == torch.float32:
            return partial(rms_norm, doubled_weight=torch.cat((self.weight, self.weight)), eps=self.eps)
        return self.forward


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """(head_dim / 2,) rotation frequencies, with Llama 3.1's scaling of the low frequencies."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
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


class Attention(nn.Module):
    # Quantization may fuse these into one matmul (quantize.py). Loading keeps them apart, so that
    # float weights stay memory-mapped instead of being copied into a concatenation.
    FUSIONS = {"wqkv": ("wq", "wk", "wv")}

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wqkv: nn.Module | None = None
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, start_pos: int) -> torch.Tensor:
        B, T, _ = x.shape
        if self.wqkv is None:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        else:
            kv_size = self.n_kv_heads * self.head_dim
            q, k, v = self.wqkv(x).split((self.n_heads * self.head_dim, kv_size, kv_size), dim=-1)
        dtype = self.kv_cache.v.dtype  # the model's: quantized layers compute in bfloat16
        q = apply_rope(q.view(B, T, self.n_heads, self.head_dim), rotations).to(dtype)
        k = apply_rope(k.view(B, T, self.n_kv_heads, self.head_dim), rotations).to(dtype)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        k, v = self.kv_cache.update(start_pos, k, v)  # (B, n_kv_heads, start_pos + T, head_dim)
        y = causal_attention(q, k, v, start_pos)  # (B, n_heads, T, head_dim)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    FUSIONS = {"w13": ("w1", "w3")}  # see Attention

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)  # gate
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)  # down
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)  # up
        self.w13: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = (self.w1(x), self.w3(x)) if self.w13 is None else self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)  # SwiGLU


class TransformerBlock(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, start_pos: int) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rotations, start_pos)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        # A tied head reuses the embedding matrix; the checkpoint then has no output.weight.
        self.output = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self._decode_plan = None

    def setup_cache(self, batch_size: int, max_len: int) -> None:
        """Preallocate KV caches and RoPE tables for up to max_len positions.

        Caches of the same shape are kept, with what they hold: every step writes its positions before
        anything reads them. Keeping them keeps a compiled decode step's graph valid (compiled.py).
        """
        max_len = min(max_len, self.config.context_length)
        weight = self.tok_embeddings.weight
        if same_cache(self.layers[0].attention.kv_cache, batch_size, max_len, weight):
            return
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch_size, self.config.n_kv_heads, max_len, self.config.head_dim,
                                               weight.dtype, weight.device)
        freqs = rope_frequencies(self.config.head_dim, self.config.rope_theta, self.config.rope_scaling)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), freqs)  # (max_len, head_dim / 2)
        rotations = torch.polar(torch.ones_like(angles), angles).to(weight.device)  # complex64
        self.register_buffer("rope_rotations", rotations, persistent=False)
        self._decode_plan: DecodePlan | None = None  # built on the first decode_step

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, last_only: bool = False) -> torch.Tensor:
        """tokens: (B, T) at positions start_pos.. -> logits (B, T, vocab), or (B, 1, vocab) with last_only."""
        T = tokens.size(1)
        rotations = self.rope_rotations[start_pos:start_pos + T]
        x = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            x = layer(x, rotations, start_pos)
        x = self.norm(x[:, -1:] if last_only else x)
        logits = F.linear(x, self.tok_embeddings.weight) if self.output is None else self.output(x)
        return logits.float()  # (B, T, vocab)

    def decode_plan(self, window_step: int = DecodeWindow.STEP) -> DecodePlan:
        """What decode steps need, built once per setup_cache; window_step: see DecodeWindow."""
        if self._decode_plan is None or self._decode_plan.window.step != window_step:
            self._decode_plan = DecodePlan.of(self, window_step)
        return self._decode_plan

    def decode_step(self, token: int, pos: int, window_step: int = DecodeWindow.STEP,
                    decode_tokens: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """One token at position `pos` (after setup_cache and a prefill) -> (vocab,) float32 logits,
        through decode_tokens or a compiled one of it (compiled.py)."""
        plan, device = self.decode_plan(window_step), self.tok_embeddings.weight.device
        token_t, pos_t = torch.tensor([token], device=device), torch.tensor([pos], device=device)
        if plan.kernel_layers is not None and decode_tokens is None:
            return self.decode_with_kernels(token_t, pos_t)
        return (decode_tokens or self.decode_tokens)(token_t, pos_t, plan.window.at(pos))

    def decode_with_kernels(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """decode_tokens through llmgen's kernels (kernels/), where every block's matmuls are int4 on them:
        all blocks in one call (kernels/llama_layers.cpp), each block five kernel calls with the norms,
        SwiGLU and residual adds done inside them, instead of ~30 tensor ops.
        tests/test_generation.py holds this equal to forward.
        """
        x = F.embedding(token, self.tok_embeddings.weight)  # (1, dim): a new tensor, so updating it is safe
        self._decode_plan.kernel_layers(x, pos)
        x = self.norm(x)
        logits = F.linear(x, self.tok_embeddings.weight) if self.output is None else self.output(x)
        return logits[0].float()  # (vocab,)

    def decode_tokens(self, token: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """decode_step with its inputs as tensors: token and pos (1,), mask from decode_plan().window.at(pos).

        The same math as forward() for B = T = 1, written flat over a plan of plain functions and
        tensors (see DecodePlan). At ~100 tokens/s a step is ~10 ms, and what forward does to serve any
        batch and length (module calls, attribute lookups, reshapes, mask logic) costs a third of it on
        SmolLM2-135M: each tensor op costs 1-3 us of Python and dispatch, and a step makes ~1,000.
        Positions are tensors so that torch.compile sees one graph for every position (compiled.py).
        tests/test_generation.py holds this equal to forward for float, int8 and int4 weights.
        """
        n_heads, n_kv_heads, head_dim = self.config.n_heads, self.config.n_kv_heads, self.config.head_dim
        n_rotated = n_heads + n_kv_heads  # q and k heads turn, v's do not
        plan = self._decode_plan
        rope = rope_matrix(*plan.rope_cos_sin.index_select(0, pos)[0])  # (head_dim, head_dim)
        x = F.embedding(token, self.tok_embeddings.weight)  # (1, dim)
        for layer, (keys_t, values) in zip(plan.layers, plan.window.views):
            heads = layer.qkv(layer.attention_norm(x)).view(n_rotated + n_kv_heads, head_dim).float()
            turned = torch.mm(heads[:n_rotated], rope).to(plan.dtype)  # RoPE on the q and k heads
            layer.k_cache.index_copy_(2, pos, turned[n_heads:, :, None])  # into (n_kv_heads, head_dim, max_len)
            layer.v_cache.index_copy_(1, pos, heads[n_rotated:, None].to(plan.dtype))  # (n_kv_heads, max_len, hd)
            q = turned[:n_heads].view(n_kv_heads, n_heads // n_kv_heads, head_dim)
            y = decode_attention(q, keys_t, values, mask, head_dim ** -0.5)  # like q
            x = x + layer.wo(y.view(1, n_heads * head_dim))
            gate, up = layer.gate_up(layer.ffn_norm(x)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        x = self.norm(x)
        logits = F.linear(x, self.tok_embeddings.weight) if self.output is None else self.output(x)
        return logits[0].float()  # (vocab,)


@dataclass(slots=True)
class DecodePlan:
    """What decode steps need of the model, looked up once per setup_cache (see Llama.decode_tokens)."""

    layers: list[DecodeLayer]
    window: DecodeWindow
    rope_cos_sin: torch.Tensor  # (max_len, 2, head_dim / 2): each position's RoPE cos and sin
    dtype: torch.dtype  # the caches'
    kernel_layers: LlamaLayers | None  # where every block can run on llmgen's kernels

    @classmethod
    def of(cls, model: Llama, window_step: int) -> DecodePlan:
        caches = [layer.attention.kv_cache for layer in model.layers]
        rotations = model.rope_rotations  # (max_len, head_dim / 2) complex
        rope_cos_sin = torch.stack((rotations.real, rotations.imag), dim=1)
        return cls([DecodeLayer.of(layer) for layer in model.layers], DecodeWindow(caches, window_step),
                   rope_cos_sin, caches[0].v.dtype, kernel_layers(model, rope_cos_sin))


@dataclass(slots=True)
class DecodeLayer:
    """What a decode step needs of one TransformerBlock, looked up once per setup_cache: plain
    functions of (1, features) inputs and the cache tensors."""

    attention_norm: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], torch.Tensor]  # -> q, k, v side by side
    wo: Callable[[torch.Tensor], torch.Tensor]
    ffn_norm: Callable[[torch.Tensor], torch.Tensor]
    gate_up: Callable[[torch.Tensor], torch.Tensor]  # -> gate, up side by side
    down: Callable[[torch.Tensor], torch.Tensor]
    k_cache: torch.Tensor  # (n_kv_heads, head_dim, max_len): keys transposed (see KVCache)
    v_cache: torch.Tensor  # (n_kv_heads, max_len, head_dim)

    @classmethod
    def of(cls, block: TransformerBlock) -> DecodeLayer:
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
        return cls(block.attention_norm.as_function(), qkv, linear_function(attention.wo),
                   block.ffn_norm.as_function(), gate_up, linear_function(feed_forward.w2),
                   attention.kv_cache.k_t[0], attention.kv_cache.v[0])


def kernel_layers(model: Llama, rope_cos_sin: torch.Tensor) -> LlamaLayers | None:
    """The model's blocks as one call into llmgen's kernels (Llama.decode_with_kernels), or None unless
    every block's matmuls are fused int4 layers on llmgen's kernel and its caches are float32."""
    blocks = []
    for block in model.layers:
        attention, feed_forward, cache = block.attention, block.feed_forward, block.attention.kv_cache
        linears = (attention.wqkv, attention.wo, feed_forward.w13, feed_forward.w2)
        if not all(isinstance(m, Int4Linear) and m.own_kernel for m in linears) or cache.v.dtype != torch.float32:
            return None
        norms = block.attention_norm, block.ffn_norm
        blocks.append((attention.wqkv.kernel_matmul(norms[0].weight, norms[0].eps), attention.wo.kernel_matmul(),
                       feed_forward.w13.kernel_matmul(norms[1].weight, norms[1].eps),
                       feed_forward.w2.kernel_matmul(gated=True), cache.k_t[0], cache.v[0]))
    return LlamaLayers(blocks, model.config.n_heads, rope_cos_sin)
