"""Model families from GGUF as llama.cpp writes them: tiny random Qwen2, Qwen3 and Phi-3 models in Hugging
Face layout with the family's real tokenizer, converted by llama.cpp's own convert_hf_to_gguf.py (float32,
and Q8_0), then run by llmgen against transformers on the Hugging Face original. These GGUFs keep q and k
rows in Hugging Face's order (llama.cpp's NEOX RoPE) and Phi-3's q/k/v and gate/up fused; llmgen reorders
and splits them as it reads, quantized blocks included."""

import llama_cpp_vocab
import mistral_vocab
import pytest
import torch
from checkpoints import hf_family, save_hf
from gguf_files import assert_kept_matches_dequantized_on_the_kernels
from parity import greedy_ours, greedy_reference, hf_tokenizer

from llmgen.loading import load_model
from llmgen.weights.layout import model_tokenizer

pytestmark = pytest.mark.slow  # the tokenizer conversion (12 s) and llama.cpp's converter

# family -> its real vocabulary (llama.cpp's vocab GGUFs): Qwen's byte-level BPE, Phi-3's SentencePiece;
# Mistral's v3 SentencePiece model from Mistral's own mistral-common package (mistral_vocab.py).
# Gemma 3's tokenizer is not available offline either: Gemma 4's vocabulary (262144 pieces, the same kind)
# stands in, as the SentencePiece model a Gemma 3 directory ships, from which transformers builds its own.
FAMILIES = {"qwen2": "qwen2", "qwen3": "qwen2", "phi3": "phi-3", "mistral": "mistral-v3", "gemma3": "gemma-4"}
# llama.cpp reads Gemma 3's layer pattern as every 6th layer global and scales queries by 1/sqrt(head_dim);
# the reference is configured the same way (transformers takes them from config.json, the converter drops them).
FAMILY_CONFIGS = {"gemma3": dict(num_hidden_layers=6, layer_types=["sliding_attention"] * 5 + ["full_attention"],
                                 query_pre_attn_scalar=16, tie_word_embeddings=True)}
PROMPTS = ("The capital of France is", "武汉是一座历史悠久的城市", "1, 2, 3, 5, 8, 13,")
def test_gemma_stand_in_is_the_real_vocabulary():
    """The rebuilt SentencePiece model, through transformers, gives the ids of every llama.cpp test vector."""
    tokenizer = hf_tokenizer("gemma-4")
    for text, ids in llama_cpp_vocab.vectors("gemma-4"):
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    name, vocab = request.param, FAMILIES[request.param]
    directory = tmp_path_factory.mktemp(name)
    tokenizer = hf_tokenizer(vocab)
    reference = hf_family(name, vocab_size=len(tokenizer), **FAMILY_CONFIGS.get(name, {}))
    save_hf(reference, directory / "hf")
    tokenizer.save_pretrained(directory / "hf")
    if vocab == "phi-3":  # llama.cpp's converter reads these from the SentencePiece model
        llama_cpp_vocab.sentencepiece_model(vocab, directory / "hf" / "tokenizer.model")
    elif vocab == "mistral-v3":
        (directory / "hf" / "tokenizer.model").write_bytes(mistral_vocab.tokenizer_model().read_bytes())
    elif vocab == "gemma-4":
        llama_cpp_vocab.gemma_sentencepiece_model(directory / "hf" / "tokenizer.model")
    files = {outtype: llama_cpp_vocab.convert_hf_to_gguf(directory / "hf", directory / f"{outtype}.gguf", outtype)
             for outtype in ("f32", "q8_0")}
    return name, reference, files


def test_float_gguf_matches_transformers_and_its_tokenizer_the_hf_one(family):
    name, reference, files = family
    reference_tokenizer = hf_tokenizer(FAMILIES[name])
    loaded = load_model(files["f32"], quantize="none")
    assert loaded.model.config.qkv_bias == (name == "qwen2")
    assert loaded.model.config.qk_norm == (name in ("qwen3", "gemma3"))
    tokenizer = model_tokenizer(files["f32"])
    for text in PROMPTS:
        prompt = tokenizer.encode(text)
        assert tokenizer.encode(text, bos=False) == reference_tokenizer.encode(text, add_special_tokens=False)
        ids = torch.tensor([prompt])
        loaded.model.setup_cache(1, 64)
        with torch.inference_mode():
            torch.testing.assert_close(loaded.model(ids, 0), reference(ids).logits, atol=1e-4, rtol=0)
        assert greedy_ours(loaded.model, prompt, 16) == greedy_reference(reference, prompt, 16)


def test_q8_0_gguf_kept_as_stored_matches_its_float32_self(family):
    """Q8_0 rows reordered as stored: the top logits close to the same file dequantized, and each decode
    step equal to the forward pass, on llmgen's kernels."""
    _, _, files = family
    dequantized, kept = load_model(files["q8_0"], quantize="none").model, load_model(files["q8_0"]).model
    ids = torch.tensor([[97, 1879, 11, 1096, 374, 264, 1273, 13]])
    assert_kept_matches_dequantized_on_the_kernels(dequantized, kept, ids)
