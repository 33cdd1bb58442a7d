"""Conversations that keep their KV cache (chat.Conversation), on the embedded SmolLM2 in-process, and the
`llmgen chat` command through a pipe and on a terminal."""

import dataclasses
import json
import os
import pty
import select
import subprocess
import time

import pytest
from conftest import LLMGEN, run_here

from llmgen import assets
from llmgen.chat import Conversation, end_of_reply_ids, header_ids, message_ids
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.loading import load_model

GREEDY = SamplingSettings(max_new_tokens=16, temperature=0)
TURNS = ["Hi, what is your name?", "What is 2+2?", "Thanks! And 3+3?"]


@pytest.fixture(scope="module")
def smollm2():
    # float32 matmuls: a prefill of 20 new tokens after 40 cached ones and one of all 60 then differ only in
    # float summation order (~1e-6), not in int8 activation rounding that can flip a near-tie greedy pick.
    return load_model(assets.locate("smollm2-135m-instruct-q4_1"), quantize="none")


def load_model_tokenizer():
    from llmgen.weights.layout import model_tokenizer

    return model_tokenizer(assets.locate("smollm2-135m-instruct-q4_1"))


def fresh(loaded, prompt_ids):
    return list(generate_ids(loaded.model, prompt_ids, GREEDY, stop_ids=loaded.tokenizer.stop_ids,
                             n_valid=loaded.tokenizer.n_vocab))


def test_each_turn_prefills_only_its_new_tokens_and_replies_as_a_fresh_generation(smollm2):
    conversation = Conversation(smollm2.model, smollm2.tokenizer, system="Answer briefly.")
    replies = [list(conversation.reply(text, GREEDY)) for text in TURNS]
    tok = smollm2.tokenizer
    for i, turn in enumerate(conversation.turns):
        prompt = conversation.ids(conversation.turns[:i + 1])
        assert turn.new_tokens + turn.cached_tokens == len(prompt)
        if i:  # cached: everything before, but the previous reply's last token (never fed back)
            previous = conversation.turns[i - 1]
            assert turn.cached_tokens == previous.new_tokens + previous.cached_tokens + len(previous.reply_ids) - 1
            assert turn.new_tokens == (1 + len(end_of_reply_ids(tok, previous.reply_ids)) +
                                       len(message_ids(tok, "user", TURNS[i])) + len(header_ids(tok, "assistant")))
    for i, reply in enumerate(replies):  # afterwards: each reply again from scratch, no cache
        assert fresh(smollm2, conversation.ids(conversation.turns[:i + 1])) == reply


def test_a_conversation_longer_than_the_window_drops_its_oldest_turns(smollm2):
    model = smollm2.model
    saved = model.config
    model.config = dataclasses.replace(saved, context_length=96)
    dropped = []
    try:
        conversation = Conversation(model, smollm2.tokenizer, on_drop=dropped.append)
        for text in TURNS * 2:
            list(conversation.reply(text, GREEDY))
            assert len(conversation.ids(conversation.turns)) + GREEDY.max_new_tokens <= 96
        assert dropped and "oldest turn was dropped" in dropped[0]
        assert len(conversation.turns) < len(TURNS) * 2
        last = conversation.turns[-1]
        assert fresh(smollm2, conversation.ids(conversation.turns)) == last.reply_ids
    finally:
        model.config = saved
        model.setup_cache(1, 16)


@pytest.mark.slow  # runs llmgen as a subprocess
def test_chat_through_a_pipe_reports_cached_tokens_and_matches_generate(tmp_path):
    # Short answers: each reply ends with the model's stop token, and the reading stops there.
    # The model's own template gives it a default system prompt, after which these get short replies.
    questions = ["Hi!", "Thanks!"]
    result = run_here("chat", "-t", "0", "-n", "32", "--stats", input="\n".join(questions) + "\n")
    assert result.returncode == 0, result.err
    stats = [line for line in result.err.splitlines() if line.startswith("prompt:")]
    assert len(stats) == 2 and "(0 cached)" in stats[0]
    cached = int(stats[1].split("(")[1].split()[0])
    first_new, first_generated = int(stats[0].split()[1]), int(stats[0].split("generated ")[1].split()[0])
    assert cached == first_new + first_generated - 1 > 0
    assert "(stop)" in stats[0]
    # New: the reply's last token (never fed back), what closes it, the user's message, the assistant header.
    tok = load_model_tokenizer()
    second_new = int(stats[1].split()[1])
    im_end = tok.encoding.encode_single_token("<|im_end|>")  # what the first reply ended with
    assert second_new == 1 + len(end_of_reply_ids(tok, [im_end])) + len(
        message_ids(tok, "user", questions[1])) + len(header_ids(tok, "assistant"))
    single = run_here("generate", questions[0], "--chat", "-t", "0", "-n", "32")
    assert result.out.splitlines()[0] == single.out.rstrip("\n")


@pytest.mark.slow  # runs llmgen on a terminal
def test_chat_on_a_terminal(tmp_path):
    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "LLMGEN_HOME": str(tmp_path / "home")}
    process = subprocess.Popen([LLMGEN, "chat", "-t", "0", "-n", "12"], stdin=terminal, stdout=terminal,
                               stderr=terminal, env=env)
    os.close(terminal)
    seen = b""

    def until(marker: bytes) -> bytes:
        nonlocal seen
        seen = b""
        deadline = time.time() + 90
        while marker not in seen and time.time() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                seen += os.read(controller, 4096)
        assert marker in seen, seen
        return seen

    until(b"> ")
    os.write(controller, b"What is 2+2?\r")
    assert b"4" in until(b"> ")  # the streamed reply, then the next prompt
    os.write(controller, f"/save {tmp_path / 'chat.json'}\r".encode())
    assert b"saved 2 messages" in until(b"> ")
    os.write(controller, b"/exit\r")
    assert process.wait(timeout=30) == 0
    os.close(controller)
    messages = json.loads((tmp_path / "chat.json").read_text())
    assert [m["role"] for m in messages] == ["user", "assistant"] and "4" in messages[1]["content"]
    assert "What is 2+2?" in (tmp_path / "home" / "chat_history").read_text()  # readline history kept
