"""Text from an argument or standard input (no Rich here: `llmgen tokenize`'s fast path reads with it)."""

from __future__ import annotations

import sys
from pathlib import Path

from llmgen.errors import LLMGenError, UsageError


def stdin_is_piped() -> bool:
    return sys.stdin is not None and not sys.stdin.isatty()


def read_stdin() -> str:
    if sys.stdin is None:
        return ""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LLMGenError(f"standard input is not valid UTF-8 (byte {e.start})") from None


def check_utf8(text: str, what: str) -> str:
    """Arguments that were not valid UTF-8 reach Python with the bad bytes as lone surrogates
    (surrogateescape), and JSON's \\ud800 escapes as lone surrogates: refuse them (a usage error, exit 2) before
    they reach a tokenizer or JSON."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{what} is not valid UTF-8 (byte {e.start})") from None
    return text


def read_text_argument(text: str | None, *, combine_with_stdin: bool) -> str:
    """TEXT, '-' for stdin, or stdin when TEXT is omitted and stdin is piped.

    With `combine_with_stdin`, piped stdin and an argument are joined like simonw/llm: stdin first,
    then the argument (`cat notes.txt | llmgen generate "Summarize:"`).
    """
    if text == "-":
        return read_stdin()
    if text is None:
        return read_stdin() if stdin_is_piped() else ""
    check_utf8(text, "the text argument")
    if combine_with_stdin and stdin_is_piped():
        piped = read_stdin()
        return f"{piped}\n{text}" if piped else text
    return text


def read_text_file(source: str, what: str) -> str:
    """A UTF-8 file's text, or stdin's for '-'; one error line when it cannot be read or is not UTF-8."""
    if source == "-":
        return read_stdin()
    try:
        data = Path(source).read_bytes()
    except OSError as e:
        raise LLMGenError(f"cannot read {what} {source}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LLMGenError(f"{what} {source} is not UTF-8 text (byte {e.start})") from None
