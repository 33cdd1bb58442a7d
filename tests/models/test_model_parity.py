"""Parity with Hugging Face transformers on the same random weights, in every layout we read."""

import pytest
import torch
from checkpoints import HF_FAMILIES, hf_family, hf_gpt2, hf_llama, save_hf, save_meta
from parity import ATOL, greedy_ours, greedy_reference, our_logits, reference_logits, tokens

from llmgen.loading import load_weights

pytestmark = pytest.mark.slow

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


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_llama_like_families_match_reference(tmp_path, family):
    """Mistral, Qwen2 (q/k/v bias) and Qwen3 (q/k norms, head_dim apart from hidden / heads) from HF
    layout: logits and greedy ids equal transformers' on the same weights."""
    reference = hf_family(family)
    model, found = load_weights(save_hf(reference, tmp_path))
    assert found.kind == "hf" and model.config.qkv_bias == family.startswith("qwen2")
    assert bool(model.config.local_layers) == (family in ("mistral-swa", "qwen2-swa", "gemma3"))
    assert model.config.qk_norm == (family in ("qwen3", "gemma3"))
    ids = tokens(reference.config.vocab_size, n=40)
    torch.testing.assert_close(our_logits(model, ids), reference_logits(reference, ids), atol=ATOL, rtol=0)
    prompt = ids[0, :6].tolist()
    assert greedy_ours(model, prompt, 16) == greedy_reference(reference, prompt, 16)


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_llama_like_families_quantized_decode_equals_their_forward(tmp_path, family):
    """The default (int4) path, on llmgen's kernel decoder: q/k/v with Qwen2's biases fused, Qwen3's q/k
    norms in the kernels' decode loop, Gemma 3's post-norms, GeGLU and local windows (8 positions, crossed
    here).
    - float32: PyTorch's decode steps 4 .. 19 after a 4-token prompt equal the forward pass;
    - int4: at each of those positions, after the same prompt, the kernels' step equals PyTorch's step on
      the same model. Both round activations to 8 bits, from norms computed in C and in PyTorch: a value
      on a rounding edge can land either side and move a random model's logits by up to ~5e-2 at that
      position, so three of the 16 positions may differ by that much (phi3 on an AVX2 EPYC: three, before
      and after the GEMM; a wrong window, norm or activation
      would show at every position past it)."""
    from llmgen import kernels
    from llmgen.decode import Decoder, choose_decoder
    from llmgen.quantization.model import quantize_model

    if kernels.library() is None:
        pytest.skip(f"llmgen's kernels do not run here: {kernels.unavailable_reason()}")
    reference = hf_family(family, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                          num_key_value_heads=2, **({"head_dim": 32} if family in ("qwen3", "gemma3") else {}))
    model, _ = load_weights(save_hf(reference, tmp_path))
    ids = tokens(reference.config.vocab_size, n=20)[:1]
    positions = range(4, ids.size(1))

    def step(decoder, t):  # the logits of the step at position t, after a prompt of ids[:t]
        model.setup_cache(1, 32)
        model(ids[:, :t], 0)
        return decoder(int(ids[0, t]), t)

    model.float().setup_cache(1, 32)
    with torch.inference_mode():
        expected = model(ids, 0)[0]
        model.setup_cache(1, 32)
        model(ids[:, :4], 0)
        pytorch_decoder = Decoder(model, "pytorch", "float32 reference")
        steps = torch.stack([pytorch_decoder(int(ids[0, t]), t) for t in positions])
    torch.testing.assert_close(steps, expected[4:], atol=1e-4, rtol=0)
    quantize_model(model, "int4")
    decoder, pytorch_decoder = choose_decoder(model), Decoder(model, "pytorch", "int4 reference")
    assert decoder.use_kernels, decoder
    with torch.inference_mode():
        errors = torch.stack([(step(decoder, t) - step(pytorch_decoder, t)).abs().max() for t in positions])
    assert (errors < 1e-3).sum() >= len(positions) - 3 and errors.max() < 0.1, errors
    if family == "qwen2":  # the fused q/k/v carries the biases: its output is the float one's, to int4 error
        attention = reference.model.layers[0].self_attn
        x = torch.randn(3, reference.config.hidden_size)
        fused = model.layers[0].attention.wqkv
        with torch.inference_mode():
            # q and k rows are in llmgen's RoPE order (interleaved): compare v's, and the norms of q's and k's
            expected_v = attention.v_proj(x)
            got = fused(x)
        q_size, kv_size = attention.q_proj.out_features, attention.v_proj.out_features
        # int4's error is a few percent of the output; a dropped bias (as large as the rest) would be ~70%
        assert (got[:, q_size + kv_size:] - expected_v).norm() < 0.15 * expected_v.norm()
        with torch.inference_mode():
            for part, projection in ((got[:, :q_size], attention.q_proj), (got[:, q_size:q_size + kv_size],
                                                                              attention.k_proj)):
                expected = projection(x)
                assert (part.norm(dim=-1) - expected.norm(dim=-1)).abs().max() < 0.15 * expected.norm(dim=-1).min()


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_phi3_longrope_matches_reference_within_its_original_window(tmp_path, partial):
    """Phi-3.5's long-context RoPE: frequencies divided by short_factor, rotations scaled by its attention
    factor; the context stops at the original window, beyond which the long factors would apply. With
    Phi-4-mini's partial RoPE the factors cover the pairs that turn, and the scale only them."""
    head_pairs = int(8 * partial)  # head_dim 16 / 2, of which this part turns
    rope = {"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(head_pairs)],
            "long_factor": [2.0 + i for i in range(head_pairs)], "original_max_position_embeddings": 64,
            "rope_theta": 10000.0, "partial_rotary_factor": partial}
    reference = hf_family("phi3", max_position_embeddings=256, original_max_position_embeddings=64,
                          rope_parameters=rope, rope_scaling=rope, partial_rotary_factor=partial)
    model, _ = load_weights(save_hf(reference, tmp_path))
    assert model.config.context_length == 64 and model.config.rope_attention_factor > 1
    assert model.config.rotary_dim == 2 * head_pairs
    ids = tokens(reference.config.vocab_size, n=40)
    torch.testing.assert_close(our_logits(model, ids), reference_logits(reference, ids), atol=ATOL, rtol=0)


