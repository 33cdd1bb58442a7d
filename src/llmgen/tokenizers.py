"""Tokenizers as tiktoken Encodings: cl100k_base, gpt2 (= r50k_base), LLaMA-3, and model vocabularies.

A `Tokenizer` is a tiktoken Encoding plus what generation needs to know about it: whether prompts start
with a BOS token and which ids end a generation. Special-token strings typed by a user are encoded as
plain text unless `allow_special` is set, so "<|endoftext|>" in a prompt cannot end it early.
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path
from typing import NamedTuple

import tiktoken

from llmgen import assets
from llmgen.errors import LLMGenError, UsageError
from llmgen.ranks import BinaryRanks

# Imported where used, not here: tiktoken.load (hashlib's OpenSSL: 11 ms), json, tempfile. This module
# is on the path of `llmgen tokenize "hi"`, which aims to start within 1.3x of `import tiktoken`.

DEFAULT_ENCODING = "cl100k_base"

# tiktoken's own encodings, by the blob URL it caches them under (see tiktoken.load.read_file_cached).
TIKTOKEN_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "r50k_base": "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
}
# gpt2 and r50k_base have the same ranks, pattern and <|endoftext|> = 50256; tiktoken's "gpt2"
# reads them from encoder.json + vocab.bpe, which no offline source ships, so we serve r50k_base.
ENCODING_ALIASES = {"gpt2": "r50k_base"}
ENCODINGS = ("cl100k_base", "gpt2", "r50k_base", "llama3")

# Patterns and special tokens of tiktoken's encodings (tiktoken_ext/openai_public.py, which builds them
# only together with parsing the ranks); tests check our encodings against tiktoken's own.
TIKTOKEN_DEFINITIONS = {
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
         "<|endofprompt|>": 100276},
    ),
    "r50k_base": (
        r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
        {"<|endoftext|>": 50256},
    ),
}

# Meta's tokenizer (llama_models/llama3/tokenizer.py, Llama 3.1+ names for the first special tokens).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_SPECIAL = 256
LLAMA3_NAMED_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message (tool calls)
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_STOP = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")


class Tokenizer(NamedTuple):
    name: str
    encoding: tiktoken.Encoding
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
        if self.missing_bytes and not self.missing_bytes.isdisjoint(text.encode("utf-8", "surrogatepass")):
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


# --- tiktoken's own encodings, offline -------------------------------------------------------------

def _tiktoken_cache_dir() -> str:
    # Mirrors tiktoken.load.read_file_cached.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    import tempfile

    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def seed_tiktoken_cache(name: str) -> None:
    """Put a hash-checked local copy of `name`'s ranks where tiktoken looks before it downloads."""
    cache_dir = _tiktoken_cache_dir()
    if cache_dir == "":  # the user disabled tiktoken's cache; tiktoken will download
        return
    import hashlib

    cache_path = Path(cache_dir) / hashlib.sha1(TIKTOKEN_URLS[name].encode()).hexdigest()
    if cache_path.exists():  # tiktoken checks its hash and re-downloads on mismatch
        return
    local = assets.locate(name)
    if local is not None:
        assets.write_atomically(cache_path, local.read_bytes())


def _tiktoken_encoding(name: str) -> tiktoken.Encoding:
    seed_tiktoken_cache(name)  # so that tiktoken.get_encoding(name) works offline too, for anyone
    ranks = _binary_ranks(name)
    if ranks is not None:
        return _encoding_over(name, ranks.to_dict())
    try:
        return tiktoken.get_encoding(name)
    except OSError as e:  # requests' ConnectionError is an OSError
        raise LLMGenError(
            f"the {name} ranks are not available offline and could not be downloaded ({type(e).__name__}); "
            + assets.how_to_get(name)
        ) from None
    except ValueError as e:  # tiktoken's hash mismatch on a download
        raise LLMGenError(f"the {name} ranks failed their integrity check: {e}") from None


