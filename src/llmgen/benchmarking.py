"""`llmgen bench`'s measurements, after llama-bench: prompt processing (ppN, N prompt tokens in chunks of
the batch size) and text generation (tgN, N one-token decode steps), each repeated, as tokens per second.

As llama-bench does: random token ids (what is measured is the arithmetic, not the text), a fresh KV cache
for each repetition, one untimed warm-up run of each test first (the kernels' first-call costs, the
caches' first touch), and mean +- sample standard deviation over the repetitions.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from llmgen.decode import Decoder
from llmgen.models import Model


@dataclass
class TestResult:
    """One test: its name (pp512, tg128), its token counts, and tokens per second of each repetition."""

    name: str
    n_prompt: int
    n_gen: int
    samples: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def stddev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0


@torch.inference_mode()
def prompt_processing(model: Model, decoder: Decoder, n_tokens: int, batch_size: int, seed: int) -> float:
    """Seconds to process n_tokens random prompt tokens from an empty cache, in chunks of batch_size."""
    tokens = _random_tokens(model, n_tokens, seed)
    model.setup_cache(1, n_tokens)
    start = time.perf_counter()
    decoder.prefill(tokens, 0, batch_size)
    return time.perf_counter() - start


@torch.inference_mode()
def text_generation(model: Model, decoder: Decoder, n_tokens: int, seed: int) -> float:
    """Seconds for n_tokens one-token decode steps from an empty cache (llama-bench's tg: no prompt), each
    feeding the previous step's greedy token."""
    model.setup_cache(1, n_tokens)
    token = _random_tokens(model, 1, seed)[0]
    start = time.perf_counter()
    for pos in range(n_tokens):
        token = int(decoder(token, pos).argmax())
    return time.perf_counter() - start


def run_test(model: Model, decoder: Decoder, n_prompt: int, n_gen: int, repetitions: int,
             batch_size: int) -> TestResult:
    """A ppN test (n_gen 0) or a tgN one (n_prompt 0), warm-up first."""
    def once(seed: int) -> float:
        if n_prompt:
            return n_prompt / prompt_processing(model, decoder, n_prompt, batch_size, seed)
        return n_gen / text_generation(model, decoder, n_gen, seed)

    once(0)  # warm-up, not counted
    name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
    return TestResult(name, n_prompt, n_gen, [once(seed) for seed in range(1, repetitions + 1)])


def _random_tokens(model: Model, n: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (n,), generator=generator).tolist()
