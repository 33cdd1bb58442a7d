"""Weight-only quantization: fewer bytes read per decoded token.

Decoding one token reads every weight once, so its speed is set by bytes per token (and, for small
models whose weights fit in the CPU's cache, by how fast the kernels run). Two formats:

- int8: one scale per output channel, PyTorch's `torch._weight_int8pack_mm` (bfloat16 activations);
  a quarter of float32's bytes.
- int4: groups of 32 weights along the input, each with a scale and a minimum (GGUF's Q4_1 form); an
  eighth of float32's bytes. On llmgen's own kernel where it runs (kernels/: int8 activations, AVX-512 or
  AVX2), else on PyTorch's `torch._weight_int4pack_mm_for_cpu` (bfloat16 activations). GGUF Q4_0/Q4_1
  weights are packed straight from their blocks (weights/gguf_format.py), without a detour through float32.

Quantizing also fuses the projections a model declares in its `FUSIONS` (q/k/v, gate/up): one matmul
instead of three costs one kernel launch instead of three, which matters at ~100 tokens/s.
The measured agreement with float32 is in tests/test_quantize.py and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from llmgen import kernels
from llmgen.weights.memory import return_freed_memory

QUANTIZATIONS = ("auto", "none", "int8", "int4")
INT4_GROUP = 32  # weights per scale/minimum pair, as in GGUF's 4-bit blocks
INT4_ROWS = 16  # the int4 packing wants the output size to be a multiple of this
ROW_CHUNK = 4096  # rows quantized at a time, so that float temporaries stay small
STORED_HEAD_ROWS = 8192  # a stored 8-bit head this large gets a 4-bit first pass (StoredHead)


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 (out, in) and a bfloat16 scale per output row."""

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


@dataclass
class SuperBlockScales:
    """GGUF Q4_K's scales as stored, in two levels: per group of 32 weights a 6-bit scale `sc` and minimum
    `m`, per 256 weights (8 groups) fp16 factors: scale = d * sc, minimum = -dmin * m. Packed as they are,
    they cost the kernel 0.625 bits a weight instead of the 1 bit of an fp16 scale and minimum per group."""

    sc: torch.Tensor  # (out, in // 32) uint8, 0..63
    m: torch.Tensor  # (out, in // 32) uint8, 0..63
    d: torch.Tensor  # (out, in // 256) float16
    dmin: torch.Tensor  # (out, in // 256) float16

    def rows(self, first: int, stop: int) -> SuperBlockScales:
        return SuperBlockScales(*(t[first:stop] for t in (self.sc, self.m, self.d, self.dmin)))

    @classmethod
    def cat(cls, parts: list[SuperBlockScales]) -> SuperBlockScales:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("sc", "m", "d", "dmin")))


@dataclass
class Int4Groups:
    """4-bit weights before packing: w[n, k] = q[n, k] * scale[n, k // 32] + minimum[n, k // 32]."""

    q: torch.Tensor  # (out, in) uint8, values 0..15
    scale: torch.Tensor  # (out, in // 32) float32
    minimum: torch.Tensor  # (out, in // 32) float32
    levels: SuperBlockScales | None = None  # the same scale and minimum as Q4_K stores them, when it did

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @classmethod
    def from_float(cls, weight: torch.Tensor, symmetric: bool = False) -> Int4Groups:
        """Round each group of 32 onto 16 levels from its minimum to its maximum (llama.cpp's Q4_1 rule), or
        with `symmetric` onto 16 levels around zero, the largest magnitude at level 0 (its Q4_0 rule: no
        minimum is stored, 4.5 bits a weight instead of 5).

        ROW_CHUNK rows at a time: the float temporaries of a whole 128k-row head would be gigabytes."""
        out_features, in_features = weight.shape
        q = torch.empty(out_features, in_features, dtype=torch.uint8)
        scale = torch.empty(out_features, in_features // INT4_GROUP)
        minimum = torch.empty_like(scale)
        for first in range(0, out_features, ROW_CHUNK):
            rows = slice(first, first + ROW_CHUNK)
            groups = weight[rows].detach().float().reshape(-1, in_features // INT4_GROUP, INT4_GROUP)
            if symmetric:
                extreme = groups.gather(-1, groups.abs().argmax(-1, keepdim=True))[..., 0]  # signed
                # fp16 now: the kernel stores the scale in fp16, and its minimum must stay -8 * scale exactly
                step = (extreme / -8).half().float()
                low = -8 * step
            else:
                low, high = groups.aminmax(dim=-1)  # (rows, in // 32) each
                step = (high - low) / 15
            inverse = torch.where(step != 0, 1 / step, 0.0)
            levels = (groups - low[..., None]).mul_(inverse[..., None]).round_().clamp_(0, 15)
            q[rows], scale[rows], minimum[rows] = levels.reshape(-1, in_features), step, low
        return cls(q, scale, minimum)

    @classmethod
    def cat(cls, parts: list[Int4Groups]) -> Int4Groups:
        """Stack along the output dimension: one matmul computes all parts' outputs side by side (parts
        with two-level scales or none: see _format)."""
        levels = None if parts[0].levels is None else SuperBlockScales.cat([p.levels for p in parts])
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "scale", "minimum")), levels)

    def dequantize(self) -> torch.Tensor:
        scale = self.scale.repeat_interleave(INT4_GROUP, dim=1)
        return self.q.float() * scale + self.minimum.repeat_interleave(INT4_GROUP, dim=1)  # (out, in)


    def rows(self, first: int, stop: int) -> Int4Groups:
        levels = None if self.levels is None else self.levels.rows(first, stop)
        return Int4Groups(self.q[first:stop], self.scale[first:stop], self.minimum[first:stop], levels)


