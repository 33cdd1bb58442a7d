"""bfloat16 checkpoints as stored, on llmgen's bf16 kernel: the matrices stay the memory-mapped file's pages."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llmgen import kernels
from llmgen.models.llama import Llama
from llmgen.quantization.linear import KernelLinear, fused_bias
from llmgen.weights.stored import (
    ROW_CHUNK,
)


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
        parts: list[tuple[kernels.Packed, torch.Tensor | None]] = []
        first = 0
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
    weight: torch.Tensor  # (vocab, dim) bfloat16

    """An embedding table kept in bfloat16 as stored, its rows looked up and widened to float32."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach())  # (vocab, dim) bfloat16

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()


def bf16_on_kernels(model: Llama, own_kernels: bool = True) -> Llama:
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
    model.tok_embeddings = Bf16Embedding(embedding.weight)  # type: ignore[assignment]  # swapped for its kernel form
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
