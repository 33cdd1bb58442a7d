"""What several tokenizer formats share: the split patterns, the LLaMA-3 special tokens, the texts of the
tokens that end a turn, and GPT-2's byte-to-character table (vocab.json, tokenizer.json, GGUF)."""

from __future__ import annotations

import re

# GPT-2's pattern, shared by r50k_base and HF byte-level BPE vocabularies built for GPT-2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
SPECIAL_TOKEN = re.compile(r"^<\|.*\|>$")
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # a SentencePiece byte-fallback piece

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

# SmolLM2, StarCoder, Refact (llama.cpp's "smollm", "starcoder", "refact"; HF's Digits(individual_digits=True)
# then ByteLevel): every numeral is split off first, then GPT-2's regex runs on each piece between numerals. As
# one regex: numerals alone, no " ?\p{N}+", and a whitespace run before a numeral ends like one at the end of
# the text (whole).
DIGITS_THEN_GPT2_PATTERN = r"\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?=\p{N})|\s+(?!\S)|\s"
# Qwen2/2.5/3: LLaMA-3's regex with numerals one at a time; Qwen3.5 also keeps combining marks with letters.
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
QWEN35_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                  r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> the pre-tokenizer regex of that vocabulary (llama.cpp's llama-vocab.cpp names).
PRE_TOKENIZER_PATTERNS = {
    "default": GPT2_PATTERN,
    "gpt-2": GPT2_PATTERN,
    "smollm": DIGITS_THEN_GPT2_PATTERN,
    "starcoder": DIGITS_THEN_GPT2_PATTERN,
    "refact": DIGITS_THEN_GPT2_PATTERN,
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "qwen2": QWEN2_PATTERN,
    "qwen35": QWEN35_PATTERN,
}

# Token texts that end a turn in the families llmgen knows, besides the EOS ids a model declares
# (tokenizer.json's special tokens). GGUF vocabularies stop at the first four (GGUF_STOP_TOKEN_TEXTS).
STOP_TOKEN_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "</s>",
                    "<|end|>", "<end_of_turn>")
GGUF_STOP_TOKEN_TEXTS = STOP_TOKEN_TEXTS[:4]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table that spells every byte as a printable character in vocab.json (and GGUF)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table
