"""Parity with Hugging Face transformers on the same random weights, in every layout we read."""

import pytest
import torch
from checkpoints import hf_gpt2, hf_llama, save_hf, save_meta

from llmgen.generation import SamplingSettings, generate_ids
from llmgen.weights.loading import load_weights

pytestmark = pytest.mark.slow

ATOL = 1e-4


def tokens(vocab: int, n: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


def our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.setup_cache(ids.size(0), ids.size(1))
    with torch.inference_mode():
        return model(ids, 0)


def reference_logits(hf_model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(ids).logits


def greedy_ours(model, prompt: list[int], n: int) -> list[int]:
    return list(generate_ids(model, prompt, SamplingSettings(max_new_tokens=n, temperature=0)))


def greedy_reference(hf_model, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


GPT2_LAYOUTS = {
    "safetensors": {},
    "pytorch_model.bin": {"safe_serialization": False},
    "sharded safetensors": {"max_shard_size": "200KB"},
}


@pytest.mark.parametrize("layout", GPT2_LAYOUTS)
def test_gpt2_logits_and_greedy_match_reference(tmp_path, layout):
    reference = hf_gpt2()
    save_hf(reference, tmp_path, **GPT2_LAYOUTS[layout])
    model, found = load_weights(tmp_path)
    assert found.kind == "hf"
    ids = tokens(1000)
    torch.testing.assert_close(our_logits(model, ids), reference_logits(reference, ids), atol=ATOL, rtol=0)
    prompt = ids[0, :8].tolist()
    assert greedy_ours(model, prompt, 24) == greedy_reference(reference, prompt, 24)


def test_gpt2_odd_sizes(tmp_path):
    reference = hf_gpt2(vocab_size=1013, n_embd=48, n_head=3, n_layer=3, n_positions=40)
    model, _ = load_weights(save_hf(reference, tmp_path))
    ids = tokens(1013, n=40)
    torch.testing.assert_close(our_logits(model, ids), reference_logits(reference, ids), atol=ATOL, rtol=0)


LLAMA_VARIANTS = {
    "gqa untied": {},
    "tied head (3.2 style)": {"tie_word_embeddings": True},
    "multi-head (no GQA)": {"num_key_value_heads": 4},
    "multi-query": {"num_key_value_heads": 1},
    "llama3.1 rope scaling": {
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 32},
    },
    "odd sizes": {"vocab_size": 1013, "hidden_size": 48, "intermediate_size": 100, "num_attention_heads": 6,
                  "num_key_value_heads": 3, "num_hidden_layers": 3},
}


@pytest.mark.parametrize("variant", LLAMA_VARIANTS)
def test_hf_llama_logits_and_greedy_match_reference(tmp_path, variant):
    reference = hf_llama(**LLAMA_VARIANTS[variant])
    model, found = load_weights(save_hf(reference, tmp_path))
    assert found.kind == "hf"
    ids = tokens(reference.config.vocab_size, n=40)
    torch.testing.assert_close(our_logits(model, ids), reference_logits(reference, ids), atol=ATOL, rtol=0)
    prompt = ids[0, :6].tolist()
    assert greedy_ours(model, prompt, 24) == greedy_reference(reference, prompt, 24)


def test_rope_scaling_changes_the_output(tmp_path):
    # Guards the test above: with this config, llama3 scaling must matter.
    plain = hf_llama()
    scaled = hf_llama(**LLAMA_VARIANTS["llama3.1 rope scaling"])
    ids = tokens(1000, n=40)
    assert not torch.allclose(reference_logits(plain, ids), reference_logits(scaled, ids), atol=1e-3)


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("variant", ["gqa untied", "tied head (3.2 style)"])
def test_meta_layout_matches_reference(tmp_path, shards, variant):
    reference = hf_llama(**LLAMA_VARIANTS[variant])
    save_meta(reference, tmp_path, shards=shards)
    model, found = load_weights(tmp_path)
    assert found.kind == "meta"
    assert model.config.ffn_dim == 192  # derived from dim, multiple_of
    ids = tokens(1000, n=32)
    torch.testing.assert_close(our_logits(model, ids), reference_logits(reference, ids), atol=ATOL, rtol=0)
    prompt = ids[1, :5].tolist()
    assert greedy_ours(model, prompt, 24) == greedy_reference(reference, prompt, 24)


def test_meta_use_scaled_rope_matches_reference(tmp_path):
    scaling = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    reference = hf_llama(rope_parameters=scaling, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=352)
    save_meta(reference, tmp_path, extra_params={"use_scaled_rope": True})
    model, _ = load_weights(tmp_path)
    ids = tokens(1000, n=32)
    torch.testing.assert_close(our_logits(model, ids), reference_logits(reference, ids), atol=ATOL, rtol=0)


def test_bfloat16_stays_close_to_float32(tmp_path):
    reference = hf_llama()
    save_hf(reference, tmp_path)
    model32, _ = load_weights(tmp_path)
    model16, _ = load_weights(tmp_path, dtype="bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    ids = tokens(1000)
    diff = (our_logits(model16, ids).float() - our_logits(model32, ids)).abs().max()
    assert diff < 0.1
