"""Blocks of tokens on llmgen's kernels, speculative decoding (its drafters and its rule) and the repetition
penalty."""

import pytest
import torch
from checkpoints import hf_llama, save_hf
from gguf_files import MIXES, write_kquant_gguf

from llmgen import kernels
from llmgen.decode import choose_decoder
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.loading import load_model, load_weights
from llmgen.quantization.model import quantize_model
from llmgen.sampling import check_draft, logits_to_probs, penalize_repeats
from llmgen.speculative import Adaptive, ModelDrafter, NgramDrafter, SpeculationStats

needs_kernels = pytest.mark.skipif(not kernels.supported_levels(), reason="llmgen's kernels do not build here")


@pytest.fixture(params=kernels.supported_levels())
def level(request, monkeypatch):
    monkeypatch.setenv("LLMGEN_KERNELS", request.param)
    return request.param


def int4_llama(tmp_path, **overrides):
    model, _ = load_weights(save_hf(hf_llama(**overrides), tmp_path))
    quantize_model(model, "int4")
    return model


def one_token_steps(decoder, model, ids, start):
    model.setup_cache(1, len(ids) + 1)
    decoder.block(ids[:start], 0, last_only=True)
    return torch.stack([decoder(t, pos) for pos, t in enumerate(ids[start:], start=start)])


@pytest.mark.parametrize("gemm", [1, 0], ids=["gemm", "gemv"])
@pytest.mark.parametrize("weights", ["int4", "q4_k_m", "others"])
def test_a_block_of_tokens_on_the_kernels_is_one_token_steps_bit_for_bit(tmp_path, level, gemm, weights):
    """decoder.block (a prompt's chunk, a speculative check) computes every row exactly as one-token decode
    steps in order would, on each level, with the 4-bit matmuls on the GEMM path or forced to the GEMV one,
    for int4 and for GGUF block mixes (Q4_K with Q6_K; Q5_K, Q5_0, Q8_0, Q3_K, Q2_K, Q5_1, IQ4_NL, Q4_0)."""
    if weights == "int4":
        model = int4_llama(tmp_path)
    else:
        model = load_model(write_kquant_gguf(tmp_path / f"{weights}.gguf", MIXES[weights])).model
    decoder = choose_decoder(model)
    assert decoder.use_kernels, decoder
    library = kernels.library()
    ids = torch.randint(0, 1000, (19,), generator=torch.Generator().manual_seed(4)).tolist()
    try:
        library.set_gemm(gemm)
        with torch.inference_mode():
            expected = one_token_steps(decoder, model, ids, 5)
            model.setup_cache(1, len(ids) + 1)
            decoder.block(ids[:5], 0, last_only=True)
            got = decoder.block(ids[5:], 5)
            model.setup_cache(1, len(ids) + 1)
            last = decoder.prefill(ids, 0, batch_size=4)  # chunks of 4, 4, 4, 4, 3
    finally:
        library.set_gemm(1)
    assert got.shape == expected.shape and torch.equal(got, expected)
    assert torch.equal(last, expected[-1:])


def repetitive_prompt() -> list[int]:
    phrase = torch.randint(0, 1000, (12,), generator=torch.Generator().manual_seed(2)).tolist()
    return phrase * 3 + phrase[:4]


@pytest.mark.parametrize("kernel_level", ["auto", "0"], ids=["kernels", "pytorch"])
def test_ngram_speculation_at_temperature_0_is_plain_greedy(tmp_path, monkeypatch, kernel_level):
    """Prompt lookup proposes, the target checks in one pass, the cache rolls back: the ids are plain
    greedy's, token for token, on llmgen's kernels and on PyTorch's ops, and guesses were made and kept."""
    monkeypatch.setenv("LLMGEN_KERNELS", kernel_level)
    model = int4_llama(tmp_path)
    prompt, settings = repetitive_prompt(), SamplingSettings(max_new_tokens=40, temperature=0)
    plain = list(generate_ids(model, prompt, settings))
    stats = SpeculationStats()
    speculative = list(generate_ids(model, prompt, settings, drafter=NgramDrafter(), speculation=stats))
    assert speculative == plain
    assert stats.proposed > 0 and stats.accepted > 0 and stats.passes < len(plain) - 1
    assert stats.tokens == len(plain) - 1


