"""Weight-only int8 quantization: a quarter of float32's bytes read per decoded token.

Decoding one token reads every weight once, so its speed is set by bytes per token. Int8 weights with
one scale per output channel keep greedy output close to float32 (see tests/test_quantize.py and
benchmarks/RESULTS.md for the measured agreement).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATIONS = ("none", "int8")


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 (out, in) and a bfloat16 scale per output row."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127  # (out,)
        self.register_buffer("weight", (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1].numel()
        if rows == 1:
            # One-token decode: PyTorch's int8 GEMV kernel (bfloat16 activations) reads 1 byte per weight.
            y = torch._weight_int8pack_mm(x.reshape(1, -1).to(torch.bfloat16), self.weight, self.scales)
            y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        else:
            # Prefill is compute-bound; the int8 kernel is slow there, so dequantize for the dense GEMM.
            y = F.linear(x, self.weight.to(x.dtype) * self.scales.to(x.dtype)[:, None])
        return y if self.bias is None else y + self.bias


def quantize_int8(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear for an Int8Linear, and give a tied head its own int8 copy."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear(child.weight, child.bias))
    if model.output is None:  # tied: the head reads the embedding matrix
        embedding = model.tok_embeddings if hasattr(model, "tok_embeddings") else model.wte
        model.output = Int8Linear(embedding.weight)
    return model
