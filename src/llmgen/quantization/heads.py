"""Output heads that keep the next token's candidates exact while reading fewer bytes: a 4-bit first pass over
the whole vocabulary, then the largest logits recomputed from 8-bit rows."""
from __future__ import annotations

from typing import cast

import torch
from torch import nn

from llmgen.quantization.linear import Int4Linear, Int8Linear, StoredRowsLinear, stored_linear
from llmgen.weights.stored import (
    DeferredGroups,
    Int4Groups,
    Int8Groups,
    Q6KBlocks,
)


class StoredHead(nn.Module):
    """A GGUF's 5-to-8-bit output head (or tied embedding, e.g. Q6_K or Q8_0): logits for the whole
    vocabulary from a 4-bit copy, then the `top` largest recomputed from the stored weights.

    The head is the largest matrix a decode step reads (a Llama-3.2-1B's 128k x 2048 Q6_K head is a third
    of its bytes per token) and decoding is memory-bound: the 4-bit copy reads 0.56 bytes a weight instead
    of 0.82 (Q6_K) or 1.06 (Q8_0), and the candidates come out exactly as stored (see Int4Head for the same idea from float).
    """

    def __init__(self, groups: Int8Groups | Q6KBlocks | DeferredGroups, top: int = 64, own_kernel: bool = True):
        super().__init__()
        self.groups = groups  # for exact_head
        self.fine = cast(StoredRowsLinear, stored_linear(groups, own_kernel=False))  # its rows only: never a matmul
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
        exact = exact_logits(rows, x)  # (..., top)
        return logits.scatter_(-1, top, exact)


class Int4Head(nn.Module):
    """The output head: logits for the whole vocabulary from 4-bit weights, then the `top` largest
    recomputed from 8-bit rows.

    The head picks the token. Plain 4 bits cost SmolLM2 8 points of top-1 agreement with float32 and
    9% perplexity; 8 bits cost nothing but read twice the bytes (a fifth of a decode step). Recomputing
    the top 64 keeps the candidates exact to 8 bits (100% agreement, perplexity within 1%; see
    tests/quantization/test_quantize.py) for 4 bits a weight plus 64 rows.
    """

    fine_rows: torch.Tensor  # (vocab, in) int8
    fine_scales: torch.Tensor  # (vocab,) float32

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
        exact = exact_logits(rows, x)  # (..., top)
        return logits.scatter_(-1, top, exact)


def exact_head(head: nn.Module | None) -> nn.Module | None:
    """The head computing every logit from the finer weights, for a head that computes most of them in 4 bits
    (None for any other head). Decoding needs only the top candidates exact; perplexity and KL divergence
    need the whole distribution (the normaliser): there a 4-bit first pass costs SmolLM2 ~2.5% perplexity."""
    if isinstance(head, StoredHead):
        return stored_linear(head.groups)
    if isinstance(head, Int4Head):
        return _DequantizedHead(head.fine_rows.float() * head.fine_scales[:, None])
    return None


class _DequantizedHead(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (vocab, in) float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.float(), self.weight)


def exact_logits(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """rows (..., top, in) . x (..., in) -> (..., top), each row of x on its own: a product and a sum over
    the last dim, which a batched matmul is not (its blocking changes with the batch, and with it the last
    bits), so that a block of tokens gets exactly the logits one-token steps get (decode/llama.py)."""
    return (rows * x.float()[..., None, :]).sum(-1)


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