@needs_kernels
def test_a_draft_model_that_is_the_target_has_every_guess_kept(tmp_path):
    """The target as its own draft model: its greedy guesses (one-token steps) and the target's check (a
    block) compute the same logits bit for bit, so every guess is kept and the output is plain greedy's."""
    model, draft = int4_llama(tmp_path / "a"), int4_llama(tmp_path / "b")
    prompt, settings = [5, 17, 300, 42], SamplingSettings(max_new_tokens=30, temperature=0)
    plain = list(generate_ids(model, prompt, settings))
    stats = SpeculationStats()
    drafter = ModelDrafter(draft, choose_decoder(draft), longest=5)
    assert list(generate_ids(model, prompt, settings, drafter=drafter, speculation=stats)) == plain
    assert stats.proposed > 10 and stats.accepted == stats.proposed
    assert stats.tokens_per_pass > 3


def test_speculation_stops_where_plain_decoding_stops(tmp_path):
    """A stop id inside a kept guess ends the output there, and max_new_tokens is never exceeded."""
    model = int4_llama(tmp_path)
    prompt = repetitive_prompt()
    plain = list(generate_ids(model, prompt, SamplingSettings(max_new_tokens=25, temperature=0)))
    stop = plain[7]
    for settings, stop_ids in ((SamplingSettings(max_new_tokens=25, temperature=0), {stop}),
                               (SamplingSettings(max_new_tokens=9, temperature=0), set())):
        expected = list(generate_ids(model, prompt, settings, stop_ids=stop_ids))
        got = list(generate_ids(model, prompt, settings, stop_ids=stop_ids, drafter=NgramDrafter()))
        assert got == expected and len(got) <= settings.max_new_tokens


def test_the_check_keeps_the_target_distribution():
    """Leviathan et al.'s rule with a drafter certain of its guess: the emitted ids follow the target's
    (temperature- and top-k-filtered) distribution, whatever is guessed; at temperature 0 it is argmax."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 1.5]])
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    for guess, top_k in ((0, None), (4, None), (2, 3)):
        expected = logits_to_probs(logits, 0.8, top_k)[0]
        counts = torch.bincount(torch.tensor([check_draft(logits, guess, 0.8, top_k, generator=generator)
                                              for _ in range(n)]), minlength=6).double()
        sigma = (expected * (1 - expected) / n).sqrt()
        assert ((counts / n - expected).abs() <= 5 * sigma + 1e-9).all(), (guess, counts / n, expected)
    assert check_draft(logits, 3, 0.0) == 0


def test_prompt_lookup_proposes_what_followed_the_latest_occurrence():
    drafter = NgramDrafter(longest=4, sizes=(3, 2))
    drafter.start(100)
    text = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 6, 1, 2, 3]
    assert drafter.propose(text, 10) == [7, 8, 6, 1]  # the later "1 2 3", at most longest (4) tokens
    assert drafter.propose(text, 2) == [7, 8]
    assert drafter.propose([*text, 42], 10) == []  # "3 42" and "2 3 42" never occurred
    drafter.checked(4, 0)
    assert drafter.length.length == 1  # a miss: one guess next time
    assert drafter.propose([1, 2, 3, 4, 1, 2], 10) == [3]  # another text: indexed afresh
    length = Adaptive(8)
    length.update(4, 4)
    assert length.length == 8
    length.update(8, 2)
    assert length.length == 3


def test_repeat_penalty_is_llama_cpps_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0, 4.0]])
    penalized = penalize_repeats(logits, [0, 1, 1, 3], 2.0)
    assert penalized.tolist() == [[1.0, -4.0, 1.0, 2.0]]  # positive halved, negative doubled, each id once
    assert torch.equal(penalize_repeats(logits, [0, 1], 1.0), logits)


def test_repeat_penalty_breaks_a_greedy_loop(tmp_path):
    """At -t 0 a random model soon loops; with --repeat-penalty the tokens of the last n are held down."""
    model = int4_llama(tmp_path)
    plain = list(generate_ids(model, [1, 2, 3], SamplingSettings(max_new_tokens=60, temperature=0)))
    penalized = list(generate_ids(model, [1, 2, 3], SamplingSettings(max_new_tokens=60, temperature=0,
                                                                    repeat_penalty=100.0, repeat_last_n=16)))
    assert len(set(plain[-16:])) < 16  # a loop
    assert all(len(set(penalized[i:i + 16])) == 16 for i in range(len(penalized) - 16))
