"""Calls into the kernels, each checking what the C++ side trusts (shapes, dtypes, positions) first."""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmgen.kernels.abi import ALL_REDUCE, LlamaLayer, QuantLayer
from llmgen.kernels.build import loaded
from llmgen.kernels.packing import SUPER_GROUPS, Packed, PackedInt4, pointer

# kernels.h's GATED_* codes: the activation of a gated layer's input.
GATED_ACTIVATIONS = {"silu": 1, "gelu_tanh": 2}


class QuantMatmul:
    """x -> prepare(x) W^T (+ bias) through quant_linear, for one layer: float32 (rows, in) in, (rows, out)
    out. W is one packed matrix, or several side by side (`parts`, each with its bias or None), whose
    outputs are concatenated: a fused q/k/v whose parts are stored in different formats.

    prepare is nothing, RMSNorm with `norm_weight` (then x is the un-normalised residual stream), or with
    `gated`, activation(gate) * up of x = [gate, up] (rows, 2 in), activation "silu" (SwiGLU) or "gelu_tanh"
    (Gemma's GeGLU). With `out` and accumulate=True the result is added into `out` in place: a residual
    connection with no extra tensor op.
    """

    def __init__(self, parts: list[tuple[Packed, torch.Tensor | None]], norm_weight: torch.Tensor | None = None,
                 norm_eps: float = 0.0, gated: bool = False, activation: str = "silu"):
        if activation not in GATED_ACTIVATIONS:
            raise ValueError(f"gated activation {activation!r} is not one of {', '.join(GATED_ACTIVATIONS)}")
        in_features = parts[0][0].in_features
        if any(weights.in_features != in_features for weights, _ in parts):
            raise ValueError("the parts of a fused layer take the same input")
        for weights, _ in parts:  # the kernel reads an fp16 pair per 8 groups, 8-bit values per group
            if weights.bits == 6 and not (weights.in_features % 256 == 0 and weights.packed.dtype == torch.uint8
                                          and weights.packed.shape[1] == weights.in_features // 256 * 210):
                raise ValueError("Q6_K rows are whole 210-byte blocks of 256 weights")
            scales, minimums, super_scales, super_minimums = (weights.scales, weights.minimums, weights.super_scales,
                                                              weights.super_minimums)
            if super_scales is not None and not (
                    scales is not None and minimums is not None and super_minimums is not None
                    and weights.groups % SUPER_GROUPS == 0 and scales.dtype == minimums.dtype == torch.uint8
                    and super_scales.shape == super_minimums.shape == (weights.out_features,
                                                                       weights.groups // SUPER_GROUPS)):
                raise ValueError("two-level scales need whole super-blocks of 8 groups")
        # Kept here: the structs hold raw pointers to these tensors.
        self.parts = [(weights, None if bias is None else bias.detach().float().contiguous()) for weights, bias in parts]
        self.norm_weight = None if norm_weight is None else norm_weight.detach().float().contiguous()
        self.layers = (QuantLayer * len(parts))()
        for i, (weights, bias) in enumerate(self.parts):
            first = i == 0
            self.layers[i] = QuantLayer(
                weights.packed.data_ptr(), pointer(weights.scales), pointer(weights.minimums),
                pointer(weights.super_scales), pointer(weights.super_minimums), weights.groups,
                in_features, weights.out_features, pointer(bias), pointer(self.norm_weight) if first else None,
                norm_eps, GATED_ACTIVATIONS[activation] if gated and first else 0, weights.bits, weights.group,
                ctypes.pointer(self.layers[i + 1]) if i + 1 < len(parts) else None)
        self.layer = self.layers[0]
        self.address = ctypes.addressof(self.layers)
        self.out_features = sum(weights.out_features for weights, _ in parts)
        self.in_width = 2 * in_features if gated else in_features  # x's columns
        self.run = loaded().quant_linear

    @property
    def weights(self) -> Packed:
        return self.parts[0][0]

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        rows = x.shape[0]
        # The kernel trusts these shapes: a wrong one would read or write past the tensors.
        if x.dim() != 2 or x.shape[1] != self.in_width:
            raise ValueError(f"quantized layer takes (rows, {self.in_width}) inputs, got {tuple(x.shape)}")
        if out is None:
            out = torch.empty(rows, self.out_features)
        elif out.shape != (rows, self.out_features) or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"quantized layer writes a contiguous float32 ({rows}, {self.out_features}) output")
        self.run(self.address, x.data_ptr(), rows, out.data_ptr(), int(accumulate), torch.get_num_threads())
        return out


def Int4Matmul(weights: PackedInt4, bias: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
               norm_eps: float = 0.0, gated: bool = False,
               activation: str = "silu") -> QuantMatmul:  # noqa: N802 (kept for its callers)
    """One packed matrix as a QuantMatmul."""
    return QuantMatmul([(weights, bias)], norm_weight, norm_eps, gated, activation)


class AttentionStep:
    """(heads, pos) -> (1, n_heads * head_dim): one layer's decode-step attention through attention.cpp.

    heads: (1, (n_heads + 2 n_kv_heads) head_dim) float32, the new token's q, k, v (turned in place by RoPE);
    pos: (1,) int64 tensor. keys_t and values are the layer's caches (batch row 0, float32); rope:
    (max_len, 2, head_dim / 2) cos and sin, or None for a model without RoPE; window: attend to the last
    `window` positions only (0: all); scale: q.k's (None: 1 / sqrt(head_dim)).
    """

    def __init__(self, keys_t: torch.Tensor, values: torch.Tensor, n_heads: int, rope: torch.Tensor | None,
                 window: int = 0, scale: float | None = None):
        n_kv_heads, head_dim, max_len = keys_t.shape
        if not (keys_t.dtype == values.dtype == torch.float32 and keys_t.is_contiguous() and values.is_contiguous()):
            raise ValueError("the attention kernel needs contiguous float32 caches")
        self.keys_t, self.values, self.rope = keys_t, values, None if rope is None else rope.contiguous()
        self.shape = (n_heads, n_kv_heads, head_dim, max_len)
        self.pointers = (pointer(self.rope), keys_t.data_ptr(), values.data_ptr())
        self.window, self.scale = window, head_dim ** -0.5 if scale is None else scale
        self.run = loaded().attention_step

    def __call__(self, heads: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if heads.dtype != torch.float32 or not heads.is_contiguous():
            heads = heads.float().contiguous()
        n_heads, n_kv_heads, head_dim, max_len = self.shape
        out = torch.empty(1, n_heads * head_dim)
        rope, keys_t, values = self.pointers
        if self.run(heads.data_ptr(), rope, keys_t, values, _position(pos), n_heads, n_kv_heads, head_dim, max_len,
                    self.window, self.scale, out.data_ptr(), torch.get_num_threads()):
            raise ValueError(f"position {int(pos)} is outside the KV cache's {max_len}")
        return out


@dataclass
class BlockKernels:
    """One transformer block for LlamaLayers: its QuantMatmuls (qkv with attention_norm, wo, gate_up with
    ffn_norm, down gated), its caches keys_t (n_slots, n_kv_heads, head_dim, max_len) and values (n_slots,
    n_kv_heads, max_len, head_dim) (a KVCache's tensors: one slot a sequence), its RoPE table (max_len, 2, head_dim / 2) cos and sin, and the optional parts:
    Qwen3's/Gemma's q and k norm weights (head_dim,), Gemma's post-attention and post-MLP norm weights
    (dim,), a sliding window (0: none)."""

    qkv: QuantMatmul
    wo: QuantMatmul
    gate_up: QuantMatmul
    down: QuantMatmul
    keys_t: torch.Tensor
    values: torch.Tensor
    rope: torch.Tensor
    qk_norms: tuple[torch.Tensor, torch.Tensor] | None = None
    post_norms: tuple[torch.Tensor, torch.Tensor] | None = None
    window: int = 0


class LlamaLayers:
    """x -> x after all of a LLaMA's transformer blocks, for one decode step or a block of consecutive
    tokens (bit for bit what one-token steps in order compute), in place: one call into
    llama_layers.cpp, which runs each block as five kernel calls (described there). norm_eps: the q/k and
    post-norms' epsilon; attention_scale: q.k's. all_reduce: for a tensor-parallel shard's blocks, the
    sum over ranks (in place, of a (dim,) float32 tensor) of wo's and down's outputs, called back between
    the kernel calls."""

    def __init__(self, blocks: list[BlockKernels], n_heads: int, norm_eps: float, attention_scale: float,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        n_slots, n_kv_heads, head_dim, max_len = blocks[0].keys_t.shape
        dim = blocks[0].wo.out_features

        def floats(weights: tuple[torch.Tensor, ...] | None, size: int) -> tuple[torch.Tensor, ...] | None:
            if weights is None:
                return None
            weights = tuple(w.detach().float().contiguous() for w in weights)
            if any(w.shape != (size,) for w in weights):
                raise ValueError(f"norm weights must be ({size},)")
            return weights

        # Kept: the structs point into these tensors.
        self.kept = [(floats(b.qk_norms, head_dim), floats(b.post_norms, dim), b.rope.contiguous()) for b in blocks]
        for block, (_, _, rope) in zip(blocks, self.kept):
            if rope.shape != (max_len, 2, head_dim // 2) or rope.dtype != torch.float32:
                raise ValueError(f"a block's RoPE table must be float32 ({max_len}, 2, {head_dim // 2})")
            if (block.keys_t.shape != (n_slots, n_kv_heads, head_dim, max_len)
                    or block.values.shape != (n_slots, n_kv_heads, max_len, head_dim)
                    or not (block.keys_t.is_contiguous() and block.values.is_contiguous())
                    or block.keys_t.dtype != torch.float32 or block.values.dtype != torch.float32):
                raise ValueError("every block's caches must be contiguous float32 tensors of the same shape")
        self.blocks = blocks
        self.layers = (LlamaLayer * len(blocks))(*(
            LlamaLayer(b.qkv.layer, b.wo.layer, b.gate_up.layer, b.down.layer, b.keys_t.data_ptr(), b.values.data_ptr(),
                       *_pointers(qk_norms, 2), norm_eps, *_pointers(post_norms, 2), rope.data_ptr(), b.window,
                       attention_scale)
            for b, (qk_norms, post_norms, rope) in zip(blocks, self.kept)))
        self.arguments = (self.layers, len(blocks), n_heads, n_kv_heads, head_dim, max_len, n_slots)
        self.n_slots, self.max_len = n_slots, max_len
        self.all_reduce = ALL_REDUCE() if all_reduce is None else ALL_REDUCE(_float_callback(all_reduce))
        self.run = loaded().llama_decode_layers

    def __call__(self, x: torch.Tensor, pos: torch.Tensor) -> None:
        """x: (rows, dim) float32, updated in place; pos: (1,) int64, the first row's position: rows at
        consecutive positions of slot 0 (one sequence)."""
        self.rows(x, torch.arange(x.size(0), dtype=torch.int64) + pos.to(torch.int64), None)

    def rows(self, x: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor | None) -> None:
        """x: (rows, dim) float32, updated in place; positions: (rows,) int64, row m's position in its
        cache slot slots[m] ((rows,) int64; None: slot 0). A slot's rows must come in position order."""
        if (x.dim() != 2 or x.size(1) != self.blocks[0].wo.out_features or x.dtype != torch.float32
                or not x.is_contiguous()):
            raise ValueError(f"LlamaLayers updates a contiguous float32 (rows, dim) x, got {tuple(x.shape)} {x.dtype}")
        _check_rows(positions, x.size(0), "positions")
        if slots is not None:
            _check_rows(slots, x.size(0), "slots")
        outside = self.run(*self.arguments, x.data_ptr(), x.size(0), positions.data_ptr(),
                           None if slots is None else slots.data_ptr(), torch.get_num_threads(), self.all_reduce)
        if _callback_errors:
            error = _callback_errors[0]
            _callback_errors.clear()
            raise error
        if outside:
            bad = [int(p) for p in positions if not 0 <= p < self.max_len]
            if bad:
                raise ValueError(f"position {bad[0]} is outside the KV cache's {self.max_len}")
            raise ValueError(f"a cache slot is outside the {self.n_slots} there are")


def _check_rows(values: torch.Tensor, rows: int, what: str) -> None:
    """What C++ reads rows entries of: a contiguous (rows,) int64 CPU tensor."""
    if (values.dtype != torch.int64 or values.shape != (rows,) or not values.is_contiguous()
            or values.device.type != "cpu"):
        raise ValueError(f"{what} must be a contiguous ({rows},) int64 CPU tensor")


_callback_errors: list[BaseException] = []  # what a callback raised during the current call into C++


def _float_callback(function: Callable[[torch.Tensor], torch.Tensor]):
    """function(tensor) in place, called with (pointer, n floats) from C++. An exception cannot cross back
    into C++: it is kept, the data left as they are, and raised once the call into C++ returns."""
    def call(pointer: int, n: int) -> None:
        if _callback_errors:
            return  # the step is lost already: finish it quickly
        try:
            function(torch.frombuffer((ctypes.c_float * n).from_address(pointer), dtype=torch.float32))
        except BaseException as e:  # noqa: BLE001 - re-raised by check_callback
            _callback_errors.append(e)
    return call


def _pointers(tensors: tuple[torch.Tensor, ...] | None, count: int) -> tuple[int | None, ...]:
    return (None,) * count if tensors is None else tuple(t.data_ptr() for t in tensors)


def _position(pos: torch.Tensor) -> int:
    """The address of a decode step's (1,) int64 position tensor, which the kernels read (and check)."""
    if pos.dtype != torch.int64 or pos.numel() != 1 or pos.device.type != "cpu":
        raise ValueError("a decode step's position is a (1,) int64 CPU tensor")
    return pos.data_ptr()
