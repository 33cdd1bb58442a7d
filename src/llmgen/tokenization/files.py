"""The tokenizer stored with a model: a file, or a model directory's tokenizer files, in order of exactness."""

from __future__ import annotations

from pathlib import Path

from llmgen.errors import LLMGenError
from llmgen.tokenization.gpt2_vocab import gpt2_from_dir
from llmgen.tokenization.tiktoken_files import load_llama3
from llmgen.tokenization.tokenizer import Tokenizer


def tokenizer_from_path(path: Path) -> Tokenizer:
    """The tokenizer stored in a file or a model directory (the hook model formats extend)."""
    path = Path(path)
    if not path.exists():
        raise LLMGenError(f"tokenizer path not found: {path}")
    if path.is_dir():
        for loader in MODEL_VOCABULARIES:
            tokenizer = loader(path)
            if tokenizer is not None:
                return tokenizer
        raise LLMGenError(f"no tokenizer found in {path} (expected tokenizer.model, tokenizer.json, or vocab.json + "
                          "merges.txt)")
    if path.name == "tokenizer.json":  # with the tokenizer_config.json etc. beside it
        tokenizer = tokenizer_json_from_dir(path.parent)
        if tokenizer is None:
            raise LLMGenError(f"tokenizer path not found: {path}")
        return tokenizer
    return load_llama3(path)


def _llama3_from_dir(directory: Path) -> Tokenizer | None:
    for candidate in (directory / "tokenizer.model", directory / "original" / "tokenizer.model"):
        if candidate.is_file() and (_is_tiktoken_file(candidate) or not (directory / "tokenizer.json").is_file()):
            return load_llama3(candidate)
    return None


def _is_tiktoken_file(path: Path) -> bool:
    """Meta's LLaMA-3 tokenizer.model is text (a base64 token and a rank per line); LLaMA-2's and Mistral's
    are SentencePiece protobufs, which their directories' tokenizer.json describes instead."""
    with open(path, "rb") as f:
        head = f.read(256)
    return all(32 <= b < 127 or b in b"\r\n" for b in head)



def tokenizer_json_from_dir(directory: Path) -> Tokenizer | None:
    from llmgen.tokenization.hf import load_tokenizer_json  # imports Hugging Face's tokenizers: only when needed

    return load_tokenizer_json(directory)


# Each entry: model directory -> Tokenizer, or None when the directory has no vocabulary of that kind. In
# order: tiktoken where it is exact (Meta's tokenizer.model), then tokenizer.json (any pipeline, run by
# Hugging Face's tokenizers), then GPT-2's vocab.json + merges.txt without one.
MODEL_VOCABULARIES = [_llama3_from_dir, tokenizer_json_from_dir, gpt2_from_dir]
