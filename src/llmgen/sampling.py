"""Logits -> next token, as pure functions.

The chain, in order: mask ids the tokenizer cannot decode, temperature (0 means greedy), top-k,
top-p (nucleus), softmax, torch.multinomial with the caller's seeded generator.
"""

from __future__ import annotations

import torch


def check_settings(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top-p must be in (0, 1], got {top_p}")


def mask_invalid(logits: torch.Tensor, n_valid: int) -> torch.Tensor:
    """Padded heads have more rows than the tokenizer has tokens: never sample those."""
    if logits.size(-1) > n_valid:
        logits = logits.clone()
        logits[..., n_valid:] = float("-inf")
    return logits


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches p (always at least the top one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    sorted_probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the mass of the tokens ranked above it already reaches p.
    drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """(..., vocab) logits of the last position -> probabilities after temperature, top-k and top-p."""
    logits = logits.float() / max(temperature, 1e-5)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(vocab,) logits -> log-probabilities, in float32: what --logprobs reports (before temperature and
    filters, as the OpenAI API reports them)."""
    return torch.log_softmax(logits.float(), dim=-1)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, vocab) logits -> (B,) token ids. Temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def penalize_repeats(logits: torch.Tensor, recent_ids: list[int], penalty: float) -> torch.Tensor:
    """llama.cpp's (and CTRL's) repetition penalty: each id among `recent_ids` has its logit divided by
    `penalty` where positive and multiplied where negative, once however often it occurs. (B, vocab) ->
    a new (B, vocab); penalty 1 leaves the logits as they are."""
    if penalty == 1.0 or not recent_ids:
        return logits
    ids = torch.tensor(sorted(set(recent_ids)), device=logits.device)
    chosen = logits.index_select(-1, ids)
    logits = logits.clone()
    logits.index_copy_(-1, ids, torch.where(chosen > 0, chosen / penalty, chosen * penalty))
    return logits


def check_draft(logits: torch.Tensor, drafted: int, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> int:
    """Speculative decoding's rule for one drafted token: (1, vocab) target logits -> the id to emit.

    Greedy: the target's argmax (the draft is kept exactly when it is that id), so the output is plain
    greedy's. Sampling (Leviathan et al. 2023, with a drafter that proposes one token for certain, q = 1 at
    `drafted`): keep it with probability p(drafted), else sample from p with `drafted` removed, the
    normalized max(0, p - q). Either way the emitted id is distributed as sample() would draw it.
    """
    if temperature == 0:
        return int(logits.argmax(dim=-1))
    probs = logits_to_probs(logits, temperature, top_k, top_p)[0]  # (vocab,)
    keep = float(probs[drafted])
    if torch.rand((), generator=generator, device=probs.device) < keep:
        return drafted
    residual = probs.clone()
    residual[drafted] = 0
    return int(torch.multinomial(residual, 1, generator=generator))