@dataclass
class Int8Groups:
    """8-bit weights in groups: w[n, k] = q[n, k] * scale[n, k // group] (+ minimum[n, k // group]): GGUF's
    5-, 6- and 8-bit block types, and its 2- and 3-bit k-quants, as stored (weights/gguf_blocks.py)."""

    q: torch.Tensor  # (out, in) int8
    scale: torch.Tensor  # (out, in // group) float32
    minimum: torch.Tensor | None  # like scale, or None
    group: int  # 16 or 32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @classmethod
    def cat(cls, parts: list[Int8Groups]) -> Int8Groups:
        """Stack along the output dimension (parts of one group size, all with minimums or none)."""
        minimum = None if parts[0].minimum is None else torch.cat([p.minimum for p in parts])
        return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), minimum, parts[0].group)

    def rows(self, first: int, stop: int) -> Int8Groups:
        minimum = None if self.minimum is None else self.minimum[first:stop]
        return Int8Groups(self.q[first:stop], self.scale[first:stop], minimum, self.group)

    def dequantize(self) -> torch.Tensor:
        w = self.q.float() * self.scale.repeat_interleave(self.group, dim=1)
        return w if self.minimum is None else w + self.minimum.repeat_interleave(self.group, dim=1)  # (out, in)


@dataclass
class Q6KBlocks:
    """GGUF Q6_K weights as the file stores them, for the kernel that reads them so (kernels.PackedQ6K):
    each row in_features / 256 blocks of 210 bytes, 6.56 bits a weight (as int8 groups, 9)."""

    blocks: torch.Tensor  # (out, in / 256 * 210) uint8
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.blocks.shape[0], self.in_features)

    @classmethod
    def cat(cls, parts: list[Q6KBlocks]) -> Q6KBlocks:
        return cls(torch.cat([p.blocks for p in parts]), parts[0].in_features)

    def rows(self, first: int, stop: int) -> Q6KBlocks:
        return Q6KBlocks(self.blocks[first:stop], self.in_features)

    def dequantize(self) -> torch.Tensor:
        from llmgen.weights.gguf_blocks import split

        n = self.blocks.shape[0]
        return split("Q6_K", self.blocks.reshape(-1, Q6_K_BLOCK_BYTES)).dequantize().view(n, self.in_features)


Q6_K_BLOCK_BYTES = 210


