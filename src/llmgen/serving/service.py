"""One loaded model behind the HTTP API: prompts as ids, a BatchEngine on its own thread, and each request's
choices as an async stream of text pieces (app.py turns them into OpenAI's JSON and SSE).

The engine's thread is the only one that touches the model; updates come back to the event loop through
loop.call_soon_threadsafe. Stop strings are found here, on the text (generation.TextAssembler): a choice
that reaches one is cancelled in the engine, which frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from llmgen.batching import PREFIX_CACHE_BYTES, BatchEngine, Finished, Request, Token, Update
from llmgen.errors import LLMGenError
from llmgen.generation import SamplingSettings, TextAssembler
from llmgen.grammar import JsonGrammar
from llmgen.loading import LoadedModel


class RequestError(Exception):
    """A request the server refuses: its HTTP status, OpenAI's error type and code, and a message."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


@dataclass
class Limits:
    """What one request may ask for (each over-limit request is a 4xx, see app.py)."""

    max_body_bytes: int = 4 * 2**20
    max_prompt_tokens: int | None = None  # None: the context size less one
    max_tokens: int | None = None  # None: the context size
    max_waiting: int = 64  # requests queued for a free slot, beyond which a request is a 503


@dataclass
class Piece:
    """What a choice produced since the last piece: text, the tokens behind it, and at the end its reason."""

    index: int
    text: str = ""
    tokens: list[Token] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" or "length" on a choice's last piece
    completion_tokens: int = 0  # on the last piece: tokens generated
    cached_tokens: int = 0  # on the last piece: prompt tokens reused from the prefix cache


class ModelService:
    """The model, its tokenizer and the engine that steps every request's sequences together."""

    def __init__(self, loaded: LoadedModel, name: str, *, max_sequences: int = 4, ctx_size: int = 2048,
                 batch_size: int = 512, limits: Limits | None = None, prefix_cache_bytes: int = PREFIX_CACHE_BYTES):
        self.loaded, self.tokenizer, self.name = loaded, loaded.tokenizer, name
        self.limits = limits or Limits()
        self.engine = BatchEngine(loaded.model, max_sequences=max_sequences, ctx_size=ctx_size, batch_size=batch_size,
                                  n_valid=self.tokenizer.n_vocab, max_waiting=self.limits.max_waiting,
                                  prefix_cache_bytes=prefix_cache_bytes)
        self.ctx_size = self.engine.ctx_size
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.engine.run_forever, name="llmgen-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.engine.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- prompts --

    def completion_ids(self, prompt: str | list) -> list[int]:
        """A completion's prompt as `llmgen generate --raw` encodes it (BOS first where the model has one);
        a list of ids is taken as it is, each checked against the vocabulary."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if not all(0 <= i < self.tokenizer.n_vocab and self.tokenizer.is_valid(i) for i in ids):
                raise RequestError(400, "the prompt holds a token id outside the model's vocabulary", param="prompt")
        if not ids:
            raise RequestError(400, "the prompt is empty and this model has no BOS token to start from",
                               param="prompt")
        return ids

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        from llmgen.chat import conversation_ids

        try:
            return conversation_ids(self.tokenizer, messages)
        except LLMGenError as e:  # no template, or one that fails on these messages
            raise RequestError(400, str(e), param="messages") from None

    def settings(self, prompt_ids: list[int], max_tokens: int | None, default_max_tokens: int | None,
                 temperature: float, top_p: float, top_k: int | None, repeat_penalty: float) -> SamplingSettings:
        """Checked against the limits: a prompt that does not fit, or too many tokens asked, is a 400."""
        room = self.ctx_size - len(prompt_ids)
        max_prompt = self.limits.max_prompt_tokens or self.ctx_size - 1
        if len(prompt_ids) > max_prompt or room < 1:
            raise RequestError(400, f"the prompt is {len(prompt_ids)} tokens; this server takes at most "
                                    f"{min(max_prompt, self.ctx_size - 1)}", code="context_length_exceeded")
        cap = self.limits.max_tokens or self.ctx_size
        if max_tokens is not None and max_tokens > cap:
            raise RequestError(400, f"max_tokens is {max_tokens}; this server allows at most {cap}",
                               param="max_tokens")
        if max_tokens is not None and max_tokens > room:
            raise RequestError(400, f"the prompt ({len(prompt_ids)} tokens) and max_tokens ({max_tokens}) are more "
                                    f"than the context of {self.ctx_size} tokens", code="context_length_exceeded")
        wanted = max_tokens or min(default_max_tokens or room, room, cap)
        return SamplingSettings(max_new_tokens=wanted, temperature=temperature,
                                top_p=None if top_p >= 1 else top_p, top_k=top_k, repeat_penalty=repeat_penalty)

    def grammar(self, schema: dict | None) -> JsonGrammar:
        """response_format's constraint: a JSON schema (None: any JSON object); one that cannot be compiled is
        a 400."""
        try:
            return JsonGrammar(self.tokenizer, schema)
        except LLMGenError as e:
            raise RequestError(400, str(e), param="response_format") from None

    # -- generation --

    async def choices(self, prompt_ids: list[int], settings: SamplingSettings, *, n: int = 1, seed: int | None = None,
                      stop: list[str] | None = None, top_logprobs: int | None = None,
                      grammar: JsonGrammar | None = None) -> AsyncIterator[Piece]:
        """n choices of the same prompt, their pieces as they come (interleaved); each choice's last piece has
        its finish_reason. Leaving early (a client that went away) cancels every choice still running."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handles = []

        def to_queue(index: int) -> Callable[[Update], None]:
            """Choice index's updates, from the engine's thread into this request's queue."""
            def put(update: Update) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (index, update))
            return put

        try:
            for index in range(n):
                generator = torch.Generator()
                generator.manual_seed(seed + index) if seed is not None else generator.seed()
                request = Request(prompt_ids, settings, stop_ids=frozenset(self.tokenizer.stop_ids),
                                  generator=generator, top_logprobs=top_logprobs, on_update=to_queue(index),
                                  constraint=None if grammar is None else grammar.matcher())
                handle = self.engine.submit(request)
                if handle is None:
                    raise RequestError(503, "the server is busy: too many requests are waiting; retry later",
                                       kind="server_error", code="server_busy")
                handles.append(handle)
            assemblers = [TextAssembler(self.tokenizer, stop or []) for _ in range(n)]
            counts, cut, running = [0] * n, [False] * n, n  # cut: ended by a stop string, being cancelled
            while running:
                index, update = await queue.get()
                assembler = assemblers[index]
                if isinstance(update, Token):
                    if cut[index]:
                        continue  # generated after the stop string, before the engine saw the cancel
                    counts[index] += 1
                    text = assembler.push(update.id)
                    if assembler.stopped and update.id not in self.tokenizer.stop_ids:
                        cut[index] = True
                        handles[index].cancel()
                    yield Piece(index, text, [update])
                    continue
                assert isinstance(update, Finished)
                running -= 1
                if update.reason == "error":
                    raise RequestError(500, f"generation failed: {update.error}", kind="server_error")
                text = assembler.finish()
                reason = "stop" if update.reason == "stop" or assembler.stopped else "length"
                yield Piece(index, text, [], reason, counts[index], update.cached_tokens)
        finally:
            for handle in handles:
                handle.cancel()
