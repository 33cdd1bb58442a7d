"""tiktoken's encodings offline (cl100k_base, gpt2 = r50k_base) and Meta's LLaMA-3 tokenizer.model.

Imported where used, not here: tiktoken.load (hashlib's OpenSSL: 11 ms), json, tempfile. This module is on
the path of `llmgen tokenize "hi"`, which aims to start within 1.3x of `import tiktoken`.
"""

from __future__ import annotations

import os
from pathlib import Path

import tiktoken

from llmgen import assets
from llmgen.errors import LLMGenError, UsageError
from llmgen.tokenization.ranks import BinaryRanks
from llmgen.tokenization.tokenizer import Tokenizer
from llmgen.tokenization.vocab import (
    GPT2_PATTERN,
    LLAMA3_NAMED_SPECIAL,
    LLAMA3_NUM_SPECIAL,
    LLAMA3_PATTERN,
    LLAMA3_STOP,
)

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
        GPT2_PATTERN,
        {"<|endoftext|>": 50256},
    ),
}


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