class DeferredGroups:
    """Int4Groups or Int8Groups read from a file only when used: quantize_model builds one layer at a time
    and drops what it read, and a large matrix (a 128k-row head) is read and packed ROW_CHUNK rows at a
    time, so a model's weights are never all unpacked at once."""

    def __init__(self, shape: tuple[int, int], kind: type, read_rows: Callable[[int, int], Int4Groups | Int8Groups],
                 blocks: tuple[str, Callable[[int, int], torch.Tensor]] | None = None,
                 source: tuple[str, Callable[[int, int], torch.Tensor]] | None = None):
        self.shape, self.kind, self._read_rows = shape, kind, read_rows  # kind: Int4Groups, Int8Groups, Q6KBlocks
        # GGUF Q4_0/Q4_1 rows as stored: (block type, read_bytes(first, stop) -> (n, row bytes) uint8), which
        # the kernels' layout is made from in one pass (kernels.pack_q4_blocks); None for other types.
        self.blocks = blocks
        # Any GGUF block type's rows as stored, the same pair: what a tensor-parallel shard of columns is cut
        # from (parallel/shard.py); None for rows made some other way.
        self.source = source

    @classmethod
    def cat(cls, parts: list[DeferredGroups]) -> DeferredGroups:
        """Parts of one block type on one input, stacked along the output (a fused q/k/v or gate/up),
        still unread."""
        bounds, first = [], 0
        for part in parts:
            bounds.append((first, first + part.shape[0], part))
            first += part.shape[0]

        def pieces(start: int, stop: int):  # (part, its first row, its stop row) covering start..stop
            return [(p, max(start, lo) - lo, min(stop, hi) - lo) for lo, hi, p in bounds if lo < stop and hi > start]

        def read_rows(start: int, stop: int):
            return parts[0].kind.cat([p.rows(a, b) for p, a, b in pieces(start, stop)])

        blocks = None
        if all(p.blocks is not None and p.blocks[0] == parts[0].blocks[0] for p in parts):
            blocks = (parts[0].blocks[0], lambda start, stop: torch.cat([p.blocks[1](a, b) for p, a, b in pieces(start, stop)]))
        return cls((first, parts[0].shape[1]), parts[0].kind, read_rows, blocks)

    def read(self) -> Int4Groups | Int8Groups:
        return self._read_rows(0, self.shape[0])

    def rows(self, first: int, stop: int) -> Int4Groups | Int8Groups:
        return self._read_rows(first, min(stop, self.shape[0]))


StoredGroups = Int4Groups | Int8Groups | Q6KBlocks | DeferredGroups


def select_rows(groups, index: torch.Tensor):
    """Int4Groups, Int8Groups or Q6KBlocks (or Int4Groups' SuperBlockScales) with only the rows at index,
    in that order: each tensor field indexed along its first dimension."""
    values = {}
    for f in dataclasses.fields(groups):
        value = getattr(groups, f.name)
        values[f.name] = (value[index] if isinstance(value, torch.Tensor)
                          else select_rows(value, index) if dataclasses.is_dataclass(value) else value)
    return type(groups)(**values)


def _resolved(groups: StoredGroups) -> Int4Groups | Int8Groups:
    return groups.read() if isinstance(groups, DeferredGroups) else groups


def _format(groups: Int4Groups | Int8Groups | DeferredGroups) -> tuple:
    """What parts must share to be fused into one matrix."""
    if isinstance(groups, DeferredGroups):  # Q4_0/Q4_1 as stored: one-level int4
        return ("int4", False, groups.blocks[0])
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
    return module.as_function()


def int4_fits(weight_shape: tuple[int, ...]) -> bool:
    """The int4 kernel needs whole groups along the input."""
    return len(weight_shape) == 2 and weight_shape[1] % INT4_GROUP == 0


class KernelLinear(nn.Module):
    """A layer that llmgen's kernels can run (own_kernel): kernel_parts are its packed matrices."""

    own_kernel: bool
    _matmul: kernels.QuantMatmul | None = None

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

    def __init__(self, groups: Int4Groups, bias: torch.Tensor | None = None, own_kernel: bool = True):
        super().__init__()
        out_features, in_features = groups.shape
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.own_kernel = own_kernel and kernels.library() is not None
        if self.own_kernel:
            if isinstance(groups, DeferredGroups) and groups.blocks is not None:  # Q4_0/Q4_1: from the bytes
                kind, read_bytes = groups.blocks
                tensors = packed_in_chunks(groups, packed_rows=lambda first, stop: kernels.pack_q4_blocks(
                    read_bytes(first, stop), in_features, kind))
            else:
                tensors = packed_in_chunks(groups, lambda g: kernels.pack_int4(g.q, g.scale, g.minimum, g.levels))
            if tensors["super_scales"] is None and torch.equal(tensors["minimums"], tensors["scales"] * -8):
                tensors["minimums"] = None  # Q4_0: minimums implicit
            for name, tensor in tensors.items():
                self.register_buffer(name, tensor)
            return
        groups = _resolved(groups)
        padded = -out_features % INT4_ROWS  # zero rows, sliced off the output again
        q, scale, minimum = (F.pad(t, (0, 0, 0, padded)) for t in (groups.q, groups.scale, groups.minimum))
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

    def __init__(self, groups: Int8Groups | DeferredGroups, bias: torch.Tensor | None = None, own_kernel: bool = True):
        super().__init__()
        out_features, in_features = groups.shape
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.own_kernel = own_kernel and kernels.library() is not None
        tensors = packed_in_chunks(groups, lambda g: kernels.pack_int8(g.q, g.scale, g.minimum, g.group))
        self.group = tensors["packed"].shape[1] // tensors["scales"].shape[1]  # padded_in / groups
        self.register_buffer("packed", tensors["packed"])  # (out, padded_in) int8
        self.register_buffer("scales", tensors["scales"])  # (out, padded_in / group) fp16
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

    def __init__(self, groups: Q6KBlocks | DeferredGroups, bias: torch.Tensor | None = None, own_kernel: bool = True):
        super().__init__()
        out_features, in_features = groups.shape
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.own_kernel = own_kernel and kernels.library() is not None
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


