import pytest
import torch

from llmgen.sampling import logits_to_probs, mask_invalid, sample, top_k_filter, top_p_filter


def random_logits(seed=0, vocab=50):
    return torch.randn(3, vocab, generator=torch.Generator().manual_seed(seed))


def test_temperature_zero_is_argmax():
    logits = random_logits()
    assert torch.equal(sample(logits, temperature=0), logits.argmax(-1))


def test_top_k_one_is_argmax_for_any_temperature():
    logits = random_logits(1)
    for seed in range(5):
        ids = sample(logits, temperature=2.0, top_k=1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ids, logits.argmax(-1))


def test_top_k_keeps_exactly_k():
    kept = torch.isfinite(top_k_filter(random_logits(2), 5)).sum(-1)
    assert kept.tolist() == [5, 5, 5]
    assert torch.isfinite(top_k_filter(random_logits(2), 500)).all()  # k larger than the vocabulary


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.51)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


def test_top_p_tiny_keeps_the_top_token_only():
    logits = random_logits(3)
    probs = logits_to_probs(logits, top_p=1e-9)
    assert torch.equal(probs.argmax(-1), logits.argmax(-1))
    assert torch.allclose(probs.max(-1).values, torch.ones(3))


def test_top_p_unsorted_input_maps_back_to_right_ids():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[False, True, False, True]]


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = random_logits(4, vocab=1000)

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.stack([sample(logits, 1.0, generator=g) for _ in range(20)])

    assert torch.equal(draws(1), draws(1))
    assert not torch.equal(draws(1), draws(2))


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.stack([sample(logits, 1.0, generator=g) for _ in range(4000)]).flatten(),
                            minlength=3)
    assert counts.tolist()[0] == pytest.approx(2800, abs=150)
    assert counts.tolist()[2] == pytest.approx(400, abs=100)


def test_low_temperature_sharpens():
    logits = random_logits(5)
    assert (logits_to_probs(logits, 0.1).max(-1).values > logits_to_probs(logits, 1.0).max(-1).values).all()


def test_mask_invalid_removes_padded_rows():
    logits = torch.zeros(1, 10)
    masked = mask_invalid(logits, 7)
    assert torch.isinf(masked[0, 7:]).all() and torch.isfinite(masked[0, :7]).all()
    assert torch.equal(logits, torch.zeros(1, 10))  # the caller's tensor is untouched
