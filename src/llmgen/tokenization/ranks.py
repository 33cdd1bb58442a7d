"""tiktoken ranks in a binary file that opens without parsing, and the few ranks a short text can use.

tiktoken parses its base64 ranks on every load (0.12 s for cl100k_base) and then builds its Rust BPE
over all 100k of them (0.07 s): most of what `llmgen tokenize "hi"` would spend. A binary copy, made
once from the pinned asset, holds the tokens' bytes back to back with their offsets, and the tokens
sorted by length and bytes, so that one can be found by binary search without building anything.

Byte-pair encoding only ever looks up byte strings inside the text it encodes (the pieces the pattern
cuts, and the pairs it merges within them). So an Encoding built over the ranks of a text's substrings
encodes that text exactly as the full one does (tests/tokenization/test_tokenizers.py), and builds in microseconds.

Only the standard library here: this module is on the path of `llmgen tokenize`'s start-up.
"""

from __future__ import annotations

import array
import sys
import zlib
from pathlib import Path

# The file: MAGIC, the pinned asset's sha256 (32 bytes), then n tokens, the longest token's length
# and the body's CRC-32 (4 bytes each, little-endian), then the body, in the machine's byte order:
#   lengths     n x uint16   token bytes' length, by rank
#   starts      n x uint32   offset of each token's bytes in `blob`, by rank
#   by_length   n x uint32   the ranks, sorted by (length, bytes)
#   first       (longest + 2) x uint32   by_length[first[L]:first[L + 1]] are the tokens of length L
#   blob        every token's bytes, by rank
MAGIC = b"llmgen-ranks-2-" + sys.byteorder[0].encode() + b"\n"
_HEADER = len(MAGIC) + 32 + 12


class BinaryRanks:
    """A rank file's arrays, read-only views on its bytes."""

    def __init__(self, body: bytes, n: int, longest: int):
        view = memoryview(body)
        self.lengths = view[:2 * n].cast("H")
        self.starts = view[2 * n:6 * n].cast("I")
        self.by_length = view[6 * n:10 * n].cast("I")
        self.first = view[10 * n:10 * n + 4 * (longest + 2)].cast("I")
        self.blob = body[10 * n + 4 * (longest + 2):]
        self.n, self.longest = n, longest

    @classmethod
    def read(cls, path: Path, pinned_sha256: str) -> BinaryRanks | None:
        """The file's ranks, or None when it is missing, made from another asset, or damaged."""
        try:
            return cls.from_bytes(path.read_bytes(), pinned_sha256)
        except OSError:
            return None

    @classmethod
    def from_bytes(cls, data: bytes, pinned_sha256: str) -> BinaryRanks | None:
        if data[:len(MAGIC) + 32] != MAGIC + bytes.fromhex(pinned_sha256) or len(data) < _HEADER:
            return None
        n, longest, crc = (int.from_bytes(data[i:i + 4], "little") for i in range(_HEADER - 12, _HEADER, 4))
        body = data[_HEADER:]
        if zlib.crc32(body) != crc or len(body) < 10 * n + 4 * (longest + 2):
            return None
        ranks = cls(body, n, longest)
        if n == 0 or ranks.first[longest + 1] != n or ranks.starts[n - 1] + ranks.lengths[n - 1] != len(ranks.blob):
            return None
        return ranks

    @staticmethod
    def encode(ranks: dict[bytes, int], pinned_sha256: str) -> bytes:
        """The file for ranks that are 0..n-1 in order (tiktoken's files are; the caller checks)."""
        tokens = list(ranks)
        lengths = array.array("H", map(len, tokens))
        starts = array.array("I", [0] * len(tokens))
        offset = 0
        for rank, length in enumerate(lengths):
            starts[rank], offset = offset, offset + length
        by_length = array.array("I", sorted(range(len(tokens)), key=lambda r: (lengths[r], tokens[r])))
        longest = max(lengths)
        first = array.array("I", [0] * (longest + 2))
        for length in lengths:
            first[length + 1] += 1
        for length in range(1, longest + 2):
            first[length] += first[length - 1]
        body = b"".join(a.tobytes() for a in (lengths, starts, by_length, first)) + b"".join(tokens)
        return (MAGIC + bytes.fromhex(pinned_sha256) + len(tokens).to_bytes(4, "little")
                + longest.to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little") + body)

    def to_dict(self) -> dict[bytes, int]:
        """Every token -> its rank, as tiktoken.Encoding takes them."""
        blob = self.blob
        return {blob[start:start + length]: rank
                for rank, (start, length) in enumerate(zip(self.starts, self.lengths))}

    def rank(self, token: bytes) -> int | None:
        length = len(token)
        if not 0 < length <= self.longest:
            return None
        low, high = self.first[length], self.first[length + 1]
        while low < high:  # binary search among the tokens of this length
            middle = (low + high) // 2
            rank = self.by_length[middle]
            start = self.starts[rank]
            candidate = self.blob[start:start + length]
            if candidate < token:
                low = middle + 1
            elif candidate > token:
                high = middle
            else:
                return rank
        return None

    def within(self, text: bytes, max_lookups: int = 4096) -> dict[bytes, int] | None:
        """The ranks of every token found inside `text`; None when that takes more than max_lookups
        (about 5 us each), past which building the whole encoding is the faster way."""
        n = len(text)
        span = min(n, self.longest)
        if n * span - span * (span - 1) // 2 > max_lookups:
            return None
        found: dict[bytes, int] = {}
        for start in range(n):
            for end in range(start + 1, min(n, start + span) + 1):
                token = text[start:end]
                if token not in found and (rank := self.rank(token)) is not None:
                    found[token] = rank
        return found