def packed_in_chunks(groups: Int4Groups | Int8Groups | DeferredGroups, pack: Callable | None = None,
                     packed_rows: Callable[[int, int], kernels.Packed] | None = None) -> dict[str, torch.Tensor | None]:
    """The tensors of a whole packed matrix (kernels.PackedInt4/PackedInt8's TENSORS), packed ROW_CHUNK rows
    at a time into tensors allocated once: a 128k-row head is never held twice, nor unpacked whole. Each
    chunk is pack(its groups), or packed_rows(first, stop) made another way (from a file's bytes). For the
    int4 layout a chunk without minimums (Q4_0 form) gets its implicit -8 * scale."""
    out_features = groups.shape[0]
    buffers = None
    for first in range(0, out_features, ROW_CHUNK):
        stop = min(first + ROW_CHUNK, out_features)
        part = packed_rows(first, stop) if packed_rows is not None else pack(groups.rows(first, stop))
        fields = {name: getattr(part, name) for name in part.TENSORS}
        if isinstance(part, kernels.PackedInt4) and fields["minimums"] is None:
            fields["minimums"] = part.scales * -8
        if buffers is None:
            buffers = {name: None if f is None else f.new_empty((out_features, *f.shape[1:]))
                       for name, f in fields.items()}
        for name, field in fields.items():
            if buffers[name] is not None:
                buffers[name][first:first + field.shape[0]] = field
    return buffers


class StoredHead(nn.Module):
    """A GGUF's 5-to-8-bit output head (or tied embedding, e.g. Q6_K or Q8_0): logits for the whole
    vocabulary from a 4-bit copy, then the `top` largest recomputed from the stored weights.

    The head is the largest matrix a decode step reads (a Llama-3.2-1B's 128k x 2048 Q6_K head is a third
    of its bytes per token) and decoding is memory-bound: the 4-bit copy reads 0.56 bytes a weight instead
    of 0.82 (Q6_K) or 1.06 (Q8_0), and the candidates come out exactly as stored (see Int4Head for the same idea from float).
    """

    def __init__(self, groups: Int8Groups | Q6KBlocks | DeferredGroups, top: int = 64, own_kernel: bool = True):
        super().__init__()
        self.fine = stored_linear(groups, own_kernel=False)  # its rows only: never a whole matmul
        out_features = self.fine.out_features
        # Symmetric 4 bits (4.5 bits a weight): only the ranking of the top candidates depends on them.
        coarse = DeferredGroups(groups.shape, Int4Groups, lambda first, stop: Int4Groups.from_float(
            self.fine.dequantized_rows(slice(first, stop)), symmetric=True))
        self.coarse = Int4Linear(coarse, own_kernel=own_kernel)
        self.top = min(top, out_features)
        self.in_features, self.out_features = self.fine.in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.coarse(x).float()  # (..., vocab)
        top = top_indices(logits, self.top)  # (..., top)
        rows = self.fine.dequantized_rows(top.reshape(-1)).view(*top.shape, self.in_features)  # (..., top, in)
        exact = (rows @ x.float()[..., :, None])[..., 0]  # (..., top)
        return logits.scatter_(-1, top, exact)