def _encoding_over(name: str, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    """tiktoken's encoding `name` (cl100k_base, r50k_base) over these ranks: all of them, or some."""
    pattern, special = TIKTOKEN_DEFINITIONS[name]
    return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def binary_ranks_path(name: str) -> Path:
    return assets.data_dir() / "ranks" / f"{name}.bin"


def _binary_ranks(name: str) -> BinaryRanks | None:
    """The ranks' binary copy (ranks.py), made from the pinned asset when missing or damaged."""
    pinned = assets.ASSETS[name].sha256
    path = binary_ranks_path(name)
    ranks = BinaryRanks.read(path, pinned)
    if ranks is not None:
        return ranks
    local = assets.locate(name)
    if local is None:
        return None
    from tiktoken.load import load_tiktoken_bpe

    parsed = load_tiktoken_bpe(str(local), expected_hash=pinned)
    if list(parsed.values()) != list(range(len(parsed))):  # the format stores ranks by position
        return None
    data = BinaryRanks.encode(parsed, pinned)
    try:
        assets.write_atomically(path, data)
    except OSError:
        pass  # a read-only cache directory only costs speed
    return BinaryRanks.from_bytes(data, pinned)


# --- LLaMA-3 ---------------------------------------------------------------------------------------

def load_llama3(path: Path | None = None) -> Tokenizer:
    """Meta's tokenizer.model (base64 ranks) + the 256 special tokens from 128000 + Meta's pattern."""
    expected_hash = None
    if path is None:
        path = assets.locate("llama3")
        if path is None:
            raise LLMGenError("no LLaMA-3 tokenizer.model found; pass --tokenizer PATH or " + assets.how_to_get("llama3"))
        expected_hash = assets.ASSETS["llama3"].sha256
    path = Path(path)
    if not path.is_file():
        raise LLMGenError(f"tokenizer file not found: {path}")
    from tiktoken.load import load_tiktoken_bpe

    try:
        ranks = load_tiktoken_bpe(str(path), expected_hash=expected_hash)
    except (ValueError, UnicodeDecodeError) as e:
        raise LLMGenError(f"{path} is not a tiktoken BPE file (a base64 token and a rank per line): {e}") from None
    if not ranks:
        raise LLMGenError(f"{path} holds no tokens")
    n_base = len(ranks)
    names = LLAMA3_NAMED_SPECIAL + [
        f"<|reserved_special_token_{2 + i}|>" for i in range(LLAMA3_NUM_SPECIAL - len(LLAMA3_NAMED_SPECIAL))
    ]
    special = {token: n_base + i for i, token in enumerate(names)}
    try:
        encoding = tiktoken.Encoding(
            name=f"llama3:{path.name}", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=special
        )
    except ValueError as e:  # e.g. ranks that are not a permutation of 0..n-1
        raise LLMGenError(f"{path} is not a valid tokenizer: {e}") from None
    return Tokenizer(
        name="llama3",
        encoding=encoding,
        bos_id=special["<|begin_of_text|>"],
        stop_ids=tuple(special[t] for t in LLAMA3_STOP),
        chat_format="llama3",
    )


# --- lookup ----------------------------------------------------------------------------------------

def get_tokenizer(name: str) -> Tokenizer:
    """A tokenizer by encoding name: cl100k_base, gpt2, r50k_base or llama3."""
    key = name.lower()
    if key == "llama3":
        return load_llama3()
    base = ENCODING_ALIASES.get(key, key)
    if base not in TIKTOKEN_URLS:
        raise UsageError(f"unknown encoding {name!r}; choose one of: {', '.join(ENCODINGS)}")
    return _tiktoken_tokenizer(key, _tiktoken_encoding(base))


def _tiktoken_tokenizer(name: str, encoding: tiktoken.Encoding) -> Tokenizer:
    return Tokenizer(name=name, encoding=encoding, stop_ids=(encoding.eot_token,))


def tokenizer_for_text(name: str, text: str) -> Tokenizer:
    """get_tokenizer(name), built only to encode `text` (`llmgen tokenize`).

    For a short text, over the ranks of the byte strings inside it, which is all BPE can use: an
    encoding of 5 tokens instead of 100k builds in microseconds, not 0.07 s. Anything else (decoding,
    n_vocab, another text) needs get_tokenizer(name).
    """
    key = name.lower()
    base = ENCODING_ALIASES.get(key, key)
    if base in TIKTOKEN_DEFINITIONS and (ranks := BinaryRanks.read(binary_ranks_path(base),
                                                                   assets.ASSETS[base].sha256)) is not None:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, which tiktoken encodes as U+FFFD
            data = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
        used = ranks.within(data)
        if used is not None:
            return _tiktoken_tokenizer(key, _encoding_over(base, used))
    return get_tokenizer(name)


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
        return _tokenizer_json_from_dir(path.parent)
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


# --- Hugging Face byte-level BPE vocabularies (GPT-2's vocab.json + merges.txt) -----------------------

# GPT-2's pattern, shared by r50k_base and HF byte-level BPE vocabularies built for GPT-2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
SPECIAL_TOKEN = re.compile(r"^<\|.*\|>$")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table that spells every byte as a printable character in vocab.json (and GGUF)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


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


def _gpt2_from_dir(directory: Path) -> Tokenizer | None:
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


def _tokenizer_json_from_dir(directory: Path) -> Tokenizer | None:
    from llmgen.hf_tokenizer import load_tokenizer_json  # imports Hugging Face's tokenizers: only when needed

    return load_tokenizer_json(directory)


# Each entry: model directory -> Tokenizer, or None when the directory has no vocabulary of that kind. In
# order: tiktoken where it is exact (Meta's tokenizer.model), then tokenizer.json (any pipeline, run by
# Hugging Face's tokenizers), then GPT-2's vocab.json + merges.txt without one.
MODEL_VOCABULARIES = [_llama3_from_dir, _tokenizer_json_from_dir, _gpt2_from_dir]
