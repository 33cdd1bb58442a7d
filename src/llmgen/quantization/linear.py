"""Linear layers over quantized weights, on llmgen's kernels (kernels/) where they run, else on PyTorch's
int4/int8 kernels: what a decode step spends its time in.

Decoding one token reads every weight once, so its speed is set by bytes per token (and, for small
models whose weights fit in the CPU's cache, by how fast the kernels run). Two formats:

- int8: one scale per output channel, PyTorch's `torch._weight_int8pack_mm` (bfloat16 activations);
  a quarter of float32's bytes. Or int8 in groups of 16 or 32 (GGUF's 5-8-bit types, as stored).
- int4: groups of 32 weights along the input, each with a scale and a minimum (GGUF's Q4_1 form); an
  eighth of float32's bytes. On llmgen's own kernel where it runs (kernels/: int8 activations, AVX-512 or
  AVX2), else on PyTorch's `torch._weight_int4pack_mm_for_cpu` (bfloat16 activations). GGUF Q4_0/Q4_1
  weights are packed straight from their blocks, without a detour through float32.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from llmgen import kernels
from llmgen.weights.stored import (
    INT4_GROUP,
    ROW_CHUNK,
    DeferredGroups,
    Int4Groups,
    Int8Groups,
    Q6KBlocks,
    StoredGroups,
    resolved,
)

INT4_ROWS = 16  # the int4 packing wants the output size to be a multiple of this


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 (out, in) and a bfloat16 scale per output row."""

    weight: torch.Tensor  # (out, in) int8
    scales: torch.Tensor  # (out,) bfloat16

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        weight = weight.detach()
        scales = torch.cat([w.float().abs().amax(dim=1) for w in weight.split(ROW_CHUNK)]).clamp(min=1e-8) / 127
        rows = [(w.float() / s[:, None]).round_().clamp_(-127, 127).to(torch.int8)  # a chunk of rows at a time
                for w, s in zip(weight.split(ROW_CHUNK), scales.split(ROW_CHUNK))]
        self.register_buffer("weight", torch.cat(rows))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1].numel()
        if rows == 1:
            # One-token decode: PyTorch's int8 GEMV kernel (bfloat16 activations) reads 1 byte per weight.
            y = torch._weight_int8pack_mm(x.reshape(1, -1).to(torch.bfloat16), self.weight, self.scales)
            y = y.view(*x.shape[:-1], self.out_features)
        else:
            # Prefill is compute-bound; the int8 kernel is slow there, so dequantize for the dense GEMM.
            y = F.linear(x, self.weight.to(x.dtype) * self.scales.to(x.dtype)[:, None])
        return y if self.bias is None else y + self.bias

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """(1, in) -> (1, out) for one-token decode steps, with the attribute lookups done once."""
        weight, scales, bias = self.weight, self.scales, self.bias
        int8_mm = torch._weight_int8pack_mm

        def matmul(x: torch.Tensor) -> torch.Tensor:
            y = int8_mm(x.to(torch.bfloat16), weight, scales)
            return y if bias is None else y + bias

        return matmul


def fusion_format(groups: StoredGroups) -> tuple:
    """What parts must share to be fused into one matrix."""
    if isinstance(groups, DeferredGroups):  # Q4_0/Q4_1 as stored: one-level int4
        return ("int4", False, None if groups.blocks is None else groups.blocks[0])
    if isinstance(groups, Int4Groups):
        return ("int4", groups.levels is not None)
    if isinstance(groups, Q6KBlocks):
        return ("q6_k",)
    return ("int8", groups.group, groups.minimum is not None)


