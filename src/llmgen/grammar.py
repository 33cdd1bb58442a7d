"""Structured output: constrained decoding to a JSON schema with llguidance (the grammar engine llama.cpp and
others adopted), so that a reply always parses and validates.

Each step, the matcher says which tokens may come next (a byte per vocabulary entry); the others' logits
become -inf before sampling, and the sampled id is fed back. When the grammar is complete the matcher
stops and the sequence ends. About 1 ms a token on SmolLM2's 49,152 tokens (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from llmgen.errors import LLMGenError
from llmgen.tokenization.tokenizer import Tokenizer

MAX_SCHEMA_BYTES = 256 * 1024  # real schemas are a few kilobytes


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads of a tokenizer: each id's bytes, EOS, and an encoder."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.stop_ids)
        self.bos_token_id = tokenizer.bos_id
        self.tokens = [tokenizer.token_bytes(i) if tokenizer.is_valid(i) else b"" for i in range(tokenizer.n_vocab)]
        self.special_token_ids = sorted(tokenizer.stop_ids)

    def __call__(self, text: bytes) -> list[int]:
        return self.tokenizer.encode(text.decode("utf-8", errors="replace"), bos=False)


_LLTOKENIZERS: dict[int, tuple[Tokenizer, Any]] = {}  # id -> (the tokenizer, kept alive so the id stays its)


def _lltokenizer(tokenizer: Tokenizer):
    """llguidance's view of the tokenizer, built once per tokenizer (~0.2 s for 49k tokens)."""
    cached = _LLTOKENIZERS.get(id(tokenizer))
    if cached is None:
        import llguidance

        if len(_LLTOKENIZERS) >= 4:  # a process uses one or two tokenizers
            _LLTOKENIZERS.clear()
        cached = _LLTOKENIZERS[id(tokenizer)] = (
            tokenizer, llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer))))
    return cached[1]


class JsonGrammar:
    """A compiled JSON schema for one tokenizer; matcher() starts a sequence's constraint."""

    def __init__(self, tokenizer: Tokenizer, schema: dict[str, Any] | None):
        import llguidance

        self.tokenizer, self.lltokenizer = tokenizer, _lltokenizer(tokenizer)
        try:
            self.grammar = llguidance.LLMatcher.grammar_from_json_schema(schema if schema is not None
                                                                         else {"type": "object"})
        except (ValueError, TypeError, RuntimeError) as e:
            raise LLMGenError(f"the JSON schema cannot be used: {str(e).splitlines()[0][:300]}") from None
        problem = llguidance.LLMatcher.validate_grammar(self.grammar, self.lltokenizer)
        if problem:
            raise LLMGenError(f"the JSON schema cannot be used: {problem.splitlines()[0][:300]}")

    def matcher(self) -> JsonConstraint:
        return JsonConstraint(self)


class JsonConstraint:
    """One sequence's place in the grammar: allow(logits) masks what may not come next, consume(id) moves on;
    `complete` once the JSON value is whole (then the sequence ends)."""

    def __init__(self, grammar: JsonGrammar):
        import llguidance

        self.matcher = llguidance.LLMatcher(grammar.lltokenizer, grammar.grammar)
        self.n_vocab = grammar.tokenizer.n_vocab
        self.stop_ids = sorted(grammar.tokenizer.stop_ids)

    def allow(self, logits: torch.Tensor) -> torch.Tensor:
        """(1, vocab) logits with every token the grammar forbids next at -inf."""
        allowed = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)[:self.n_vocab] > 0
        if allowed[self.stop_ids].any():  # whichever stop id is EOS to llguidance, any ends the reply
            allowed[self.stop_ids] = True
        masked = torch.full_like(logits, float("-inf"))
        masked[..., :self.n_vocab] = logits[..., :self.n_vocab].masked_fill(~allowed, float("-inf"))
        return masked

    def consume(self, token_id: int) -> None:
        if token_id in self.stop_ids:
            return
        if not self.matcher.consume_token(token_id):
            raise LLMGenError(f"constrained decoding failed: {self.matcher.get_error()[:300]}")

    @property
    def complete(self) -> bool:
        return self.matcher.is_stopped()


def read_schema(text: str, source: str) -> dict[str, Any]:
    """A JSON schema from a file's or a request's text: a JSON object, bounded in size."""
    if len(text.encode("utf-8", errors="replace")) > MAX_SCHEMA_BYTES:
        raise LLMGenError(f"{source}: the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB")
    try:
        schema = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise LLMGenError(f"{source}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(schema, dict):
        raise LLMGenError(f"{source}: a JSON schema is a JSON object")
    return schema
