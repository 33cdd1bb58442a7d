"""The reference side of parity tests: logits and greedy ids from llmgen and from transformers on the same
weights and ids, and transformers' own tokenizers for llama.cpp's real vocabularies."""

import llama_cpp_vocab
import mistral_vocab
import torch

from llmgen.generation import SamplingSettings, generate_ids

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


_tokenizers = {}


def hf_tokenizer(vocab):
    """The real tokenizer, as transformers writes it into a model directory."""
    from transformers import AutoTokenizer, GemmaTokenizer, LlamaTokenizer

    if vocab not in _tokenizers:
        llama_cpp_vocab.fetch()
        source = llama_cpp_vocab.vocab_path(vocab)
        if vocab == "mistral-v3":
            directory = source.parent / "mistral-v3"
            directory.mkdir(exist_ok=True)
            (directory / "tokenizer.model").write_bytes(mistral_vocab.tokenizer_model().read_bytes())
            _tokenizers[vocab] = LlamaTokenizer.from_pretrained(str(directory))
        elif vocab == "gemma-4":
            directory = source.parent / "gemma-3-stand-in"
            directory.mkdir(exist_ok=True)
            llama_cpp_vocab.gemma_sentencepiece_model(directory / "tokenizer.model")
            _tokenizers[vocab] = GemmaTokenizer.from_pretrained(str(directory))
        else:
            _tokenizers[vocab] = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    return _tokenizers[vocab]
