"""The HTTP side of `llmgen serve`: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, and /health.

Bodies are read as schema.py's models; responses and stream chunks are OpenAI's JSON, a stream as
server-sent events ending `data: [DONE]`. Every failure is OpenAI's error object with its HTTP status
(400 a bad body, 401 a missing or wrong key, 404 an unknown model or path, 413 too large a body, 503 a
full queue, 500 anything else, never a traceback). One access-log line per request goes to the
"llmgen.serve" logger (method, path, status, tokens, milliseconds).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from llmgen.serving.schema import ChatRequest, CompletionRequest, Sampling
from llmgen.serving.service import ModelService, Piece, RequestError

log = logging.getLogger("llmgen.serve")


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse(error_body(message, **fields), status_code=status)


def create_app(service: ModelService, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="llmgen", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(_Guard, max_body_bytes=service.limits.max_body_bytes, api_key=api_key)

    @app.exception_handler(RequestError)
    async def _refused(request: Request, e: RequestError) -> JSONResponse:
        return error_response(e.status, e.message, kind=e.kind, code=e.code, param=e.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(e), param=_validation_param(e))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        message = str(e.detail)
        if e.status_code == 400 and "parsing the body" in message:  # FastAPI's words for bytes that are not text
            message = "the request body is not valid JSON (it must be UTF-8 text)"
        return error_response(e.status_code, message, kind="invalid_request_error" if e.status_code < 500
                              else "server_error", code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _failed(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(e).__name__, e)
        return error_response(500, "the server failed on this request", kind="server_error")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(service)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        _check_model(service, model_id)
        return _model_card(service)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        grammar = _check_request(service, body)
        prompt_ids = service.completion_ids(body.prompt)
        settings = service.settings(prompt_ids, body.max_tokens, 16, body.temperature, body.top_p, body.top_k,
                                    body.repeat_penalty)  # OpenAI's default max_tokens for completions: 16
        pieces = service.choices(prompt_ids, settings, n=body.n, seed=body.seed, stop=body.stop_strings,
                                 top_logprobs=body.logprobs, grammar=grammar)
        shape = _Completion(service, body, len(prompt_ids), request)
        return await shape.respond(pieces)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        grammar = _check_request(service, body)
        messages = [{"role": m.role, "content": m.text} for m in body.messages]
        prompt_ids = service.chat_ids(messages)
        settings = service.settings(prompt_ids, body.max_completion_tokens or body.max_tokens, None,
                                    body.temperature, body.top_p, body.top_k, body.repeat_penalty)
        top = (body.top_logprobs or 0) if body.logprobs else None
        if body.top_logprobs and not body.logprobs:
            raise RequestError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        pieces = service.choices(prompt_ids, settings, n=body.n, seed=body.seed, stop=body.stop_strings,
                                 top_logprobs=top, grammar=grammar)
        shape = _Chat(service, body, len(prompt_ids), request)
        return await shape.respond(pieces)

    return app


def _model_card(service: ModelService) -> dict:
    return {"id": service.name, "object": "model", "created": int(service.loaded.path.stat().st_mtime),
            "owned_by": "llmgen", "meta": {"n_ctx": service.ctx_size, "n_vocab": service.tokenizer.n_vocab,
                                           "max_sequences": len(service.engine.slots)}}


def _check_model(service: ModelService, name: str | None) -> None:
    if name not in (None, "", service.name, service.loaded.path.name, "default"):
        raise RequestError(404, f"the model '{name}' does not exist; this server serves '{service.name}'",
                           code="model_not_found", param="model")


def _check_request(service: ModelService, body: Sampling):
    """The model named, and the grammar response_format asks for (grammar.JsonGrammar, or None)."""
    _check_model(service, body.model)
    form = body.response_format
    if form is None or form.type == "text":
        return None
    schema = None
    if form.type == "json_schema":
        schema = (form.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise RequestError(400, "response_format json_schema needs json_schema.schema, a JSON object",
                               param="response_format")
    return service.grammar(schema)


class _Shape:
    """A response's JSON, whole or as a stream of chunks, from a request's pieces."""

    object_name = ""
    chunk_name = ""

    def __init__(self, service: ModelService, body: Any, prompt_tokens: int, request: Request):
        self.service, self.body, self.prompt_tokens, self.request = service, body, prompt_tokens, request
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    prefix = "cmpl"

    def base(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.service.name,
                "system_fingerprint": f"llmgen-{self.service.loaded.path.name}"}

    def usage(self, completion_tokens: int, cached_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens}}

    async def respond(self, pieces):
        if self.body.stream:
            first = await _first(pieces)  # a refusal (a full queue) is still an error response, not a stream
            return StreamingResponse(self.stream(first, pieces), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts = [""] * self.body.n
        tokens: list[list] = [[] for _ in range(self.body.n)]
        reasons: list[str | None] = [None] * self.body.n
        completion_tokens = cached = 0
        try:
            async for count, piece in _numbered(pieces):
                texts[piece.index] += piece.text
                tokens[piece.index] += piece.tokens
                if piece.finish_reason:
                    reasons[piece.index] = piece.finish_reason
                    completion_tokens += piece.completion_tokens
                    cached = max(cached, piece.cached_tokens)
                if count % 16 == 15 and await self.request.is_disconnected():
                    return None  # nobody to answer: the sequences are cancelled below
        finally:
            await pieces.aclose()
        self.request.state.tokens = completion_tokens
        return {**self.base(self.object_name),
                "choices": [self.choice(i, texts[i], tokens[i], reasons[i]) for i in range(self.body.n)],
                "usage": self.usage(completion_tokens, cached)}

    async def stream(self, first: Piece | None, pieces):
        completion_tokens = cached = 0
        try:
            for index in range(self.body.n):
                if (opening := self.opening(index)) is not None:
                    yield _event({**self.base(self.chunk_name), "choices": [opening]})
            piece = first
            while piece is not None:
                if piece.finish_reason:
                    completion_tokens += piece.completion_tokens
                    cached = max(cached, piece.cached_tokens)
                if piece.text or piece.finish_reason or (piece.tokens and self.wants_logprobs):
                    yield _event({**self.base(self.chunk_name), "choices": [self.delta(piece)]})
                piece = await _first(pieces)
            if self.body.include_usage:
                yield _event({**self.base(self.chunk_name), "choices": [],
                              "usage": self.usage(completion_tokens, cached)})
            yield "data: [DONE]\n\n"
        except RequestError as e:  # after the stream began: an error event, as OpenAI's streams carry them
            yield _event(error_body(e.message, e.kind, e.code, e.param))
        finally:
            self.request.state.tokens = completion_tokens
            await pieces.aclose()  # a client that went away: its sequences are cancelled now

    @property
    def wants_logprobs(self) -> bool:
        return False

    def opening(self, index: int) -> dict | None:
        return None

    def choice(self, index: int, text: str, tokens: list, reason: str | None) -> dict:
        raise NotImplementedError

    def delta(self, piece: Piece) -> dict:
        raise NotImplementedError

    def piece_text(self, token_id: int) -> str:
        from llmgen.tokenization.tokenizer import piece

        return piece(self.service.tokenizer.token_bytes(token_id))


class _Completion(_Shape):
    object_name = chunk_name = "text_completion"

    @property
    def wants_logprobs(self) -> bool:
        return self.body.logprobs is not None

    def logprobs(self, tokens: list, offset: int = 0) -> dict | None:
        """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
        if not self.wants_logprobs:
            return None
        pieces = [self.piece_text(t.id) for t in tokens]
        offsets, at = [], offset
        for text in pieces:
            offsets.append(at)
            at += len(text)
        return {"tokens": pieces, "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{self.piece_text(i): v for i, v in (t.top or [])} for t in tokens]
                if self.body.logprobs else None, "text_offset": offsets}

    def choice(self, index: int, text: str, tokens: list, reason: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": self.logprobs(tokens), "finish_reason": reason}

    def delta(self, piece: Piece) -> dict:
        return {"index": piece.index, "text": piece.text, "logprobs": self.logprobs(piece.tokens),
                "finish_reason": piece.finish_reason}


class _Chat(_Shape):
    object_name, chunk_name, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.body.logprobs)

    def logprobs(self, tokens: list) -> dict | None:
        """OpenAI's chat logprobs: content, a list of {token, logprob, bytes, top_logprobs}."""
        if not self.wants_logprobs:
            return None

        def entry(token_id: int, logprob: float | None) -> dict:
            raw = self.service.tokenizer.token_bytes(token_id)
            return {"token": self.piece_text(token_id), "logprob": logprob, "bytes": list(raw)}

        return {"content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, v) for i, v in (t.top or [])]}
                            for t in tokens]}

    def choice(self, index: int, text: str, tokens: list, reason: str | None) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": self.logprobs(tokens), "finish_reason": reason}

    def opening(self, index: int) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    def delta(self, piece: Piece) -> dict:
        return {"index": piece.index, "delta": {"content": piece.text} if piece.text else {},
                "logprobs": self.logprobs(piece.tokens), "finish_reason": piece.finish_reason}