def test_sliding_windows_are_read_as_transformers_reads_them():
    """(The -swa families above run windows against transformers.) Qwen2.5's config.json names a window
    but turns it off; a window as long as the context is none; Mistral's covers every layer and leaves
    the context whole."""
    from llmgen.config import LlamaConfig

    base = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": 4096}
    qwen = LlamaConfig.from_hf({**base, "model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False})
    assert (qwen.sliding_window, qwen.local_layers) == (0, ())
    long = LlamaConfig.from_hf({**base, "model_type": "mistral", "sliding_window": 4096})
    assert (long.sliding_window, long.local_layers) == (0, ())
    mistral = LlamaConfig.from_hf({**base, "model_type": "mistral", "sliding_window": 1024})
    assert (mistral.sliding_window, mistral.local_layers, mistral.context_length) == (1024, (True,) * 3, 4096)


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


@pytest.mark.parametrize("tied", [False, True], ids=["head", "tied"])
def test_a_bf16_checkpoint_decodes_on_the_bf16_kernel_as_stored(tmp_path, tied):
    """A bfloat16 checkpoint (Meta's layout, memory-mapped) on a CPU: by default its matrices stay the
    file's bf16 pages (Bf16Linear, nothing copied or converted) and run on llmgen's bf16 kernel with
    float32 activations and caches. Logits equal transformers' float32 on the same bf16 values, greedy ids
    too, and each decode step equals the forward pass."""
    import copy

    from llmgen import kernels
    from llmgen.decode import choose_decoder
    from llmgen.quantization.bf16 import Bf16Linear, bf16_on_kernels

    if kernels.library() is None:
        pytest.skip(f"llmgen's kernels do not run here: {kernels.unavailable_reason()}")
    reference = hf_llama(hidden_size=256, intermediate_size=704, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=tied).to(torch.bfloat16).float()  # weights exact in bf16
    save_meta(copy.deepcopy(reference).to(torch.bfloat16), tmp_path)
    model, _ = load_weights(tmp_path)
    stored = {name: t.data_ptr() for name, t in model.state_dict().items() if t.dim() == 2}
    bf16_on_kernels(model)
    layer = model.layers[0]
    assert isinstance(layer.attention.wqkv, Bf16Linear) and isinstance(model.output, Bf16Linear)
    assert layer.attention.wqkv.weight0.data_ptr() == stored["layers.0.attention.wq.weight"]  # the file's pages
    assert model.norm.weight.dtype == torch.float32
    decoder = choose_decoder(model)
    assert decoder.use_kernels, decoder
    ids = tokens(1000, n=20)[:1]
    expected = reference_logits(reference, ids)[0]
    got = our_logits(model, ids)[0]
    torch.testing.assert_close(got, expected, atol=ATOL * expected.abs().max().item() * 2, rtol=0)
    prompt = ids[0, :6].tolist()
    assert greedy_ours(model, prompt, 16) == greedy_reference(reference, prompt, 16)
    model.setup_cache(1, 32)
    with torch.inference_mode():
        model(ids[:, :4], 0)
        steps = torch.stack([decoder(int(ids[0, t]), t) for t in range(4, ids.size(1))])
    torch.testing.assert_close(steps, got[4:], atol=1e-5, rtol=0)


def test_bf16_linear_without_the_kernels_is_the_same_product():
    from llmgen.quantization.bf16 import Bf16Linear

    generator = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 96, generator=generator).bfloat16() for n in (40, 24)]
    bias, x = torch.randn(64, generator=generator), torch.randn(3, 96, generator=generator)
    expected = x.double() @ torch.cat(parts).double().T + bias.double()
    for own_kernel in (True, False):
        got = Bf16Linear(parts, bias, own_kernel=own_kernel)(x)
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
