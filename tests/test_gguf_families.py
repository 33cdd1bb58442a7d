"""Model families from GGUF as llama.cpp writes them: tiny random Qwen2 and Qwen3 models in Hugging Face
layout with Qwen's real tokenizer, converted by llama.cpp's own convert_hf_to_gguf.py (float32, and Q8_0),
then run by llmgen against transformers on the Hugging Face original. Qwen's GGUF rows for q and k are in
Hugging Face's order (llama.cpp's NEOX RoPE); llmgen reorders them as it reads, quantized blocks included."""

import llama_cpp_vocab
import pytest
import torch
from checkpoints import hf_family, save_hf
from test_model_parity import greedy_ours, greedy_reference

from llmgen.weights.loading import load_model, model_tokenizer

pytestmark = pytest.mark.slow  # the tokenizer conversion (12 s) and llama.cpp's converter

FAMILIES = ("qwen2", "qwen3")
PROMPTS = ("The capital of France is", "武汉是一座历史悠久的城市", "1, 2, 3, 5, 8, 13,")


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    """Qwen2's real tokenizer (llama.cpp's vocab GGUF), as transformers writes it into a model directory."""
    from transformers import AutoTokenizer

    llama_cpp_vocab.fetch()
    source = llama_cpp_vocab.vocab_path("qwen2")
    return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, qwen_tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    reference = hf_family(request.param, vocab_size=len(qwen_tokenizer))
    save_hf(reference, directory / "hf")
    qwen_tokenizer.save_pretrained(directory / "hf")
    files = {outtype: llama_cpp_vocab.convert_hf_to_gguf(directory / "hf", directory / f"{outtype}.gguf", outtype)
             for outtype in ("f32", "q8_0")}
    return request.param, reference, files


def test_float_gguf_matches_transformers_and_its_tokenizer_the_hf_one(family, qwen_tokenizer):
    name, reference, files = family
    loaded = load_model(files["f32"], quantize="none")
    assert loaded.model.config.qkv_bias == (name == "qwen2") and loaded.model.config.qk_norm == (name == "qwen3")
    tokenizer = model_tokenizer(files["f32"])
    for text in PROMPTS:
        prompt = tokenizer.encode(text)
        assert prompt == qwen_tokenizer.encode(text, add_special_tokens=False)
        ids = torch.tensor([prompt])
        loaded.model.setup_cache(1, 64)
        with torch.inference_mode():
            torch.testing.assert_close(loaded.model(ids, 0), reference(ids).logits, atol=1e-4, rtol=0)
        assert greedy_ours(loaded.model, prompt, 16) == greedy_reference(reference, prompt, 16)


def test_q8_0_gguf_kept_as_stored_matches_its_float32_self(family):
    """Q8_0 rows reordered as stored: the top logits close to the same file dequantized, and each decode
    step equal to the forward pass (on the kernels for Qwen2, PyTorch's ops for Qwen3)."""
    from llmgen.decode import choose_decoder

    name, _, files = family
    dequantized, kept = load_model(files["q8_0"], quantize="none").model, load_model(files["q8_0"]).model
    ids = torch.tensor([[9707, 1879, 11, 1096, 374, 264, 1273, 13]])
    for model in (dequantized, kept):
        model.setup_cache(1, 16)
    with torch.inference_mode():
        expected, got = dequantized(ids, 0)[0], kept(ids, 0)[0]
        top = expected.topk(8, dim=-1).indices
        assert (got.gather(-1, top) - expected.gather(-1, top)).abs().max() < 0.03 * expected.abs().max()
        decoder = choose_decoder(kept)
        assert decoder.use_kernels == (name == "qwen2"), decoder
        kept.setup_cache(1, 16)
        kept(ids[:, :-1], 0)
        step = decoder(int(ids[0, -1]), ids.size(1) - 1)
    torch.testing.assert_close(step, got[-1], atol=1e-3, rtol=1e-3)