async def _numbered(pieces):
    count = 0
    async for piece in pieces:
        yield count, piece
        count += 1


async def _first(pieces) -> Piece | None:
    """The next piece, or None at the end."""
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return None


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _validation_message(e: RequestValidationError) -> str:
    errors = e.errors()
    if not errors:
        return "the request body is invalid"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


def _validation_param(e: RequestValidationError) -> str | None:
    errors = e.errors()
    if not errors or errors[0].get("type") == "json_invalid":
        return None
    loc = errors[0].get("loc", ())
    return ".".join(str(p) for p in loc[1:]) or None


class _Guard:
    """ASGI middleware in front of every route: the API key (Authorization: Bearer, compared in constant
    time), the body-size bound (Content-Length, and the bytes actually received), and the access log."""

    def __init__(self, app, max_body_bytes: int, api_key: str | None):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.api_key = None if api_key is None else api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [0]
        scope.setdefault("state", {})

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
                return
            received, cut = 0, False

            async def receive_bounded():
                """The body, until it is larger than allowed: then the app hears that the client left."""
                nonlocal received, cut
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        cut = True
                        return {"type": "http.disconnect"}
                return message

            async def send_unless_cut(message):
                if not cut:  # the app's answer to a cut body is replaced by the 413
                    await send_logged(message)

            await self.app(scope, receive_bounded, send_unless_cut)
            if cut:
                await self.too_large()(scope, receive, send_logged)
        finally:
            tokens = scope["state"].get("tokens", 0)
            log.info("%s %s %d %d tokens %.0f ms", scope["method"], scope["path"], status[0], tokens,
                     1000 * (time.perf_counter() - started))

    def too_large(self) -> JSONResponse:
        return error_response(413, f"the request body is larger than {self.max_body_bytes} bytes",
                              code="request_too_large")

    def refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"] != "/health":
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                return error_response(401, "a valid API key is needed (Authorization: Bearer KEY)",
                                      code="invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "Content-Length is not a number")
            if int(length) > self.max_body_bytes:
                return self.too_large()
        return None
