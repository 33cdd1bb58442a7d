"""The modules that join a rank's shard to the others': an all-reduce after each projection out of the rank's
heads or MLP width, and a vocabulary split across ranks for the embedding and the head.

They wrap the model's own modules (whatever quantization/ made of them) after the weights are in, as
gpt-fast's tp.py hooks its model; models/ knows nothing of them. Every rank computes the same thing on
the same input, and after each all-reduce holds the same activations, so every rank's logits are equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from llmgen.models import Model
from llmgen.models.llama import Llama
from llmgen.quantization.linear import linear_function


class RowParallelLinear(nn.Module):
    """wo or the MLP's down projection on this rank's input columns: its product is this rank's share of
    the sum over every input feature, and the all-reduce adds the shares up. (..., in / N) -> (..., out)."""

    def __init__(self, inner: nn.Module, all_reduce: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.inner, self.all_reduce = inner, all_reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_reduce(self.inner(x))

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """For decode steps (quantization/linear.linear_function)."""
        matmul, all_reduce = linear_function(self.inner), self.all_reduce
        return lambda x: all_reduce(matmul(x))


class VocabParallelEmbedding(nn.Module):
    """An embedding holding the vocabulary's rows first..stop: ids outside them give zeros here and their
    row on the rank that holds it; the all-reduce puts the rows together. (...) ids -> (..., dim)."""

    def __init__(self, inner: nn.Module, first: int, stop: int, all_reduce: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.inner, self.first, self.rows, self.all_reduce = inner, first, stop - first, all_reduce

    @property
    def weight(self) -> torch.Tensor:
        """The rank's rows (dtype and device checks read it)."""
        return cast(torch.Tensor, self.inner.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.first
        outside = (local < 0) | (local >= self.rows)
        x = self.inner(local.masked_fill(outside, 0))
        return self.all_reduce(x.masked_fill(outside[..., None], 0))


class VocabParallelHead(nn.Module):
    """The output head on the vocabulary's rows first..stop: each rank computes its logits, put in place in
    a (..., vocab) tensor of zeros; the all-reduce fills in the rest, so every rank has every logit."""

    def __init__(self, local_head: Callable[[torch.Tensor], torch.Tensor], first: int, stop: int, vocab: int,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.local_head, self.first, self.stop, self.vocab = local_head, first, stop, vocab
        self.all_reduce = all_reduce
        if isinstance(local_head, nn.Module):
            self.inner = local_head  # registered, so that .to() and parameters() see it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        part = self.local_head(x)  # (..., stop - first)
        logits = part.new_zeros(*part.shape[:-1], self.vocab)
        logits[..., self.first:self.stop] = part
        return self.all_reduce(logits)


def parallelize(model: Model, first: int, stop: int, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> Model:
    """Wrap a rank's model (its shard's weights in, quantized or not) in place: rows first..stop of the
    vocabulary are the rank's."""
    vocab = model.config.vocab_size
    if isinstance(model, Llama):
        embedding_name = "tok_embeddings"
        for block in model.blocks:
            block.attention.wo = RowParallelLinear(block.attention.wo, all_reduce)
            block.feed_forward.w2 = RowParallelLinear(block.feed_forward.w2, all_reduce)
    else:
        embedding_name = "wte"
        for gpt2_block in model.blocks:
            gpt2_block.attn.c_proj = RowParallelLinear(gpt2_block.attn.c_proj, all_reduce)
            gpt2_block.mlp.c_proj = RowParallelLinear(gpt2_block.mlp.c_proj, all_reduce)
    embedding = getattr(model, embedding_name)
    local_head: Callable[[torch.Tensor], torch.Tensor]
    if model.output is not None:
        local_head = model.output
    else:  # tied: the rank's rows of the embedding are its rows of the head
        local_head = lambda x: F.linear(x, embedding.weight)  # noqa: E731
    model.output = VocabParallelHead(local_head, first, stop, vocab, all_reduce)
    setattr(model, embedding_name, VocabParallelEmbedding(embedding, first, stop, all_reduce))
    return model
