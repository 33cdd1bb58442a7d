"""A model's own chat template (Jinja2, as Hugging Face and GGUF files ship it), rendered in a sandbox.

The template is code from the model's author, so it runs in Jinja2's ImmutableSandboxedEnvironment
with the environment transformers gives it (trim_blocks, lstrip_blocks, loop controls, raise_exception,
a tojson that keeps non-ASCII text, strftime_now), and a rendering that fails is one clear error.

The rendered text is tokenized whole with its special-token markers as special tokens, as transformers'
apply_chat_template does, so the ids are the model's own. Only the template may produce markers: when a
message itself contains a special-token string, the text is encoded in pieces, the messages' parts as
plain text (a prompt cannot forge a turn).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

from llmgen.errors import LLMGenError
from llmgen.tokenizers import Tokenizer

MAX_TEMPLATE_CHARS = 200_000  # real templates are under 20k characters
MAX_RENDERED_CHARS = 10_000_000  # far beyond any model's context
RENDER_SECONDS = 5.0  # real templates render in milliseconds
SENTINEL = "\x00llmgen-message-{}\x00"  # stands in for a message's content when it must stay plain text


@lru_cache(maxsize=8)
def _compiled(template: str):
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return environment.from_string(template)


def render(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
           **variables: Any) -> str:
    """The template's text for these messages (role/content dicts)."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise LLMGenError(f"the model's chat template is {len(template)} characters, more than any real one")
    import jinja2

    try:
        with _time_limit(RENDER_SECONDS):
            text = _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                              **variables)
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError, KeyError, IndexError,
            RecursionError, MemoryError, TimeoutError) as e:
        raise LLMGenError(f"the model's chat template failed to render: {type(e).__name__}: {e}") from None
    if len(text) > MAX_RENDERED_CHARS:
        raise LLMGenError(f"the model's chat template rendered {len(text)} characters for this conversation")
    return text


@contextmanager
def _time_limit(seconds: float):
    """A template is code: the sandbox stops it from touching anything, not from looping. On the main
    thread (the CLI's), a SIGALRM timer bounds it; elsewhere it runs unbounded."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"it ran for more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def template_ids(tokenizer: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True
                 ) -> list[int]:
    """The ids of the conversation through the tokenizer's chat template (tokenizer.chat_template)."""
    bos = tokenizer.bos_id if tokenizer.declared_bos_id is None else tokenizer.declared_bos_id
    variables = {"bos_token": _token_text(tokenizer, bos),
                 "eos_token": _token_text(tokenizer, tokenizer.eos_id)}
    specials = _special_texts(tokenizer)
    if not any(s in m["content"] for m in messages for s in specials):
        text = render(tokenizer.chat_template, messages, add_generation_prompt=add_generation_prompt, **variables)
        return tokenizer.encode(text, bos=False, allow_special=True)
    # A message holds a marker's text: render with stand-ins for the contents, then encode the template's
    # parts with markers and the contents as plain text.
    stand_ins = [{**m, "content": SENTINEL.format(i)} for i, m in enumerate(messages)]
    text = render(tokenizer.chat_template, stand_ins, add_generation_prompt=add_generation_prompt, **variables)
    ids: list[int] = []
    for i, message in enumerate(messages):
        before, found, text = text.partition(SENTINEL.format(i))
        if not found:
            raise LLMGenError("the model's chat template changes message contents; a message holding "
                              "special-token text cannot be rendered safely with it")
        ids += tokenizer.encode(before, bos=False, allow_special=True)
        ids += tokenizer.encode(message["content"], bos=False)
    return ids + tokenizer.encode(text, bos=False, allow_special=True)


def _token_text(tokenizer: Tokenizer, token_id: int | None) -> str:
    if token_id is None:
        return ""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


def _special_texts(tokenizer: Tokenizer) -> list[str]:
    encoding = tokenizer.encoding
    special = getattr(encoding, "special_tokens", None)
    if special is None:  # a tiktoken Encoding
        special = getattr(encoding, "_special_tokens", {})
    return [s for s in special if s]
