"""A model's own chat template (Jinja2, as Hugging Face and GGUF files ship it), rendered in a sandbox.

The template is code from the model's author (or whoever made the file), so it runs in Jinja2's
ImmutableSandboxedEnvironment with the environment transformers gives it (trim_blocks, lstrip_blocks,
loop controls, raise_exception, a tojson that keeps non-ASCII text, strftime_now), bounded in time,
memory and steps (sandbox.py), and a rendering that fails is one clear error naming the template's file
and line.

The rendered text is tokenized whole with its special-token markers as special tokens, as transformers'
apply_chat_template does, so the ids are the model's own. Only the template may produce markers: when a
message itself contains a special-token string, the text is encoded in pieces, the messages' parts as
plain text (a prompt cannot forge a turn).
"""

from __future__ import annotations

from typing import Any

from llmgen.errors import LLMGenError, first_line
from llmgen.tokenization.tokenizer import Tokenizer

MAX_TEMPLATE_CHARS = 200_000  # real templates are under 20k characters
MAX_RENDERED_CHARS = 10_000_000  # far beyond any model's context
RENDER_SECONDS = 5.0  # real templates render in milliseconds
SENTINEL = "\x00llmgen-message-{}\x00"  # stands in for a message's content when it must stay plain text


def render(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
           source: str = "the model's chat template", **variables: Any) -> str:
    """The template's text for these messages (role/content dicts), rendered in sandbox.py's bounded
    sandbox. Anything the template does wrong is one LLMGenError naming `source` and the template's line."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise LLMGenError(f"{source}: the chat template is {len(template)} characters, more than any real one")
    from llmgen import sandbox

    try:
        return sandbox.render(template, {"messages": messages, "add_generation_prompt": add_generation_prompt,
                                         **variables}, seconds=RENDER_SECONDS, max_chars=MAX_RENDERED_CHARS)
    except Exception as e:  # noqa: BLE001 - whatever a template's code raises is the template's failure
        raise LLMGenError(f"{source}: the chat template failed to render{_template_line(e)}: {_reason(e)}") from None


def _template_line(error: BaseException) -> str:
    """" at line N" of the template where the error arose (Jinja maps its frames back to template lines)."""
    import traceback

    line = getattr(error, "lineno", None)  # a syntax error's
    if line is None:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "<template>"]
        line = frames[-1].lineno if frames else None
    return f" at line {line}" if line else ""


def _reason(error: BaseException) -> str:
    message = first_line(error) if str(error).strip() else ""
    return f"{type(error).__name__}: {message[:200]}" if message else type(error).__name__


def template_ids(tokenizer: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True
                 ) -> list[int]:
    """The ids of the conversation through the tokenizer's chat template (tokenizer.chat_template)."""
    bos = tokenizer.bos_id if tokenizer.declared_bos_id is None else tokenizer.declared_bos_id
    variables = {"bos_token": _token_text(tokenizer, bos),
                 "eos_token": _token_text(tokenizer, tokenizer.eos_id)}
    template = tokenizer.chat_template
    if template is None:
        raise ValueError("the tokenizer has no chat template")
    specials = _special_texts(tokenizer)
    if not any(s in m["content"] for m in messages for s in specials):
        text = render(template, messages, add_generation_prompt=add_generation_prompt,
                      source=tokenizer.chat_template_source, **variables)
        return tokenizer.encode(text, bos=False, allow_special=True)
    # A message holds a marker's text: render with stand-ins for the contents, then encode the template's
    # parts with markers and the contents as plain text.
    stand_ins = [{**m, "content": SENTINEL.format(i)} for i, m in enumerate(messages)]
    text = render(template, stand_ins, add_generation_prompt=add_generation_prompt,
                  source=tokenizer.chat_template_source, **variables)
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
