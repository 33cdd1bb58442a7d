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
    """The real tokenizer, as transformers writes it into a model directory. transformers builds it from
    llama.cpp's vocabulary in pure Python (5-20 s for the 150k-262k-piece ones); what it built is kept on disk
    next to the vocabulary, per transformers version, and read back from its tokenizer.json after that."""
    from transformers import AutoTokenizer

    if vocab not in _tokenizers:
        _tokenizers[vocab] = AutoTokenizer.from_pretrained(str(hf_tokenizer_directory(vocab)))
    return _tokenizers[vocab]


def hf_tokenizer_directory(vocab):
    """Where hf_tokenizer's tokenizer is kept (tokenizer.json, tokenizer_config.json), built first if needed."""
    import os
    import shutil
    import tempfile

    import transformers

    llama_cpp_vocab.fetch()
    built = llama_cpp_vocab.vocab_path(vocab).parent / f"transformers-{transformers.__version__}" / vocab
    if not (built / "tokenizer.json").is_file():
        built.parent.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.mkdtemp(dir=built.parent)
        _build_hf_tokenizer(vocab).save_pretrained(scratch)
        try:
            os.rename(scratch, built)  # whole or not at all: another test worker may be building it too
        except OSError:  # it did, first
            shutil.rmtree(scratch)
    return built


def _build_hf_tokenizer(vocab):
    from transformers import AutoTokenizer, GemmaTokenizer, LlamaTokenizer

    source = llama_cpp_vocab.vocab_path(vocab)
    if vocab == "mistral-v3":
        directory = source.parent / "mistral-v3"
        directory.mkdir(exist_ok=True)
        (directory / "tokenizer.model").write_bytes(mistral_vocab.tokenizer_model().read_bytes())
        return LlamaTokenizer.from_pretrained(str(directory))
    if vocab == "gemma-4":
        directory = source.parent / "gemma-3-stand-in"
        directory.mkdir(exist_ok=True)
        llama_cpp_vocab.gemma_sentencepiece_model(directory / "tokenizer.model")
        return GemmaTokenizer.from_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
