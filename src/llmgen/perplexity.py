"""Perplexity of a text under a model, by llama-perplexity's method, and the KL divergence of a model from a
reference model on the same text (what a quantization costs).

llama-perplexity's method (tools/perplexity/perplexity.cpp, perplexity()): the whole text is tokenized
once; it is cut into chunks of n_ctx tokens (the remainder dropped); each chunk is evaluated from an
empty cache, its first token replaced by BOS where the model's prompts start with one; only the second
half of each chunk is scored (every scored token has at least n_ctx / 2 tokens of context): logits row j
for j in n_ctx/2 .. n_ctx - 2 predicts token j + 1, so n_ctx/2 - 1 tokens a chunk.
PPL = exp(mean NLL), and its error exp(mean NLL) * sqrt(var(NLL) / (count - 1)), as llama.cpp prints.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from llmgen.decode import Decoder
from llmgen.errors import LLMGenError


@dataclass
class Scores:
    """Running sums over the scored tokens."""

    count: int = 0
    nll: float = 0.0  # sum of -log p(token)
    nll2: float = 0.0  # sum of its squares
    kld: float = 0.0  # sum of KL(reference || model), when there is a reference
    kld2: float = 0.0
    same_top: int = 0  # tokens where both models' most likely next token agree
    chunk_ppl: list[float] = field(default_factory=list)  # the running PPL after each chunk

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    @property
    def ppl_error(self) -> float:
        mean = self.nll / self.count
        variance = self.nll2 / self.count - mean * mean
        return self.ppl * math.sqrt(variance / (self.count - 1)) if variance > 0 and self.count > 1 else 0.0

    @property
    def mean_kld(self) -> float:
        return self.kld / self.count

    @property
    def kld_error(self) -> float:
        mean = self.mean_kld
        variance = self.kld2 / self.count - mean * mean
        return math.sqrt(variance / (self.count - 1)) if variance > 0 and self.count > 1 else 0.0

    @property
    def top1_agreement(self) -> float:
        return self.same_top / self.count


def chunks(ids: list[int], n_ctx: int, bos_id: int | None) -> list[list[int]]:
    """The text's whole chunks of n_ctx tokens, each starting with BOS where the model's prompts do."""
    if n_ctx < 8:
        raise LLMGenError(f"-c {n_ctx}: a context of at least 8 tokens is needed")
    if len(ids) < 2 * n_ctx:
        raise LLMGenError(f"the text has {len(ids)} tokens; at least 2 * {n_ctx} = {2 * n_ctx} are needed "
                          "(a longer text, or a smaller -c)")
    out = []
    for start in range(0, len(ids) - n_ctx + 1, n_ctx):
        chunk = ids[start:start + n_ctx]
        if bos_id is not None:
            chunk[0] = bos_id
        out.append(chunk)
    return out


@torch.inference_mode()
def chunk_log_probs(decoder: Decoder, chunk: list[int], batch_size: int, n_valid: int | None = None) -> torch.Tensor:
    """(n_ctx/2 - 1, n_valid) float32 log-probabilities of the scored rows of one chunk, from an empty cache
    (a padded head's rows past the tokenizer's n_valid tokens are not tokens: left out before the softmax)."""
    n_ctx, first = len(chunk), len(chunk) // 2
    decoder.model.setup_cache(1, n_ctx)
    rows = []
    for start in range(0, n_ctx - 1, batch_size):
        stop = min(start + batch_size, n_ctx - 1)  # the last token predicts nothing scored
        logits = decoder.block(chunk[start:stop], start)
        if stop > first:
            rows.append(logits[max(first - start, 0):])
    return torch.log_softmax(torch.cat(rows)[:, :n_valid].float(), dim=-1)


def score(decoder: Decoder, ids: list[int], n_ctx: int, bos_id: int | None, batch_size: int = 512,
          reference: Decoder | None = None, n_valid: int | None = None) -> Iterator[Scores]:
    """Scores after each chunk (the same object, updated). With a reference model: KL(reference || model) and
    top-1 agreement at every scored token too. n_valid: the tokenizer's vocabulary (a padded head's extra rows
    are not tokens)."""
    scores = Scores()
    for chunk in chunks(ids, n_ctx, bos_id):
        first = n_ctx // 2
        targets = torch.tensor(chunk[first + 1:])  # (n_ctx/2 - 1,)
        log_probs = chunk_log_probs(decoder, chunk, batch_size, n_valid)
        nll = -log_probs.gather(1, targets[:, None])[:, 0].double()
        scores.count += nll.numel()
        scores.nll += float(nll.sum())
        scores.nll2 += float((nll * nll).sum())
        if reference is not None:
            base = chunk_log_probs(reference, chunk, batch_size, n_valid)
            if base.shape != log_probs.shape:
                raise LLMGenError("the reference model's vocabulary differs from the model's")
            kld = (base.exp() * (base - log_probs)).sum(-1).double()  # (tokens,)
            scores.kld += float(kld.sum())
            scores.kld2 += float((kld * kld).sum())
            scores.same_top += int((base.argmax(-1) == log_probs.argmax(-1)).sum())
        scores.chunk_ppl.append(scores.ppl)
        yield scores
