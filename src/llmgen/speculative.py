"""Drafters for speculative decoding: guesses of the next few tokens, for the target model to check in one
forward pass over all of them (generation.generate_ids, with sampling.check_draft as the rule).

A guess costs one row of that pass; every guessed token the target agrees with is a token that needed no
read of the weights of its own. Two drafters:
- NgramDrafter (prompt lookup; llama.cpp's ngram speculation, transformers' prompt_lookup_num_tokens): the
  tokens that followed the latest earlier occurrence of the text's last few tokens. Free to ask, and right
  where a reply copies its input: summaries, edits, code that repeats its identifiers.
- ModelDrafter: a small model with the same vocabulary, decoding greedily ahead of the target.
Both shorten their guesses after a miss and lengthen them after a hit, so that text they cannot predict
costs little.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from llmgen.errors import UsageError

if TYPE_CHECKING:
    from llmgen.decode import Decoder
    from llmgen.models import Model
    from llmgen.tokenization.tokenizer import Tokenizer


class Drafter(Protocol):
    def start(self, cache_length: int) -> None:
        """A new sequence begins (its prompt is the first `tokens` propose sees)."""

    def propose(self, tokens: list[int], limit: int) -> list[int]:
        """Up to `limit` guesses of the tokens after `tokens` (may be none)."""

    def checked(self, proposed: int, accepted: int) -> None:
        """The target kept `accepted` of the last `proposed` guesses."""


@dataclass
class SpeculationStats:
    """What --stats reports: how many guesses were made and kept, in how many forward passes."""

    proposed: int = 0
    accepted: int = 0
    passes: int = 0  # forward passes of the target after the prompt's (decode steps and checking passes)
    tokens: int = 0  # tokens those passes produced

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / self.passes if self.passes else 0.0


@dataclass
class Adaptive:
    """A guess length that doubles after a fully kept guess and falls back to one more than was kept."""

    longest: int
    length: int = 0

    def __post_init__(self):
        self.length = self.length or min(4, self.longest)

    def update(self, proposed: int, accepted: int) -> None:
        if accepted == proposed:
            self.length = min(self.longest, self.length * 2)
        else:
            self.length = max(1, accepted + 1)


@dataclass
class NgramDrafter:
    """Prompt lookup: match the last n tokens (n from the largest size down) against earlier text and
    propose what followed their latest occurrence.

    An index from each n-gram to where its latest earlier occurrence ends is extended as tokens arrive,
    so a proposal costs O(new tokens), not a scan of the text.
    """

    longest: int = 8
    sizes: tuple[int, ...] = (4, 3, 2)
    length: Adaptive = field(init=False)
    _index: dict[tuple[int, ...], int] = field(init=False, default_factory=dict)
    _indexed: int = field(init=False, default=0)  # how many of the sequence's tokens are indexed
    _last: int | None = field(init=False, default=None)  # the last of them

    def __post_init__(self):
        self.length = Adaptive(self.longest)

    def start(self, cache_length: int) -> None:
        self._index, self._indexed, self._last, self.length = {}, 0, None, Adaptive(self.longest)

    def propose(self, tokens: list[int], limit: int) -> list[int]:
        self._extend(tokens)
        limit = min(limit, self.length.length)
        for n in self.sizes:
            if len(tokens) > n and (end := self._index.get(tuple(tokens[-n:]))) is not None:
                return tokens[end:end + limit]
        return []

    def checked(self, proposed: int, accepted: int) -> None:
        self.length.update(proposed, accepted)

    def _extend(self, tokens: list[int]) -> None:
        """Index every n-gram of `tokens` that has a token after it (so never the text's own last n)."""
        start = self._indexed
        if start > len(tokens) or (start and tokens[start - 1] != self._last):
            self._index, start = {}, 0  # another sequence, without start(): index it afresh
        for end in range(max(start, 1), len(tokens)):  # the n-gram ends just before `end`
            for n in self.sizes:
                if end >= n:
                    self._index[tuple(tokens[end - n:end])] = end
        self._indexed, self._last = len(tokens), tokens[-1] if tokens else None


class ModelDrafter:
    """A small model with the target's vocabulary, guessing greedily with its own KV cache.

    Its cache holds the keys and values of `fed` (the tokens it has seen, its own guesses included); before
    each proposal the part that disagrees with the text the target kept is dropped (positions past it are
    simply overwritten) and the rest of the text is fed in one forward pass.
    """

    def __init__(self, model: Model, decoder: Decoder, longest: int = 6):
        self.model, self.decoder, self.longest = model, decoder, longest
        self.length = Adaptive(longest)
        self.fed: list[int] = []
        self.cache_length = 0

    def start(self, cache_length: int) -> None:
        self.cache_length = min(cache_length, self.model.config.context_length)
        self.model.setup_cache(1, self.cache_length)
        self.fed, self.length = [], Adaptive(self.longest)

    @torch.inference_mode()
    def propose(self, tokens: list[int], limit: int) -> list[int]:
        limit = min(limit, self.length.length, self.cache_length - len(tokens))
        if limit <= 0:
            return []
        kept = next((i for i, (seen, token) in enumerate(zip(self.fed, tokens)) if seen != token),
                    min(len(self.fed), len(tokens)))  # the tokens the cache still holds rightly
        kept = min(kept, len(tokens) - 1)  # the last token is fed again for its logits
        logits = self.decoder.block(tokens[kept:], kept, last_only=True)[0]
        self.fed = tokens[:]
        guesses: list[int] = []
        while True:
            guess = int(logits.argmax())
            guesses.append(guess)
            if len(guesses) == limit:
                return guesses
            logits = self.decoder(guess, len(self.fed))
            self.fed.append(guess)

    def checked(self, proposed: int, accepted: int) -> None:
        self.length.update(proposed, accepted)


def check_same_vocabulary(target: Tokenizer, draft: Tokenizer) -> None:
    """A draft model must number tokens as the target does: every id the same bytes."""
    if target.n_vocab != draft.n_vocab:
        raise UsageError(f"--draft-model has {draft.n_vocab} tokens, the model {target.n_vocab}: "
                         "a draft model needs the same vocabulary")
    for i in range(target.n_vocab):
        if target.token_bytes(i) != draft.token_bytes(i):
            raise UsageError(f"--draft-model's token {i} is {draft.token_bytes(i)!r}, the model's "
                             f"{target.token_bytes(i)!r}: a draft model needs the same vocabulary")