def linear_function(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Any linear layer here as a plain function of a (1, in) input, for decode steps: an nn.Module
    attribute lookup costs about a microsecond, and a step makes hundreds of them otherwise."""
    if isinstance(module, nn.Linear):
        return partial(F.linear, weight=module.weight, bias=module.bias)
    # Every layer of quantization/ and parallel/ has one.
    as_function = cast(Callable[[], Callable[[torch.Tensor], torch.Tensor]], module.as_function)
    return as_function()


def int4_fits(weight_shape: tuple[int, ...]) -> bool:
    """The int4 kernel needs whole groups along the input."""
    return len(weight_shape) == 2 and weight_shape[1] % INT4_GROUP == 0


class KernelLinear(nn.Module):
    """A layer that llmgen's kernels can run (own_kernel): kernel_parts are its packed matrices."""

    own_kernel: bool
    in_features: int
    out_features: int
    bias: torch.Tensor | None
    _matmul: kernels.QuantMatmul | None = None

    def take_shape(self, shape: tuple[int, int], bias: torch.Tensor | None, own_kernel: bool) -> tuple[int, int]:
        """Set what every such layer has (its (out, in) shape, bias, whether the kernels run it); -> the shape."""
        self.out_features, self.in_features = shape
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.own_kernel = own_kernel and kernels.library() is not None
        return shape

    def kernel_parts(self) -> list[tuple[kernels.Packed, torch.Tensor | None]]:
        raise NotImplementedError

    def kernel_matmul(self, norm_weight: torch.Tensor | None = None, norm_eps: float = 0.0,
                      gated: bool = False, activation: str = "silu") -> kernels.QuantMatmul:
        """This layer as a call into llmgen's kernels (own_kernel only), optionally with the RMSNorm or
        SwiGLU/GeGLU before it done in the same call (see kernels.QuantMatmul)."""
        return kernels.QuantMatmul(self.kernel_parts(), norm_weight, norm_eps, gated, activation)

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out) on the kernels: float32, cast back to a bfloat16 x's dtype."""
        if self._matmul is None or self._matmul.weights.packed is not self.kernel_parts()[0][0].packed:
            self._matmul = self.kernel_matmul()  # built once per weights
        y = self._matmul(x.reshape(-1, self.in_features))
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


