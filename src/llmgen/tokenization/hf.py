"""A Hugging Face model directory's tokenizer.json, through Hugging Face's `tokenizers` library.

tokenizer.json describes a whole pipeline (normalizer, pre-tokenizer, BPE/Unigram/WordPiece model,
post-processor, decoder) that tiktoken cannot express in general: Qwen's regex, SentencePiece vocabularies
with byte fallback, SmolLM2's digit splitting. The library that defines the format runs it. What generation
needs beyond ids comes from the same directory: BOS from the tokenizer's own post-processor, stop ids from
generation_config.json and tokenizer_config.json, the chat format from the chat template.

`TokenizersEncoding` offers the part of tiktoken.Encoding's interface a `Tokenizer` uses.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

from llmgen.errors import LLMGenError
from llmgen.tokenization.tokenizer import Tokenizer
from llmgen.tokenization.vocab import BYTE_PIECE, STOP_TOKEN_TEXTS, bytes_to_unicode

MAX_TOKENIZER_BYTES = 64 << 20  # real ones are 2-35 MB


class TokenizersEncoding:
    def __init__(self, name: str, tokenizer: Any, spec: dict):
        self.name = name
        self._tokenizer = tokenizer
        self._special_tokens = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self._bytes = _token_bytes(tokenizer, spec)

    @property
    def n_vocab(self) -> int:
        return len(self._bytes)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    def encode(self, text: str, *, allowed_special: Literal["all"] | Collection[str] = (),
               disallowed_special: Literal["all"] | Collection[str] = ()) -> list[int]:
        """Special-token strings in the text are text unless allowed ("all"), as with tiktoken."""
        self._tokenizer.encode_special_tokens = not allowed_special
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_single_token(self, text: str) -> int:
        token_id = self._tokenizer.token_to_id(text)
        if token_id is None:
            raise KeyError(text)
        return token_id

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        value = self._bytes[token_id] if 0 <= token_id < len(self._bytes) else None
        if value is None:
            raise KeyError(token_id)
        return value

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        return b"".join(self.decode_single_token_bytes(i) for i in ids).decode("utf-8", errors)


def _decoder_kinds(spec: dict) -> set[str]:
    decoder = spec.get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return {p["type"] for p in parts if isinstance(p, dict) and isinstance(p.get("type"), str)}


def _token_bytes(tokenizer: Any, spec: dict) -> list[bytes | None]:
    """Each id's bytes, as they appear in decoded text: GPT-2's byte alphabet undone for byte-level
    vocabularies; "▁" as a space and <0xXX> as its byte for SentencePiece-style ones; added tokens as
    written. None for an id the vocabulary skips."""
    kinds = _decoder_kinds(spec)
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()} if "ByteLevel" in kinds else None
    added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    table: list[bytes | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for token, token_id in vocab.items():
        if token_id in added:
            table[token_id] = added[token_id].encode("utf-8")
        elif byte_of is not None and all(ch in byte_of for ch in token):
            table[token_id] = bytes(byte_of[ch] for ch in token)
        elif "ByteFallback" in kinds and (match := BYTE_PIECE.fullmatch(token)):
            table[token_id] = bytes([int(match.group(1), 16)])
        else:
            table[token_id] = token.replace("\u2581", " ").encode("utf-8")
    return table


def load_tokenizer_json(directory: Path) -> Tokenizer | None:
    """The tokenizer of a model directory with a tokenizer.json, or None without one."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise LLMGenError(f"{path} is larger than any real tokenizer.json ({path.stat().st_size} bytes)")
    from tokenizers import Tokenizer as HFTokenizer

    settings = _json_object(directory / "tokenizer_config.json")
    generation = _json_object(directory / "generation_config.json")
    template, template_source = settings.get("chat_template"), str(directory / "tokenizer_config.json")
    if not isinstance(template, str):  # transformers 5 writes it to a file of its own
        jinja = directory / "chat_template.jinja"
        template = jinja.read_text(encoding="utf-8", errors="replace") if jinja.is_file() else ""
        template_source = str(jinja)
    try:
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text)
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
        marked = _markers_special(spec, template)
        tokenizer = HFTokenizer.from_str(text if marked is spec else json.dumps(marked))
    except Exception as e:  # json's ValueError, UnicodeDecodeError; tokenizers raises plain Exceptions
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise LLMGenError(f"{path} is not a tokenizer.json: {reason}") from None
    encoding = TokenizersEncoding(f"tokenizer.json:{directory.name}", tokenizer, spec)

    # BOS: what the tokenizer's own post-processor puts in front of a text.
    with_specials = tokenizer.encode("a", add_special_tokens=True).ids
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    bos = with_specials[0] if len(with_specials) > len(plain) and with_specials[1:len(plain) + 1] == plain else None

    stop = {i for text, i in encoding.special_tokens.items() if text in STOP_TOKEN_TEXTS}
    declared_eos = _token_id(tokenizer, settings.get("eos_token"))
    for eos in (generation.get("eos_token_id"), declared_eos):
        for token_id in eos if isinstance(eos, list) else [eos]:
            if isinstance(token_id, int) and not isinstance(token_id, bool) and 0 <= token_id < encoding.n_vocab:
                stop.add(token_id)
    chat_format = "chatml" if "<|im_start|>" in template else "llama3" if "<|start_header_id|>" in template else None
    return Tokenizer(name="tokenizer.json", encoding=encoding, bos_id=bos, stop_ids=tuple(sorted(stop)),
                     chat_format=chat_format, chat_template=template or None, eos_id=declared_eos,
                     chat_template_source=template_source,
                     declared_bos_id=_token_id(tokenizer, settings.get("bos_token")))


def _markers_special(spec: dict, template: str) -> dict:
    """The spec with every added token that is a marker marked special, whatever the file says: one the chat
    template writes, or one that looks like a control token by llama.cpp's rule (`<|...|>`, `<｜...｜>`,
    `<unused...>`, `<pad>`, `<mask>`). Special tokens are never made from text a user typed, so a file that
    calls `<|im_start|>` "special": false cannot let a message open a turn."""
    def is_marker(content: str) -> bool:
        bracketed = len(content) >= 3 and content[0] in "<[" and content[-1] in ">]" and content.strip() == content
        return (content.startswith("<|") and content.endswith("|>") or content.startswith("<｜") and content.endswith("｜>")
                or content.startswith("<unused") and content.endswith(">") or content in ("<pad>", "<mask>")
                or bracketed and content in template)

    added = spec.get("added_tokens")
    if not isinstance(added, list):
        return spec
    forged = [i for i, token in enumerate(added) if isinstance(token, dict) and not token.get("special")
              and isinstance(token.get("content"), str) and is_marker(token["content"])]
    if not forged:
        return spec
    return {**spec, "added_tokens": [{**t, "special": True} if i in forged else t for i, t in enumerate(added)]}


def _json_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise LLMGenError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise LLMGenError(f"{path} is not a readable JSON file: nested too deeply") from None
    return value if isinstance(value, dict) else {}


def _token_id(tokenizer: Any, token: Any) -> int | None:
    """tokenizer_config.json writes a token as its text or as {"content": text, ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return tokenizer.token_to_id(token) if isinstance(token, str) else None