class Bf16Linear(KernelLinear):
    """y = x W^T (+ b) with W in bfloat16 as the checkpoint stores it, used in place (a memory-mapped file's
    pages: nothing is copied or converted at load), on llmgen's bf16 kernel where it runs (x in float32,
    float32 out), else F.linear over ROW_CHUNK rows widened to float32 at a time. Several matrices on one
    input (a fused q/k/v, gate/up) are kept as parts and run in one call."""

    def __init__(self, weights: list[torch.Tensor], bias: torch.Tensor | None = None, own_kernel: bool = True):
        super().__init__()
        self.n_parts = len(weights)
        for i, weight in enumerate(weights):
            self.register_buffer(f"weight{i}", weight.detach())  # (out_i, in) bfloat16
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = weights[0].shape[1], sum(w.shape[0] for w in weights)
        self.own_kernel = own_kernel and kernels.library() is not None

    def parts(self) -> list[torch.Tensor]:
        return [getattr(self, f"weight{i}") for i in range(self.n_parts)]

    def kernel_parts(self) -> list[tuple[kernels.Packed, torch.Tensor | None]]:
        parts, first = [], 0
        for weight in self.parts():  # each part's slice of the bias
            bias = None if self.bias is None else self.bias[first:first + weight.shape[0]]
            parts.append((kernels.PackedBf16(weight), bias))
            first += weight.shape[0]
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.own_kernel:
            return self.kernel_forward(x)
        rows = [weight[first:first + ROW_CHUNK] for weight in self.parts() for first in range(0, weight.shape[0], ROW_CHUNK)]
        y = torch.cat([F.linear(x.float(), chunk.float()) for chunk in rows], dim=-1)
        return (y if self.bias is None else y + self.bias).to(x.dtype)

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.kernel_matmul() if self.own_kernel else self.forward


class Bf16Embedding(nn.Module):
    """An embedding table kept in bfloat16 as stored, its rows looked up and widened to float32."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach())  # (vocab, dim) bfloat16

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()


def fused_bias(parts: list[nn.Linear]) -> torch.Tensor | None:
    """Parts' biases (Qwen2's q, k, v) side by side, zeros for a part without one; None when none has one."""
    if all(p.bias is None for p in parts):
        return None
    return torch.cat([p.bias.detach().float() if p.bias is not None else torch.zeros(p.out_features) for p in parts])


def bf16_on_kernels(model: nn.Module, own_kernels: bool = True) -> nn.Module:
    """A LLaMA-family model whose matrices are bfloat16 (a bf16 checkpoint, memory-mapped) made to decode on
    llmgen's bf16 kernel: every linear layer a Bf16Linear over its own weights (q/k/v and gate/up fused as
    parts, the head too, a tied one over the embedding's table), the embedding a Bf16Embedding, and
    everything else (norms, biases) float32, so activations and KV caches are float32. The weights are
    not copied: peak memory stays the checkpoint's pages plus the caches."""
    for module in list(model.modules()):
        for fused_name, part_names in getattr(module, "FUSIONS", {}).items():
            parts = [getattr(module, n) for n in part_names]
            if any(not isinstance(p, nn.Linear) for p in parts):
                continue
            bias = fused_bias(parts)
            setattr(module, fused_name, Bf16Linear([p.weight for p in parts], bias, own_kernels))
            for n in part_names:
                setattr(module, n, None)
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Bf16Linear([child.weight], child.bias, own_kernels))
    embedding = model.tok_embeddings
    model.tok_embeddings = Bf16Embedding(embedding.weight)
    if model.output is None:  # tied: the head reads the embedding's table
        model.output = Bf16Linear([embedding.weight], None, own_kernels)
    kept = {id(m) for m in model.modules() if isinstance(m, (Bf16Linear, Bf16Embedding))}
    for module in model.modules():
        if id(module) in kept:
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor.dtype in (torch.bfloat16, torch.float16):
                tensor.data = tensor.data.float()
    return model


