"""Hugging Face byte-level BPE vocabularies as tiktoken Encodings: GPT-2's vocab.json + merges.txt (and
any token-text -> id vocabulary, as GGUF stores one)."""

from __future__ import annotations

from pathlib import Path

import tiktoken

from llmgen.errors import LLMGenError
from llmgen.tokenization.tokenizer import Tokenizer
from llmgen.tokenization.vocab import GPT2_PATTERN, SPECIAL_TOKEN, bytes_to_unicode


def encoding_from_vocab(name: str, vocab: dict[str, int], pattern: str,
                        special_tokens: set[str] | None = None) -> tiktoken.Encoding:
    """A byte-level BPE vocabulary (token text -> id) as a tiktoken Encoding with rank = id.

    tiktoken merges the pair with the lowest rank first; in these vocabularies a merged token's id is
    its merge's position, so ids are valid ranks. Special tokens are `special_tokens`, or when not
    given, the tokens spelled <|...|>.
    """
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    ranks, special = {}, {}
    for token, token_id in vocab.items():
        if token in special_tokens if special_tokens is not None else SPECIAL_TOKEN.match(token):
            special[token] = token_id
            continue
        try:
            ranks[bytes(byte_of[ch] for ch in token)] = token_id
        except KeyError:
            raise LLMGenError(f"{name}: token {token!r} is not in GPT-2's byte-level alphabet") from None
    try:
        return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
    except ValueError as e:
        raise LLMGenError(f"{name} is not a valid BPE vocabulary: {e}") from None


def gpt2_from_dir(directory: Path) -> Tokenizer | None:
    vocab_path = directory / "vocab.json"
    if not (vocab_path.is_file() and (directory / "merges.txt").is_file()):
        return None
    import json

    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise LLMGenError(f"{vocab_path} is not a JSON vocabulary: {str(e)[:200]}") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise LLMGenError(f"{vocab_path} must map token strings to integer ids")
    encoding = encoding_from_vocab(f"gpt2:{directory.name}", vocab, GPT2_PATTERN)
    stop = tuple(i for t, i in vocab.items() if t == "<|endoftext|>")
    return Tokenizer(name="gpt2", encoding=encoding, stop_ids=stop)