class Int4Linear(KernelLinear):
    """y = x W^T (+ b) with W in 4-bit groups, computed by llmgen's own kernel where it runs
    (kernels/: int8 activations, float32 out), else by PyTorch's int4 kernel (bfloat16)."""

    # On llmgen's kernel: kernels.PackedInt4's tensors. On PyTorch's: packed and scales_and_zeros.
    packed: torch.Tensor
    scales: torch.Tensor
    minimums: torch.Tensor | None
    super_scales: torch.Tensor | None
    super_minimums: torch.Tensor | None
    scales_and_zeros: torch.Tensor

    def __init__(self, groups: Int4Groups | DeferredGroups, bias: torch.Tensor | None = None, own_kernel: bool = True):
        super().__init__()
        out_features, in_features = self.take_shape(groups.shape, bias, own_kernel)
        if self.own_kernel:
            if isinstance(groups, DeferredGroups) and groups.blocks is not None:  # Q4_0/Q4_1: from the bytes
                kind, read_bytes = groups.blocks
                tensors = packed_in_chunks(groups, packed_rows=lambda first, stop: kernels.pack_q4_blocks(
                    read_bytes(first, stop), in_features, kind))
            else:
                tensors = packed_in_chunks(groups, lambda g: kernels.pack_int4(g.q, g.scale, g.minimum, g.levels))
            minimums, scales = tensors["minimums"], tensors["scales"]
            if (tensors["super_scales"] is None and minimums is not None and scales is not None
                    and torch.equal(minimums, scales * -8)):
                tensors["minimums"] = None  # Q4_0: minimums implicit
            for name, tensor in tensors.items():
                self.register_buffer(name, tensor)
            return
        read = resolved(groups)
        if not isinstance(read, Int4Groups):
            raise TypeError(f"Int4Linear takes 4-bit groups, not {type(read).__name__}")
        padded = -out_features % INT4_ROWS  # zero rows, sliced off the output again
        q, scale, minimum = (F.pad(t, (0, 0, 0, padded)) for t in (read.q, read.scale, read.minimum))
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q.int(), 1))
        # The kernel computes (q - 8) * scale + zero, so zero = minimum + 8 * scale.
        scales_and_zeros = torch.stack((scale, minimum + 8 * scale), dim=-1)  # (out, in // 32, 2)
        self.register_buffer("scales_and_zeros", scales_and_zeros.transpose(0, 1).contiguous().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out): float32 from llmgen's kernel (cast back to a bfloat16 x's dtype), and
        bfloat16 from PyTorch's, its own output: at ~100 tokens/s a cast per layer is worth saving, and
        the next op (a residual add, SwiGLU, the next int4 layer) takes it as is."""
        if self.own_kernel:
            return self.kernel_forward(x)
        x2d = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (rows, in)
        y = torch._weight_int4pack_mm_for_cpu(x2d, self.packed, INT4_GROUP, self.scales_and_zeros)
        if y.size(1) != self.out_features:
            y = y[:, :self.out_features]
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """(1, in) -> (1, out) for one-token decode steps, with the attribute lookups done once."""
        if self.own_kernel:
            return self.kernel_matmul()
        packed, scales_and_zeros, bias, out_features = self.packed, self.scales_and_zeros, self.bias, self.out_features
        padded = packed.size(0) != out_features
        int4_mm = torch._weight_int4pack_mm_for_cpu

        def matmul(x: torch.Tensor) -> torch.Tensor:
            y = int4_mm(x.to(torch.bfloat16), packed, INT4_GROUP, scales_and_zeros)
            y = y[:, :out_features] if padded else y
            return y if bias is None else y + bias

        return matmul

    def kernel_parts(self) -> list[tuple[kernels.Packed, torch.Tensor | None]]:
        weights = kernels.PackedInt4(self.packed, self.scales, self.minimums, self.in_features, self.super_scales,
                                     self.super_minimums)
        return [(weights, self.bias)]


class StoredRowsLinear(KernelLinear):
    """A KernelLinear whose weights PyTorch reads through dequantized_rows: without llmgen's kernels, W is
    dequantized ROW_CHUNK rows at a time for F.linear, never whole."""

    bias: torch.Tensor | None

    def dequantized_rows(self, rows: slice | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.own_kernel:
            return self.kernel_forward(x)
        y = torch.cat([F.linear(x.float(), self.dequantized_rows(slice(first, first + ROW_CHUNK)))
                       for first in range(0, self.out_features, ROW_CHUNK)], dim=-1)
        return (y if self.bias is None else y + self.bias).to(x.dtype)

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.kernel_matmul() if self.own_kernel else self.forward


class Int8GroupsLinear(StoredRowsLinear):
    """y = x W^T (+ b) with W as int8 in groups (Int8Groups: GGUF's 5-, 6- and 8-bit types as stored), on
    llmgen's int8 kernel where it runs, else dequantized ROW_CHUNK rows at a time for F.linear."""

    packed: torch.Tensor  # (out, padded_in) int8
    scales: torch.Tensor  # (out, padded_in / group) fp16
    minimums: torch.Tensor | None

    def __init__(self, groups: Int8Groups | DeferredGroups, bias: torch.Tensor | None = None, own_kernel: bool = True):
        super().__init__()
        out_features, in_features = self.take_shape(groups.shape, bias, own_kernel)
        tensors = packed_in_chunks(groups, lambda g: kernels.pack_int8(g.q, g.scale, g.minimum, g.group))
        packed, scales = tensors["packed"], tensors["scales"]
        assert packed is not None and scales is not None  # PackedInt8 always has both
        self.group = packed.shape[1] // scales.shape[1]  # padded_in / groups
        self.register_buffer("packed", packed)  # (out, padded_in) int8
        self.register_buffer("scales", scales)  # (out, padded_in / group) fp16
        self.register_buffer("minimums", tensors["minimums"])  # like scales, or None

    def kernel_parts(self) -> list[tuple[kernels.Packed, torch.Tensor | None]]:
        weights = kernels.PackedInt8(self.packed, self.scales, self.minimums, self.in_features, self.group)
        return [(weights, self.bias)]

    def dequantized_rows(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """Rows of W (a slice, or indices) in float32 (rows, in), from the stored integers and fp16 scales."""
        w = self.packed[rows].float() * self.scales[rows].float().repeat_interleave(self.group, dim=-1)
        if self.minimums is not None:
            w += self.minimums[rows].float().repeat_interleave(self.group, dim=-1)
        return w[..., :self.in_features]


class Q6KLinear(StoredRowsLinear):
    """y = x W^T (+ b) with W in Q6_K blocks as stored, on the kernel's Q6_K path where it runs, else
    dequantized ROW_CHUNK rows at a time for F.linear."""

    blocks: torch.Tensor  # (out, in / 256 * 210) uint8

    def __init__(self, groups: Q6KBlocks | DeferredGroups, bias: torch.Tensor | None = None, own_kernel: bool = True):
        super().__init__()
        out_features, in_features = self.take_shape(groups.shape, bias, own_kernel)
        # The kernel's arrangement of the blocks (kernels.pack_q6_k), or the file's for PyTorch.
        pack = kernels.pack_q6_k if self.own_kernel else kernels.PackedQ6K
        tensors = packed_in_chunks(groups, lambda g: pack(g.blocks, g.in_features))
        self.register_buffer("blocks", tensors["packed"])  # (out, in / 256 * 210) uint8

    def kernel_parts(self) -> list[tuple[kernels.Packed, torch.Tensor | None]]:
        return [(kernels.PackedQ6K(self.blocks, self.in_features), self.bias)]

    def dequantized_rows(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """Rows of W (a slice, or indices) in float32 (rows, in)."""
        blocks = self.blocks[rows].reshape(-1, self.blocks.shape[1])
        if self.own_kernel:
            blocks = kernels.unpack_q6_k(kernels.PackedQ6K(blocks, self.in_features))
        return Q6KBlocks(blocks, self.in_features).dequantize()


def packed_in_chunks(groups: StoredGroups, pack: Callable | None = None,
                     packed_rows: Callable[[int, int], kernels.Packed] | None = None) -> dict[str, torch.Tensor | None]:
    """The tensors of a whole packed matrix (kernels.PackedInt4/PackedInt8's TENSORS), packed ROW_CHUNK rows
    at a time into tensors allocated once: a 128k-row head is never held twice, nor unpacked whole. Each
    chunk is pack(its groups), or packed_rows(first, stop) made another way (from a file's bytes). For the
    int4 layout a chunk without minimums (Q4_0 form) gets its implicit -8 * scale."""
    if packed_rows is None:
        if pack is None:
            raise ValueError("packed_in_chunks takes pack or packed_rows")
        packed_rows = lambda first, stop: pack(groups.rows(first, stop))  # noqa: E731
    out_features = groups.shape[0]
    buffers: dict[str, torch.Tensor | None] = {}
    for first in range(0, out_features, ROW_CHUNK):
        part = packed_rows(first, min(first + ROW_CHUNK, out_features))
        fields = {name: getattr(part, name) for name in part.TENSORS}
        if isinstance(part, kernels.PackedInt4) and fields["minimums"] is None:
            fields["minimums"] = part.scales * -8
        if not buffers:
            buffers = {name: None if f is None else f.new_empty((out_features, *f.shape[1:]))
                       for name, f in fields.items()}
        for name, field in fields.items():
            if (buffer := buffers[name]) is not None:
                buffer[first:first + field.shape[0]] = field
    return buffers


class SideBySide(KernelLinear):
    """Linear layers on one input with their outputs concatenated: a fused q/k/v or gate/up whose parts
    are stored in different formats (a "Q4_K_M" block's v is Q6_K, its q and k Q4_K). On the kernels the
    parts run in one call."""

    def __init__(self, parts: list[KernelLinear]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.own_kernel = all(getattr(p, "own_kernel", False) for p in parts)
        self.in_features, self.out_features = parts[0].in_features, sum(p.out_features for p in parts)

    def kernel_parts(self) -> list[tuple[kernels.Packed, torch.Tensor | None]]:
        return [part for p in self.parts for part in cast(KernelLinear, p).kernel_parts()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.own_kernel:
            return self.kernel_forward(x)
        return torch.cat([p(x) for p in self.parts], dim=-1)

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.own_kernel:
            return self.kernel_matmul()
        functions = [linear_function(p) for p in self.parts]
        return lambda x: torch.cat([f(x) for f in functions], dim=-1)


def stored_linear(groups: StoredGroups, bias: torch.Tensor | None = None, own_kernel: bool = True) -> KernelLinear:
    """The layer for weights kept as stored: Int4Linear for 4-bit groups, Int8GroupsLinear for 8-bit,
    Q6KLinear for Q6_K blocks."""
    kind = groups.kind if isinstance(groups, DeferredGroups) else type(groups)
    if isinstance(groups, DeferredGroups) and not own_kernel and kind is Int4Groups:
        groups = groups.read()  # PyTorch's int4 packing takes the whole matrix
    if kind is Int4Groups:
        return Int4Linear(cast(Int4Groups | DeferredGroups, groups), bias, own_kernel)
    if kind is Int8Groups:
        return Int8GroupsLinear(cast(Int8Groups | DeferredGroups, groups), bias, own_kernel)
    return Q6KLinear(cast(Q6KBlocks | DeferredGroups, groups), bias, own_kernel)


def fused_bias(parts: list[nn.Linear]) -> torch.Tensor | None:
    """Parts' biases (Qwen2's q, k, v) side by side, zeros for a part without one; None when none has one."""
    if all(p.bias is None for p in parts):
        return None
    return torch.cat([p.bias.detach().float() if p.bias is not None else torch.zeros(p.out_features) for p in parts])