class SideBySide(KernelLinear):
    """Linear layers on one input with their outputs concatenated: a fused q/k/v or gate/up whose parts
    are stored in different formats (a "Q4_K_M" block's v is Q6_K, its q and k Q4_K). On the kernels the
    parts run in one call."""

    def __init__(self, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.own_kernel = all(getattr(p, "own_kernel", False) for p in parts)
        self.in_features, self.out_features = parts[0].in_features, sum(p.out_features for p in parts)

    def kernel_parts(self) -> list[tuple[kernels.Packed, torch.Tensor | None]]:
        return [part for p in self.parts for part in p.kernel_parts()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.own_kernel:
            return self.kernel_forward(x)
        return torch.cat([p(x) for p in self.parts], dim=-1)

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.own_kernel:
            return self.kernel_matmul()
        functions = [linear_function(p) for p in self.parts]
        return lambda x: torch.cat([f(x) for f in functions], dim=-1)


def stored_linear(groups: StoredGroups, bias: torch.Tensor | None = None, own_kernel: bool = True) -> nn.Module:
    """The layer for weights kept as stored: Int4Linear for 4-bit groups, Int8GroupsLinear for 8-bit,
    Q6KLinear for Q6_K blocks."""
    kind = groups.kind if isinstance(groups, DeferredGroups) else type(groups)
    if isinstance(groups, DeferredGroups) and not own_kernel and kind is Int4Groups:
        groups = groups.read()  # PyTorch's int4 packing takes the whole matrix
    return {Int4Groups: Int4Linear, Int8Groups: Int8GroupsLinear, Q6KBlocks: Q6KLinear}[kind](groups, bias, own_kernel)


class Int4Head(nn.Module):
    """The output head: logits for the whole vocabulary from 4-bit weights, then the `top` largest
    recomputed from 8-bit rows.

    The head picks the token. Plain 4 bits cost SmolLM2 8 points of top-1 agreement with float32 and
    9% perplexity; 8 bits cost nothing but read twice the bytes (a fifth of a decode step). Recomputing
    the top 64 keeps the candidates exact to 8 bits (100% agreement, perplexity within 1%; see
    tests/test_quantize.py) for 4 bits a weight plus 64 rows.
    """

    def __init__(self, weight: torch.Tensor, top: int = 64, own_kernel: bool = True):
        super().__init__()
        self.coarse = Int4Linear(Int4Groups.from_float(weight), own_kernel=own_kernel)
        fine = Int8Linear(weight)
        self.register_buffer("fine_rows", fine.weight)  # (vocab, in) int8
        self.register_buffer("fine_scales", fine.scales.float())  # (vocab,)
        self.top = min(top, weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.coarse(x).float()  # (..., vocab)
        top = top_indices(logits, self.top)  # (..., top)
        rows = self.fine_rows[top].float() * self.fine_scales[top][..., None]  # (..., top, in)
        exact = (rows @ x.float()[..., :, None])[..., 0]  # (..., top)
        return logits.scatter_(-1, top, exact)


def top_indices(scores: torch.Tensor, k: int, block: int = 64) -> torch.Tensor:
    """The indices of the k largest scores along the last dim (as a set; in no particular order).

    Found among the k blocks of `block` scores with the largest maxima: the block holding one of the k
    largest has a maximum at least as large, and fewer than k other blocks can have a larger one.
    PyTorch's CPU topk over a 49k vocabulary takes ~175 us; this ~75 us, 1% of a SmolLM2 decode step.
    """
    n = scores.size(-1)
    if n % block or n // block < k:
        return scores.topk(k, dim=-1).indices
    blocks = scores.unflatten(-1, (n // block, block))  # (..., n_blocks, block)
    best = blocks.amax(dim=-1).topk(k, dim=-1).indices  # (..., k) block numbers
    candidates = blocks.gather(-2, best[..., None].expand(*best.shape, block)).flatten(-2)  # (..., k block)
    positions = (best[..., None] * block + torch.arange(block, device=scores.device)).flatten(-2)
    return positions.gather(-1, candidates.topk(k, dim=-1).indices)


def quantize_model(model: nn.Module, kind: str, stored: dict[str, StoredGroups | nn.Module] | None = None,
                   own_kernels: bool = True) -> nn.Module:
    """Swap linear layers for quantized ones in place (`kind` is "int8" or "int4").

    stored: weights kept as a file stores them (a GGUF's quantized blocks), by parameter name: Int4Groups,
    Int8Groups or DeferredGroups, whose nn.Linear modules the loader left empty; and an embedding kept in
    its blocks under the embedding's weight name (an nn.Module, weights/gguf_blocks.BlockEmbedding). The
    dict is consumed: each entry goes as its layer is built, so groups read from a file are unpacked and
    freed one layer at a time. Everything else is quantized from its float weight.
    own_kernels: layers use llmgen's kernels where they run (kernels/); False keeps PyTorch's int4
    kernel, which torch.compile can trace (decode/compiled.py).
    """
    stored = stored if stored is not None else {}
    embedding_name = "tok_embeddings" if hasattr(model, "tok_embeddings") else "wte"
    if isinstance(stored_embedding := stored.pop(f"{embedding_name}.weight", None), nn.Module):
        setattr(model, embedding_name, stored_embedding)
        if model.output is None:  # tied: the head is the embedding's matrix, as stored
            model.output = stored_head(stored_embedding.groups(), own_kernels)
    if "output.weight" in stored:
        model.output = stored_head(stored.pop("output.weight"), own_kernels)
    return_freed_memory()
    head = model.output if model.output is not None else getattr(model, embedding_name)
    if isinstance(head, (nn.Linear, nn.Embedding)) and getattr(head, "bias", None) is None:
        fits = kind == "int4" and int4_fits(tuple(head.weight.shape))
        model.output = Int4Head(head.weight, own_kernel=own_kernels) if fits else Int8Linear(head.weight)

    def stored_or_int4(name: str, linear: nn.Linear) -> StoredGroups | None:
        if f"{name}.weight" in stored:
            return stored.pop(f"{name}.weight")
        return Int4Groups.from_float(linear.weight) if int4_fits(tuple(linear.weight.shape)) else None

    for prefix, module in list(model.named_modules()):
        prefix = f"{prefix}." if prefix else ""
        # Fused projections first: they need the parts' groups before packing.
        for fused_name, part_names in getattr(module, "FUSIONS", {}).items():
            parts = [getattr(module, n) for n in part_names]
            if any(p is None for p in parts) or kind != "int4":
                continue
            bias = fused_bias(parts)
            groups = [stored_or_int4(f"{prefix}{n}", p) for n, p in zip(part_names, parts)]
            if any(g is None for g in groups):  # a part that is neither stored nor int4-shaped: no fusion
                for n, g, p in zip(part_names, groups, parts):
                    if g is not None:
                        setattr(module, n, stored_linear(g, p.bias, own_kernel=own_kernels))
                continue
            setattr(module, fused_name, fused_linear([g if _q4_blocks(g) else _resolved(g) for g in groups], own_kernels, bias))
            for n in part_names:
                setattr(module, n, None)
            return_freed_memory()
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            name = f"{prefix}{child_name}"
            if f"{name}.weight" in stored:
                setattr(module, child_name, stored_linear(stored.pop(f"{name}.weight"), child.bias, own_kernels))
            elif kind == "int8":
                setattr(module, child_name, Int8Linear(child.weight, child.bias))
            elif (groups := stored_or_int4(name, child)) is not None:
                setattr(module, child_name, Int4Linear(groups, child.bias, own_kernels))
    if stored:
        raise ValueError(f"stored weights left without a linear layer: {sorted(stored)[:3]}")
    return model


def _q4_blocks(groups: StoredGroups) -> bool:
    """Q4_0/Q4_1 rows still in the file, which the kernels' layout is made from directly."""
    return isinstance(groups, DeferredGroups) and groups.blocks is not None and kernels.library() is not None


def stored_head(groups: StoredGroups, own_kernels: bool) -> nn.Module:
    """A head kept as stored: as is when 4-bit, else a StoredHead when large enough to matter."""
    kind = groups.kind if isinstance(groups, DeferredGroups) else type(groups)
    if kind in (Int8Groups, Q6KBlocks) and groups.shape[0] >= STORED_HEAD_ROWS and int4_fits(groups.shape):
        return StoredHead(groups, own_kernel=own_kernels)
    return stored_linear(groups, own_kernel=own_kernels)


def fused_linear(groups: list[Int4Groups | Int8Groups], own_kernels: bool, bias: torch.Tensor | None = None
                 ) -> nn.Module:
    """Parts on one input as one layer: one matrix where their formats agree, else side by side (each run
    of parts in one format fused). bias: the parts' biases concatenated, or None."""
    runs: list[list[Int4Groups | Int8Groups]] = []
    for g in groups:
        if runs and _format(runs[-1][0]) == _format(g):
            runs[-1].append(g)
        else:
            runs.append([g])
    layers, first = [], 0
    for run in runs:
        rows = sum(g.shape[0] for g in run)
        run_bias = None if bias is None else bias[first:first + rows]
        cat = DeferredGroups.cat if isinstance(run[0], DeferredGroups) else type(run[0]).cat
        layers.append(stored_linear(cat(run) if len(run) > 1 else run[0], run_bias, own_kernels))
        first += rows
    return layers[0] if len(layers) == 1 else SideBySide(layers)
