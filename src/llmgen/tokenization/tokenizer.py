"""A `Tokenizer`: an encoding (tiktoken's Encoding, or one with its interface: tokenizer.json, SentencePiece)
plus what generation needs to know about it: whether prompts start with a BOS token, which ids end a
generation, its chat format. Special-token strings typed by a user are encoded as plain text unless
`allow_special` is set, so "<|endoftext|>" in a prompt cannot end it early. And the streaming decoder that
turns ids into text as they arrive.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection, Sequence
from collections.abc import Set as AbstractSet
from typing import Literal, NamedTuple, Protocol

import tiktoken

from llmgen.errors import LLMGenError


class Encoding(Protocol):
    """What a Tokenizer uses of its encoding: tiktoken's Encoding has it, and so have tokenizer.json's
    (hf.TokenizersEncoding) and SentencePiece's (spm.SentencePieceEncoding)."""

    name: str

    @property
    def n_vocab(self) -> int: ...

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = ...,
               disallowed_special: Literal["all"] | Collection[str] = ...) -> list[int]: ...

    def encode_single_token(self, text: str) -> int: ...

    def decode_single_token_bytes(self, token_id: int) -> bytes: ...

    def decode(self, ids: Sequence[int], errors: str = ...) -> str: ...


class Tokenizer(NamedTuple):
    name: str
    encoding: Encoding
    bos_id: int | None = None  # prepended to every prompt when set (LLaMA-3)
    stop_ids: tuple[int, ...] = ()  # a generation ends at any of these
    chat_format: str | None = None  # "chatml" or "llama3": how chat.py wraps a prompt without a template
    chat_template: str | None = None  # the model's own Jinja2 chat template (chat_template.py renders it)
    chat_template_source: str = "the model's chat template"  # where it came from, for its errors
    eos_id: int | None = None  # the model's declared end-of-sequence token (a template's eos_token)
    # Its declared beginning-of-sequence token (a template's bos_token), whether or not prompts start with
    # it: a template may write it itself (Gemma's do); None: bos_id.
    declared_bos_id: int | None = None
    # Single bytes the vocabulary has no token for (SmolLM2 lacks 21): BPE cannot start from them.
    missing_bytes: frozenset[int] = frozenset()

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str, *, bos: bool = True, allow_special: bool = False) -> list[int]:
        if (self.missing_bytes and isinstance(self.encoding, tiktoken.Encoding)
                and not self.missing_bytes.isdisjoint(text.encode("utf-8", "surrogatepass"))):
            ids = encode_without_bytes(self.encoding, text, self.missing_bytes, allow_special)
        else:
            ids = self.encoding.encode(text, allowed_special="all" if allow_special else set(), disallowed_special=())
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        for i in ids:
            if not 0 <= i < self.n_vocab or not self.is_valid(i):
                raise LLMGenError(f"token id {i} is not in the {self.name} vocabulary (0..{self.n_vocab - 1})")
        return self.encoding.decode(ids, errors="replace")

    def is_valid(self, token_id: int) -> bool:
        try:
            self.encoding.decode_single_token_bytes(token_id)
        except KeyError:
            return False
        return True

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)


class StreamDecoder:
    """Token ids in, text out, as they arrive.

    A multi-byte UTF-8 character can be split across tokens (most CJK characters and emoji are, in
    byte-level BPE). The incremental decoder holds back an incomplete trailing sequence until the
    next token completes it, and replaces bytes that can never form valid UTF-8 with U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._token_bytes = tokenizer.token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def encode_without_bytes(encoding: tiktoken.Encoding, text: str, missing: frozenset[int],
                         allow_special: bool) -> list[int]:
    """BPE of a text holding bytes the vocabulary lacks, as Hugging Face's tokenizers does it (the
    reference for these vocabularies; it has no byte fallback): each pre-tokenized piece with those bytes
    dropped, the rest merged as usual. tiktoken itself cannot start BPE from a byte it has no rank for."""
    import regex

    pieces = regex.compile(encoding._pat_str)
    special = encoding._special_tokens if allow_special else {}
    chunks = regex.split("(" + "|".join(map(regex.escape, special)) + ")", text) if special else [text]
    ids = []
    for chunk in chunks:
        if chunk in special:
            ids.append(special[chunk])
            continue
        for match in pieces.finditer(chunk):
            kept = bytes(b for b in match.group().encode("utf-8", "surrogatepass") if b not in missing)
            if kept:
                ids.extend(encoding._encode_single_piece(kept))
    return ids


def piece(token: bytes) -> str:
    """A token's bytes shown readably: the text when it is valid UTF-8, else \\x escapes for the rest."""
    return token.decode("utf-8", errors="backslashreplace")
