"""`llmgen serve`: the real server (uvicorn, FastAPI) on the embedded SmolLM2 model, driven by the real `openai`
client and by raw HTTP for the SSE framing and the error bodies; hostile bodies for every limit."""

import http.client
import json
import socket
import threading
import time

import jsonschema
import openai
import pytest
from conftest import assert_one_line_error, run_here

from llmgen.cli.model_path import resolve_model
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.loading import load_model
from llmgen.serving.app import create_app
from llmgen.serving.service import Limits, ModelService

QUESTION = "What is the capital of France?"
KEY = "test-key-0123456789"


class Server:
    """A uvicorn server on a free port, in a thread of this process, over one ModelService."""

    def __init__(self, service: ModelService, api_key: str | None = None):
        import uvicorn

        self.service = service
        service.start()
        self.server = uvicorn.Server(uvicorn.Config(create_app(service, api_key), host="127.0.0.1", port=0,
                                                    log_level="critical", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", "none"), max_retries=0,
                             **kwargs)

    def post(self, path: str, body: bytes | str | dict, headers: dict | None = None):
        """(status, headers, body bytes) of a raw POST."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = json.dumps(body) if isinstance(body, dict) else body
        connection.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        out = response.status, dict(response.getheaders()), response.read()
        connection.close()
        return out

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.service.close()


@pytest.fixture(scope="module")
def loaded():
    return load_model(resolve_model(None)[0])


@pytest.fixture(scope="module")
def reference():
    """The same model loaded again, for generate_ids beside the server (the server's engine owns its copy's
    caches)."""
    return load_model(resolve_model(None)[0])


@pytest.fixture(scope="module")
def spare():
    """A third copy, for the small servers some tests start while the module's server runs: an engine sets up
    its model's caches (slots x ctx_size), so two engines on one model would step on each other's."""
    return load_model(resolve_model(None)[0])


@pytest.fixture(scope="module")
def server(loaded):
    service = ModelService(loaded, "smollm2", max_sequences=4, ctx_size=1024,
                           limits=Limits(max_body_bytes=64 * 1024, max_tokens=512, max_waiting=8))
    running = Server(service)
    yield running
    running.close()


def wait_idle(service: ModelService, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while service.engine.active or service.engine.waiting:
        assert time.monotonic() < deadline, "sequences still running"
        time.sleep(0.02)


def plain_greedy(loaded, prompt_ids: list[int], n: int) -> str:
    ids = list(generate_ids(loaded.model, prompt_ids, SamplingSettings(max_new_tokens=n, temperature=0),
                            stop_ids=loaded.tokenizer.stop_ids, n_valid=loaded.tokenizer.n_vocab))
    return loaded.tokenizer.decode([i for i in ids if i not in loaded.tokenizer.stop_ids])


@pytest.mark.slow
def test_greedy_chat_through_the_server_is_llmgen_generate(server):
    """The same question, -t 0: the server's reply is `llmgen generate`'s output, character for character."""
    reply = server.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=24)
    cli = run_here("generate", QUESTION, "-t", "0", "-n", "24")
    assert cli.returncode == 0, cli.err
    assert reply.choices[0].message.content == cli.out.rstrip("\n")
    assert reply.choices[0].finish_reason == "length" and reply.object == "chat.completion"
    assert reply.usage.completion_tokens == 24 and reply.usage.total_tokens == reply.usage.prompt_tokens + 24


def test_completions_greedy_logprobs_and_stop(server, reference):
    client = server.client()
    prompt = "The three primary colors are"
    ids = reference.tokenizer.encode(prompt)
    expected = plain_greedy(reference, ids, 12)
    done = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0, logprobs=3)
    choice = done.choices[0]
    assert choice.text == expected and done.usage.prompt_tokens == len(ids)
    assert len(choice.logprobs.tokens) == 12 and "".join(choice.logprobs.tokens) == expected
    for chosen, lp, top in zip(choice.logprobs.tokens, choice.logprobs.token_logprobs, choice.logprobs.top_logprobs):
        assert lp <= 0 and len(top) == 3 and top[chosen] == pytest.approx(lp) == max(top.values())  # greedy
    cut = expected.split()[2]
    stopped = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0, stop=[cut, "zz"])
    assert stopped.choices[0].text == expected[:expected.index(cut)] and stopped.choices[0].finish_reason == "stop"


def test_chat_stream_matches_the_whole_reply_and_ends_with_usage_and_done(server):
    client = server.client()
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]
    whole = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=16)
    chunks = list(client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt: its prefix was kept


def test_seeded_sampling_is_reproducible_and_n_gives_that_many_choices(server):
    client = server.client()
    ask = dict(model="smollm2", messages=[{"role": "user", "content": "Write a word."}], temperature=1.0,
               max_tokens=12, seed=1234)
    a, b = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    assert a.choices[0].message.content == b.choices[0].message.content
    several = client.chat.completions.create(**ask, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.choices[0].message.content == a.choices[0].message.content  # choice i: seed + i
    assert several.usage.completion_tokens <= 3 * 12
    assert len({c.message.content for c in several.choices}) > 1


def test_chat_logprobs(server):
    reply = server.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=6,
        logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == 6
    assert "".join(e.token for e in content) == reply.choices[0].message.content
    for entry in content:
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_sse_framing_over_raw_http(server):
    status, headers, body = server.post("/v1/completions", {"prompt": "Hello", "max_tokens": 4, "temperature": 0,
                                                            "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(p["object"] == "text_completion" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/health")
    assert json.loads(connection.getresponse().read()) == {"status": "ok"}


BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{\"prompt\": 1}", "not valid JSON"),  # invalid UTF-8
    ('{"prompt": "\\ud800 lone surrogate"}', "lone surrogate"),
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": -5}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10**30}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 100_000}, "at most 512"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "temperature": float("inf")}, "temperature"),
    ({"prompt": "hi", "top_p": float("nan")}, "top_p"),
    ({"prompt": "hi", "n": 1000}, "n:"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "stop": ["a"] * 50}, "stop"),
    ({"prompt": "hi", "logprobs": 999}, "logprobs"),
    ({"prompt": [10**12]}, "vocabulary"),
    ({"prompt": "hi", "seed": -1}, "seed"),
    ({}, "prompt"),
    ([], "body"),
    ({"prompt": "hi", "response_format": {"type": "json_schema"}}, "json_schema.schema"),
    ({"prompt": "hi", "response_format": {"type": "yaml"}}, "response_format"),
]


@pytest.mark.parametrize("body, fragment", BAD_BODIES)
def test_a_bad_completion_body_is_a_400_with_a_message(server, body, fragment):
    status, headers, raw = server.post("/v1/completions", body)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert "Traceback" not in raw.decode()


def test_chat_bodies_too_long_prompts_and_unknown_models(server):
    status, _, raw = server.post("/v1/chat/completions", {"messages": []})
    assert status == 400 and "messages" in json.loads(raw)["error"]["message"]
    status, _, raw = server.post("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]})
    assert status == 400
    status, _, raw = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 1500}]})
    assert status == 400 and json.loads(raw)["error"]["code"] == "context_length_exceeded"
    status, _, raw = server.post("/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user",
                                                                                          "content": "x"}]})
    assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    status, _, raw = server.post("/v1/nowhere", {})
    assert status == 404 and "error" in json.loads(raw)


def test_a_body_over_the_limit_is_a_413_and_the_server_keeps_serving(server):
    status, _, raw = server.post("/v1/completions", {"prompt": "x" * 100_000})
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    # without a Content-Length (chunked), the bytes received are counted
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/completions", body=iter([b'{"prompt": "', b"y" * 70_000, b'"}']),
                       headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    done = server.client().completions.create(model="smollm2", prompt="Hi", max_tokens=2, temperature=0)
    assert done.usage.completion_tokens == 2


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    wait_idle(server.service)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 500, "temperature": 0.7, "stream": True})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    assert server.service.engine.active == 1
    sock.close()
    wait_idle(server.service, seconds=10)  # cancelled within a step or two, not after 500 tokens


def test_a_client_that_disconnects_before_a_whole_reply_cancels_it(server, monkeypatch):
    """Not streamed: the server builds the reply while the client waits; a client that closes its socket
    meanwhile has its sequence cancelled (the engine says so), long before its 500 tokens."""
    wait_idle(server.service)
    engine = server.service.engine
    endings = []
    finish = engine._finish
    monkeypatch.setattr(engine, "_finish", lambda sequence, reason, error=None: (
        endings.append((reason, sequence.generated)), finish(sequence, reason, error)))
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 500, "temperature": 0.7, "seed": 1})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    deadline = time.monotonic() + 20
    while not any(slot.sequence is not None and slot.sequence.generated >= 20 for slot in engine.slots):
        assert time.monotonic() < deadline and not endings, "the sequence did not start (or ended by itself)"
        time.sleep(0.01)
    sock.close()
    wait_idle(server.service, seconds=10)
    [(reason, generated)] = endings
    assert reason == "cancelled" and generated < 200


def test_a_full_queue_is_a_503(spare):
    service = ModelService(spare, "smollm2", max_sequences=1, ctx_size=256, limits=Limits(max_waiting=0))
    one = Server(service)
    try:
        first = json.dumps({"prompt": "Once", "max_tokens": 200, "stream": True})
        sock = socket.create_connection(("127.0.0.1", one.port), timeout=30)
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(first)}\r\n\r\n{first}".encode())
        while b"data: " not in sock.recv(65536):
            pass
        status, _, raw = one.post("/v1/completions", {"prompt": "Twice", "max_tokens": 2})
        assert status == 503 and json.loads(raw)["error"]["code"] == "server_busy"
        sock.close()
    finally:
        one.close()


def test_an_api_key_is_checked(spare):
    service = ModelService(spare, "smollm2", max_sequences=1, ctx_size=256)
    keyed = Server(service, api_key=KEY)
    try:
        with pytest.raises(openai.AuthenticationError):
            keyed.client(api_key="wrong").models.list()
        status, _, raw = keyed.post("/v1/completions", {"prompt": "x"})
        assert status == 401 and KEY not in raw.decode()
        assert [m.id for m in keyed.client(api_key=KEY).models.list().data] == ["smollm2"]
        connection = http.client.HTTPConnection("127.0.0.1", keyed.port, timeout=10)
        connection.request("GET", "/health")  # open, as llama-server's is
        assert connection.getresponse().status == 200
    finally:
        keyed.close()


@pytest.mark.slow
def test_serve_refuses_a_non_loopback_address_without_a_key():
    result = run_here("serve", "--host", "0.0.0.0")
    assert_one_line_error(result, "--api-key")
    assert result.returncode == 2
    result = run_here("serve", "--port", "70000")
    assert_one_line_error(result, "--port")
    result = run_here("serve", "--cache-ram", "-1")
    assert_one_line_error(result, "--cache-ram")
    assert result.returncode == 2


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}, "tags": {"type": "array", "items": {
        "type": "string", "maxLength": 8}, "maxItems": 3}},
    "required": ["name", "age", "city"], "additionalProperties": False}


def test_json_schema_output_always_parses_and_validates(server):
    """Sampled hot (temperature 1.5) from a 135M model, the reply is still JSON valid under the schema, and
    json_object gives a JSON object; a schema that cannot be compiled is a 400."""
    client = server.client()
    asks = [{"role": "user", "content": "Describe a person as JSON."}]
    for seed in range(3):
        reply = client.chat.completions.create(
            model="smollm2", messages=asks, temperature=1.5, seed=seed, max_tokens=300,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                                    "strict": True}})
        jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)
        assert reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="smollm2", messages=asks, temperature=1.0, seed=9, max_tokens=300,
                                            stream=True, response_format={"type": "json_object"})
    assert isinstance(json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)), dict)
    status, _, raw = server.post("/v1/chat/completions", {"messages": asks, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}})
    assert status == 400 and "JSON schema" in json.loads(raw)["error"]["message"]
