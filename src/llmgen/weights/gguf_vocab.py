"""A GGUF file's tokenizer: the vocabulary in its metadata (byte-level BPE as a tiktoken Encoding, or
SentencePiece), BOS/EOS, stop tokens and chat template."""
from __future__ import annotations

from llmgen.errors import LLMGenError
from llmgen.tokenization.gpt2_vocab import encoding_from_vocab
from llmgen.tokenization.tokenizer import Tokenizer
from llmgen.tokenization.vocab import GGUF_STOP_TOKEN_TEXTS, PRE_TOKENIZER_PATTERNS, bytes_to_unicode
from llmgen.weights.gguf_file import GGUFFile

TOKEN_TYPE_NORMAL = 1


def gguf_tokenizer(gguf_file: GGUFFile) -> Tokenizer:
    """The vocabulary stored in the GGUF metadata as a tiktoken Encoding (byte-level BPE models)."""
    model = gguf_file.require("tokenizer.ggml.model", str)
    if model == "llama":
        return _sentencepiece_tokenizer(gguf_file)
    if model != "gpt2":
        raise LLMGenError(f"{gguf_file.path.name}: GGUF tokenizer model {model!r:.40} is not supported "
                          "(gpt2, llama)")
    pre = gguf_file.typed("tokenizer.ggml.pre", str, "default")
    if pre not in PRE_TOKENIZER_PATTERNS:
        raise LLMGenError(f"{gguf_file.path.name}: GGUF pre-tokenizer {pre!r:.40} is not supported "
                          f"({', '.join(PRE_TOKENIZER_PATTERNS)})")
    tokens = gguf_file.require("tokenizer.ggml.tokens", list)
    types = gguf_file.typed("tokenizer.ggml.token_type", list) or [TOKEN_TYPE_NORMAL] * len(tokens)
    if not all(isinstance(t, str) for t in tokens) or len(types) != len(tokens):
        raise LLMGenError(f"{gguf_file.path.name}: GGUF tokenizer.ggml.tokens must be strings, one type each")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise LLMGenError(f"{gguf_file.path.name}: GGUF vocabulary lists a token twice")
    special = {token for token, kind in zip(tokens, types) if kind != TOKEN_TYPE_NORMAL}
    encoding = encoding_from_vocab(f"gguf:{gguf_file.path.name}", vocab, PRE_TOKENIZER_PATTERNS[pre], special)
    present = {token[0] for token in tokens if len(token) == 1}  # the byte-level alphabet's characters
    missing = frozenset(b for b, ch in bytes_to_unicode().items() if ch not in present)
    stop = {vocab[t] for t in GGUF_STOP_TOKEN_TEXTS if t in vocab}
    if (eos := gguf_file.typed("tokenizer.ggml.eos_token_id", int)) is not None:
        stop.add(eos)
    declared_bos = gguf_file.typed("tokenizer.ggml.bos_token_id", int)
    if any(i is not None and not 0 <= i < len(tokens) for i in (eos, declared_bos)):
        raise LLMGenError(f"{gguf_file.path.name}: GGUF BOS/EOS token ids lie outside the vocabulary")
    bos = declared_bos if gguf_file.get("tokenizer.ggml.add_bos_token") else None
    return Tokenizer(name=f"gguf:{pre}", encoding=encoding, bos_id=bos, stop_ids=tuple(sorted(stop)),
                     chat_format=_chat_format(gguf_file), missing_bytes=missing,
                     chat_template=gguf_file.typed("tokenizer.chat_template", str), eos_id=eos,
                     chat_template_source=f"{gguf_file.path} (tokenizer.chat_template)",
                     declared_bos_id=declared_bos)


def _chat_format(gguf_file: GGUFFile) -> str | None:
    template = gguf_file.typed("tokenizer.chat_template", str) or ""
    return "chatml" if "<|im_start|>" in template else "llama3" if "<|start_header_id|>" in template else None


def _sentencepiece_tokenizer(gguf_file: GGUFFile) -> Tokenizer:
    """A SentencePiece vocabulary (LLaMA-2, Mistral, Phi-3): pieces, scores and types (spm.py)."""
    from llmgen.tokenization.spm import SentencePieceEncoding

    name = gguf_file.path.name
    tokens = gguf_file.require("tokenizer.ggml.tokens", list)
    scores = gguf_file.typed("tokenizer.ggml.scores", list) or [0.0] * len(tokens)
    types = gguf_file.typed("tokenizer.ggml.token_type", list) or [TOKEN_TYPE_NORMAL] * len(tokens)
    if (not all(isinstance(t, str) for t in tokens) or len(scores) != len(tokens) or len(types) != len(tokens)
            or not all(isinstance(s, (int, float)) for s in scores) or not all(isinstance(t, int) for t in types)):
        raise LLMGenError(f"{name}: GGUF SentencePiece vocabulary must give each token a score and a type")
    try:
        encoding = SentencePieceEncoding(f"gguf:{name}", tokens, scores, types,
                                         add_space_prefix=gguf_file.typed("tokenizer.ggml.add_space_prefix",
                                                                          bool, True))
    except ValueError as e:
        raise LLMGenError(f"{name}: {e}") from None
    ids: dict[str, int | None] = {}
    for key in ("bos", "eos"):
        ids[key] = token_id = gguf_file.typed(f"tokenizer.ggml.{key}_token_id", int)
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise LLMGenError(f"{name}: GGUF BOS/EOS token ids lie outside the vocabulary")
    stop = {i for t, i in encoding.special_tokens.items() if t in GGUF_STOP_TOKEN_TEXTS + ("</s>", "<|end|>")}
    if ids["eos"] is not None:
        stop.add(ids["eos"])
    add_bos = gguf_file.typed("tokenizer.ggml.add_bos_token", bool, True)  # SentencePiece models default to BOS
    return Tokenizer(name="gguf:llama", encoding=encoding, bos_id=ids["bos"] if add_bos else None,
                     stop_ids=tuple(sorted(stop)), chat_format=_chat_format(gguf_file),
                     chat_template=gguf_file.typed("tokenizer.chat_template", str), eos_id=ids["eos"],
                     chat_template_source=f"{gguf_file.path} (tokenizer.chat_template)",
                     declared_bos_id=ids["bos"])
