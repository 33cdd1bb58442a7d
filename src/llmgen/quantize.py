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

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from llmgen import kernels

QUANTIZATIONS = ("auto", "none", "int8", "int4")
INT4_GROUP = 32  # weights per scale/minimum pair, as in GGUF's 4-bit blocks
INT4_ROWS = 16  # the int4 packing wants the output size to be a multiple of this
ROW_CHUNK = 4096  # rows quantized at a time, so that float temporaries stay small


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
class Int4Groups:
    """4-bit weights before packing: w[n, k] = q[n, k] * scale[n, k // 32] + minimum[n, k // 32]."""

    q: torch.Tensor  # (out, in) uint8, values 0..15
    scale: torch.Tensor  # (out, in // 32) float32
    minimum: torch.Tensor  # (out, in // 32) float32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int4Groups:
        """Round each group of 32 onto 16 levels from its minimum to its maximum (llama.cpp's Q4_1 rule).

        ROW_CHUNK rows at a time: the float temporaries of a whole 128k-row head would be gigabytes."""
        out_features, in_features = weight.shape
        q = torch.empty(out_features, in_features, dtype=torch.uint8)
        scale = torch.empty(out_features, in_features // INT4_GROUP)
        minimum = torch.empty_like(scale)
        for first in range(0, out_features, ROW_CHUNK):
            rows = slice(first, first + ROW_CHUNK)
            groups = weight[rows].detach().float().reshape(-1, in_features // INT4_GROUP, INT4_GROUP)
            low, high = groups.aminmax(dim=-1)  # (rows, in // 32) each
            step = (high - low) / 15
            inverse = torch.where(step > 0, 1 / step, 0.0)
            levels = (groups - low[..., None]).mul_(inverse[..., None]).round_().clamp_(0, 15)
            q[rows], scale[rows], minimum[rows] = levels.reshape(-1, in_features), step, low
        return cls(q, scale, minimum)

    @classmethod
    def cat(cls, parts: list[Int4Groups]) -> Int4Groups:
        """Stack along the output dimension: one matmul computes all parts' outputs side by side."""
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "scale", "minimum")))

    def dequantize(self) -> torch.Tensor:
        scale = self.scale.repeat_interleave(INT4_GROUP, dim=1)
        return self.q.float() * scale + self.minimum.repeat_interleave(INT4_GROUP, dim=1)  # (out, in)


class DeferredInt4Groups(Int4Groups):
    """Int4Groups read only when first used (a GGUF file's 4-bit matrix): quantize_model packs one layer at a
    time and drops it, so a model's weights are never all unpacked at once (a byte per weight)."""

    def __init__(self, shape: tuple[int, int], read: Callable[[], Int4Groups]):
        self._shape, self._read, self._groups = shape, read, None

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def _read_once(self) -> Int4Groups:
        if self._groups is None:
            self._groups = self._read()
        return self._groups

    q = property(lambda self: self._read_once().q)
    scale = property(lambda self: self._read_once().scale)
    minimum = property(lambda self: self._read_once().minimum)


def linear_function(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Any linear layer here as a plain function of a (1, in) input, for decode steps: an nn.Module
    attribute lookup costs about a microsecond, and a step makes hundreds of them otherwise."""
    if isinstance(module, nn.Linear):
        return partial(F.linear, weight=module.weight, bias=module.bias)
    return module.as_function()


def int4_fits(weight_shape: tuple[int, ...]) -> bool:
    """The int4 kernel needs whole groups along the input."""
    return len(weight_shape) == 2 and weight_shape[1] % INT4_GROUP == 0


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W in 4-bit groups, computed by llmgen's own kernel where it runs
    (kernels/: int8 activations, float32 out), else by PyTorch's int4 kernel (bfloat16)."""

    def __init__(self, groups: Int4Groups, bias: torch.Tensor | None = None, own_kernel: bool = True):
        super().__init__()
        out_features, in_features = groups.shape
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.own_kernel = own_kernel and kernels.library() is not None
        self._matmul: kernels.Int4Matmul | None = None
        if self.own_kernel:
            weights = kernels.pack_int4(groups.q, groups.scale, groups.minimum)
            for name in ("packed", "scales", "minimums"):
                self.register_buffer(name, getattr(weights, name))
            return
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
            if self._matmul is None or self._matmul.weights.packed is not self.packed:  # built once per weights
                self._matmul = self.kernel_matmul()
            y = self._matmul(x.reshape(-1, self.in_features))
            return y.view(*x.shape[:-1], self.out_features).to(x.dtype)
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

    def kernel_matmul(self, norm_weight: torch.Tensor | None = None, norm_eps: float = 0.0,
                      gated: bool = False) -> kernels.Int4Matmul:
        """This layer as a call into llmgen's kernel (own_kernel only), optionally with the RMSNorm or
        SwiGLU before it done in the same call (see kernels.Int4Matmul)."""
        weights = kernels.PackedInt4(self.packed, self.scales, self.minimums, self.in_features)
        return kernels.Int4Matmul(weights, self.bias, norm_weight, norm_eps, gated)


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


def quantize_model(model: nn.Module, kind: str, int4_groups: dict[str, Int4Groups] | None = None,
                   own_kernels: bool = True) -> nn.Module:
    """Swap linear layers for quantized ones in place (`kind` is "int8" or "int4").

    int4_groups: weights already in 4-bit groups (GGUF Q4_0/Q4_1), by parameter name; their nn.Linear
    modules were left empty by the loader. The dict is consumed: each entry goes as its layer is built, so
    groups read from a file are unpacked and freed one layer at a time. Everything else is quantized
    from its float weight.
    own_kernels: int4 layers use llmgen's kernel where it runs (kernels/); False keeps PyTorch's, which
    torch.compile can trace (decode/compiled.py).
    """
    int4_groups = int4_groups if int4_groups is not None else {}
    head = model.output if model.output is not None else (
        model.tok_embeddings if hasattr(model, "tok_embeddings") else model.wte)
    if "output.weight" not in int4_groups and getattr(head, "bias", None) is None:
        fits = kind == "int4" and int4_fits(tuple(head.weight.shape))
        model.output = Int4Head(head.weight, own_kernel=own_kernels) if fits else Int8Linear(head.weight)

    def int4_of(name: str, linear: nn.Linear) -> Int4Groups | None:
        if f"{name}.weight" in int4_groups:
            return int4_groups.pop(f"{name}.weight")
        return Int4Groups.from_float(linear.weight) if int4_fits(tuple(linear.weight.shape)) else None

    for prefix, module in list(model.named_modules()):
        prefix = f"{prefix}." if prefix else ""
        if kind == "int4":  # fused projections first: they need the parts' groups before packing
            for fused_name, part_names in getattr(module, "FUSIONS", {}).items():
                parts = [getattr(module, n) for n in part_names]
                if any(p.bias is not None for p in parts):
                    continue
                groups = [int4_of(f"{prefix}{n}", p) for n, p in zip(part_names, parts)]
                if all(g is not None for g in groups):
                    setattr(module, fused_name, Int4Linear(Int4Groups.cat(groups), own_kernel=own_kernels))
                    for n in part_names:
                        setattr(module, n, None)
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            if kind == "int8":
                setattr(module, child_name, Int8Linear(child.weight, child.bias))
            elif (groups := int4_of(f"{prefix}{child_name}", child)) is not None:
                setattr(module, child_name, Int4Linear(groups, child.bias, own_kernels))
    if int4_groups:
        raise ValueError(f"4-bit weights left without a linear layer: {sorted(int4_groups)[:3]}")
    return model
