"""SentencePiece BPE vocabularies (LLaMA-2, Mistral, Phi-3): GGUF's `tokenizer.ggml.model = llama`.

SentencePiece does not split text into words first. It writes every space as "▁" (U+2581), puts one in
front of the text, starts from single characters and merges, again and again, the adjacent pair whose
merged piece has the highest score in the vocabulary (the leftmost pair among equal scores). A character
with no piece of its own is written as its UTF-8 bytes, each the byte token <0xXX> ("byte fallback"), so
no input is out of vocabulary. This is llama.cpp's `llm_tokenizer_spm`, and SentencePiece's own
algorithm; llama.cpp's test vectors for the LLaMA and Phi-3 vocabularies check it (tests/tokenization/test_vocab_vectors.py).

`SentencePieceEncoding` offers the part of tiktoken.Encoding's interface a `Tokenizer` uses.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Collection, Sequence
from typing import Literal

from llmgen.tokenization.vocab import BYTE_PIECE

SPACE = "\u2581"  # "▁": how SentencePiece writes a space inside a piece

# GGUF token types (llama.cpp's llama_token_attr before attributes): which pieces text may merge into.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MERGEABLE = (NORMAL, USER_DEFINED)


class SentencePieceEncoding:
    def __init__(self, name: str, pieces: Sequence[str], scores: Sequence[float], types: Sequence[int],
                 add_space_prefix: bool = True):
        if not len(pieces) == len(scores) == len(types):
            raise ValueError("pieces, scores and types differ in length")
        self.name = name
        self.add_space_prefix = add_space_prefix
        self._pieces = list(pieces)
        # text -> (id, score) for the pieces text may become; control tokens ("<s>") only as specials.
        self._mergeable = {p: (i, float(s)) for i, (p, s, t) in enumerate(zip(pieces, scores, types))
                           if t in MERGEABLE}
        self._special_tokens = {p: i for i, (p, t) in enumerate(zip(pieces, types)) if t == CONTROL}
        self._byte_ids: dict[int, int] = {}
        self._bytes: list[bytes] = []
        for i, (p, t) in enumerate(zip(pieces, types)):
            if t == BYTE and (m := BYTE_PIECE.fullmatch(p)):
                self._byte_ids[int(m.group(1), 16)] = i
                self._bytes.append(bytes([int(m.group(1), 16)]))
            else:
                self._bytes.append(p.replace(SPACE, " ").encode("utf-8", "surrogatepass"))
        if len(self._byte_ids) != 256:
            raise ValueError(f"a SentencePiece vocabulary needs all 256 byte pieces <0x00>..<0xFF>; "
                             f"this one has {len(self._byte_ids)}")
        self._special_split = (re.compile("(" + "|".join(map(re.escape, sorted(self._special_tokens, key=len,
                                                                                  reverse=True))) + ")")
                               if self._special_tokens else None)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def n_vocab(self) -> int:
        return len(self._pieces)

    # --- encoding -------------------------------------------------------------------------------------

    def encode(self, text: str, *, allowed_special: Literal["all"] | Collection[str] = (),
               disallowed_special: Literal["all"] | Collection[str] = ()) -> list[int]:
        """Text to ids. Special-token strings ("<s>", "<|user|>") are text unless allowed: then each is
        its token, and the text after it gets the leading space again, as llama.cpp does."""
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # lone surrogates: U+FFFD
        if not allowed_special or self._special_split is None:
            return self._encode_text(text, prefix=self.add_space_prefix) if text else []
        ids, after_special = [], True
        for n, part in enumerate(self._special_split.split(text)):
            if n % 2 == 1 and (allowed_special == "all" or part in allowed_special):
                ids.append(self._special_tokens[part])
                after_special = True
            elif part:
                ids.extend(self._encode_text(part, prefix=self.add_space_prefix and after_special))
                after_special = False
        return ids

    def encode_single_token(self, text: str) -> int:
        if text in self._special_tokens:
            return self._special_tokens[text]
        if (found := self._mergeable.get(text.replace(" ", SPACE))) is not None:
            return found[0]
        raise KeyError(text)

    def _encode_text(self, text: str, prefix: bool) -> list[int]:
        symbols = list((" " + text if prefix else text).replace(" ", SPACE))
        # Doubly linked list over the symbols: merged-away symbols become "".
        nexts = list(range(1, len(symbols))) + [-1]
        prevs = list(range(-1, len(symbols) - 1))
        queue: list[tuple[float, int, int, str]] = []  # (-score, left, right, merged text)

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = symbols[left] + symbols[right]
            if (found := self._mergeable.get(merged)) is not None:
                heapq.heappush(queue, (-found[1], left, right, merged))

        for i in range(len(symbols) - 1):
            push(i, i + 1)
        while queue:
            _, left, right, merged = heapq.heappop(queue)
            if symbols[left] + symbols[right] != merged or nexts[left] != right:
                continue  # one side has changed since this pair was queued
            symbols[left], symbols[right] = merged, ""
            nexts[left] = nexts[right]
            if nexts[left] >= 0:
                prevs[nexts[left]] = left
            push(prevs[left], left)
            push(left, nexts[left])

        ids = []
        i = 0
        while i >= 0:
            found = self._mergeable.get(symbols[i])
            if found is not None:
                ids.append(found[0])
            else:  # a character without a piece: its UTF-8 bytes
                ids.extend(self._byte_ids[b] for b in symbols[i].encode("utf-8", "surrogatepass"))
            i = nexts[i]
        return ids

    # --- decoding -------------------------------------------------------------------------------------

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self._bytes):
            raise KeyError(token_id)
        return self._bytes[token_id]

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """A whole sequence's text, without the space encode put in front (as SentencePiece decodes)."""
        text = b"".join(self.decode_single_token_bytes(i) for i in ids).decode("utf-8", errors)
        return text[1:] if self.add_space_prefix and text.startswith(" ") else text
