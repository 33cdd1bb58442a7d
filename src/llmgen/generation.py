"""Prefill, then one-token decode steps: an iterator of token ids, and a text stream on top of it.

Knows nothing of terminals, JSON or speech: the CLI renders what these iterators yield.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llmgen.errors import LLMGenError
from llmgen.models import Model
from llmgen.sampling import check_draft, check_settings, mask_invalid, penalize_repeats, sample
from llmgen.speculative import Drafter, SpeculationStats
from llmgen.tokenization.tokenizer import StreamDecoder, Tokenizer

if TYPE_CHECKING:
    from llmgen.decode import Decoder
    from llmgen.grammar import JsonConstraint


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    repeat_penalty: float = 1.0  # llama.cpp's --repeat-penalty (1: off) over the last repeat_last_n tokens
    repeat_last_n: int = 64

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError(f"max-new-tokens must be >= 0, got {self.max_new_tokens}")
        check_settings(self.temperature, self.top_k, self.top_p)
        if not self.repeat_penalty > 0:
            raise ValueError(f"repeat-penalty must be > 0, got {self.repeat_penalty}")
        if self.repeat_last_n < 0:
            raise ValueError(f"repeat-last-n must be >= 0, got {self.repeat_last_n}")


@torch.inference_mode()
def generate_ids(
    model: Model,
    prompt_ids: list[int],
    settings: SamplingSettings,
    *,
    stop_ids: Iterable[int] = (),
    n_valid: int | None = None,
    generator: torch.Generator | None = None,
    on_crop: Callable[[str], None] | None = None,
    decoder: Decoder | None = None,
    on_logits: Callable[[torch.Tensor], None] | None = None,
    cached: int | None = None,
    agree: Callable[[int], int] | None = None,
    drafter: Drafter | None = None,
    speculation: SpeculationStats | None = None,
    batch_size: int = 512,
    constraint: JsonConstraint | None = None,
) -> Iterator[int]:
    """Yield sampled ids, ending after a stop id or max_new_tokens.

    on_logits, when given, sees each step's (vocab,) logits before the sampler's temperature and filters
    (for --logprobs), just before that step's id is yielded.
    cached: the caller manages the KV cache (chat.Conversation): it is set up, holds the keys and values
    of prompt_ids[:cached], and has room for the prompt and max_new_tokens; only the rest is prefilled.

    The context is cropped to the model's window. Past the window the positions of the kept tokens
    shift, so each further step re-prefills the last `window` tokens (what crop-every-step sampling
    computes, at the cost of a prefill per token); `on_crop` is called once when cropping first happens.
    Decode steps go through `decoder`, by default the one decode.choose_decoder picks for the model.
    agree: each sampled id passes through it before it is used; tensor parallelism gives rank 0's, so that
    every rank goes on with the same tokens and stops at the same step (parallel/group.py).

    drafter: speculative decoding (speculative.py). After each token the drafter guesses the next few;
    one forward pass over the token and the guesses gives the logits after each, and the guesses are
    checked in order by sampling.check_draft until one is not kept: greedy output is plain greedy's, sampled
    output has the same distribution. Kept guesses' keys and values are in the cache already; the rest
    are overwritten later (attention reads no position past the one being written). `speculation`
    counts guesses and passes.
    batch_size: the most prompt tokens one forward pass takes (llama.cpp's n_batch); longer prompts are
    processed in chunks, so that the activations held at once stay bounded.
    constraint: structured output (grammar.JsonConstraint): each id is one it allows, and generation ends
    once the JSON value is complete. Not with a drafter.
    """
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    if batch_size < 1:
        raise ValueError(f"batch-size must be >= 1, got {batch_size}")
    if constraint is not None and drafter is not None:
        raise ValueError("constrained decoding does not go with speculative decoding")
    window = model.config.context_length
    n_valid = n_valid or model.config.vocab_size
    stop_ids = frozenset(stop_ids)
    tokens = list(prompt_ids)
    warned = False
    stats = speculation if speculation is not None else SpeculationStats()

    def prefill_last_window() -> torch.Tensor:
        nonlocal warned
        if len(tokens) > window and not warned:
            warned = True
            if on_crop is not None:
                on_crop(f"the context is longer than the model's window of {window} tokens; "
                        f"only the last {window} are used")
        assert decoder is not None  # chosen below, before the first call
        return decoder.prefill(tokens[-window:], 0, batch_size)  # (1, vocab)

    def choose(logits: torch.Tensor, step: int, drafted: int | None) -> int:
        sampled = pick_id(logits, tokens, settings, step, n_valid=n_valid, generator=generator, drafted=drafted,
                          on_logits=on_logits, constraint=constraint)
        sampled = sampled if agree is None else agree(sampled)
        if constraint is not None:
            constraint.consume(sampled)
        return sampled

    if settings.max_new_tokens == 0:
        return
    if decoder is None:
        from llmgen.decode import choose_decoder

        decoder = choose_decoder(model)
    cache_length = min(window, len(tokens) + settings.max_new_tokens)
    if cached is None:
        model.setup_cache(1, decoder.cache_length(cache_length))
        rows = [prefill_last_window()]
    else:
        if not 0 <= cached < len(tokens) or len(tokens) + settings.max_new_tokens > window:
            raise ValueError(f"{cached} cached of {len(tokens)} prompt tokens cannot continue in a window of {window}")
        rows = [decoder.prefill(tokens[cached:], cached, batch_size)]
    if drafter is not None:
        drafter.start(cache_length)
    pos = min(len(tokens), window)  # next position to write in the cache
    guesses: list[int] = []  # drafted ids still to check: guesses[i] against rows[i]; rows has one more
    guessed = kept = 0  # this pass's guesses, and how many of them were kept so far
    for step in range(settings.max_new_tokens):
        drafted = guesses.pop(0) if guesses else None
        next_id = choose(rows.pop(0), step, drafted)
        yield next_id
        tokens.append(next_id)
        stats.tokens += step > 0  # the first came from the prompt's pass
        if next_id in stop_ids or step == settings.max_new_tokens - 1 or (constraint is not None
                                                                            and constraint.complete):
            return
        if drafted is not None:
            if next_id == drafted:  # kept: its keys and values are in the cache already
                pos, kept = pos + 1, kept + 1
                stats.accepted += 1
                if not guesses and drafter is not None:
                    drafter.checked(guessed, kept)
                continue  # the next row: the next guess's, or after the last one the pass's own next token
            if drafter is not None:
                drafter.checked(guessed, kept)
            rows.clear()  # the rows after a guess that was not kept are for another text
            guesses.clear()
        # next_id is not in the cache: one more pass of the target
        stats.passes += 1
        if pos >= window:
            rows = [prefill_last_window()]
            continue
        limit = min(cache_length - pos - 1, settings.max_new_tokens - step - 2)
        guesses = drafter.propose(tokens, limit) if drafter is not None and limit > 0 else []
        if not guesses:
            rows = [decoder(next_id, pos)[None]]  # (1, vocab)
        else:
            guessed, kept = len(guesses), 0
            stats.proposed += guessed
            rows = list(decoder.block([next_id, *guesses], pos).split(1))  # 1 + guessed rows of (1, vocab)
        pos += 1


def pick_id(logits: torch.Tensor, tokens: list[int], settings: SamplingSettings, step: int, *, n_valid: int,
            generator: torch.Generator | None = None, drafted: int | None = None,
            on_logits: Callable[[torch.Tensor], None] | None = None, constraint: JsonConstraint | None = None) -> int:
    """The id for a step from its (1, vocab) logits, after `tokens` (the text so far, for the repetition
    penalty): the one rule generate_ids and batching.BatchEngine share, so that the same logits and
    generator state give the same id. drafted: a speculative guess to check instead of sampling afresh.
    constraint: structured output (grammar.py): only the ids it allows can be picked (the caller then
    consumes the id). on_logits sees the model's logits, before the constraint and the sampler."""
    check_finite(logits[..., :n_valid], step)
    logits = mask_invalid(logits, n_valid)
    if on_logits is not None:
        on_logits(logits[0])
    if constraint is not None:
        logits = constraint.allow(logits)
    if settings.repeat_penalty != 1.0 and settings.repeat_last_n:
        logits = penalize_repeats(logits, tokens[-settings.repeat_last_n:], settings.repeat_penalty)
    if drafted is None:
        return int(sample(logits, settings.temperature, settings.top_k, settings.top_p, generator))
    return check_draft(logits, drafted, settings.temperature, settings.top_k, settings.top_p, generator)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many ids two texts share from their start (what a cache of one holds of the other)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_finite(logits: torch.Tensor, step: int) -> None:
    """NaN or infinite logits cannot be sampled from (and argmax of NaN is meaningless): stop with a reason."""
    if not torch.isfinite(logits).all():
        raise LLMGenError(f"the model produced NaN or infinite logits at generated token {step + 1}: its weights "
                          "hold NaN/inf values, or its activations overflow in this dtype (try --dtype float32)")


class TextAssembler:
    """Generated ids -> text, one id at a time: UTF-8 safe, ending at a stop token or a stop string.

    Text that could be the beginning of a stop string is held back until it is known not to be. push(id)
    returns the text now safe to show; after it, `stopped` says whether the text ended (the stop token or
    string itself is never shown); finish() returns what was held back. TextStream and the server
    (serving/) both assemble text with it.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: Iterable[str] = ()):
        self._decoder = StreamDecoder(tokenizer)
        self._stop_ids = set(tokenizer.stop_ids)
        self._stop_strings = [s for s in stop_strings if s]
        self._pending = ""  # decoded but not yet released
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        if token_id in self._stop_ids:
            text = self.finish()
            self.stopped = True
            return text
        self._pending += self._decoder.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        """Everything still held back (once the ids end)."""
        if not self.stopped:
            self._pending += self._decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        """What of the pending text is safe to show; the rest stays pending (or is dropped at a stop)."""
        pending = self._pending
        hits = [i for i in (pending.find(s) for s in self._stop_strings) if i >= 0]
        if hits:
            self.stopped, self._pending = True, ""
            return pending[: min(hits)]
        hold = 0
        if not final:
            for stop in self._stop_strings:
                for n in range(min(len(stop) - 1, len(pending)), hold, -1):
                    if pending.endswith(stop[:n]):
                        hold = n
                        break
        self._pending = pending[len(pending) - hold:]
        return pending[: len(pending) - hold]


class TextStream:
    """Generated ids -> text chunks (a TextAssembler over an iterator of ids).

    After iteration: `ids` (every generated id, a final stop token included), `text`,
    `finish_reason` ("stop" or "length"), and timings for statistics.
    """

    def __init__(self, ids: Iterable[int], tokenizer: Tokenizer, stop_strings: Iterable[str] = ()):
        self._ids = ids
        self._tokenizer = tokenizer
        self._stop_strings = stop_strings
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason = "length"
        self.started_at = self.first_token_at = self.finished_at = 0.0

    def __iter__(self) -> Iterator[str]:
        assembler = TextAssembler(self._tokenizer, self._stop_strings)
        self.started_at = time.perf_counter()
        try:
            for token_id in self._ids:
                if not self.ids:
                    self.first_token_at = time.perf_counter()
                self.ids.append(token_id)
                released = assembler.push(token_id)
                if released:
                    self.text += released
                    yield released
                if assembler.stopped:
                    self.finish_reason = "stop"
                    return
            released = assembler.finish()
            if assembler.stopped:
                self.finish_reason = "stop"
            if released:
                self.text += released
                yield released
        finally:
            self.finished_at = time.perf_counter()

    @property
    def prefill_seconds(self) -> float:
        return self.first_token_at - self.started_at

    @property
    def decode_tokens_per_second(self) -> float:
        decoding = self.finished_at - self.first_token_at
        return (len(self.ids) - 1) / decoding if len(self.ids) > 1 and decoding > 0 else 0.0
