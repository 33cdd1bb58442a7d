"""`llmgen tokenize` into a pipe without Typer and Rich: the same output, in about a third of the time.

Importing Typer and Rich takes ~0.05 s, as long as starting Python; `llmgen tokenize "hi" | ...` should
start about as fast as `python -c "import tiktoken"` (issue #7). main() offers the arguments here first.
This module takes the plain forms (TEXT or stdin, --encoding, --ids, --count, --json, --allow-special)
when stdout is not a terminal, and declines everything else (--help, --decode, --model, an option it
does not know, a terminal's table), which then goes to the Typer command in tokenize.py. Both read and
print with the functions below; tests/cli/test_cli_tokenize.py checks that the two paths agree.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from llmgen.cli.text_input import read_text_argument
from llmgen.errors import UsageError

# C0 controls and DEL shown as escapes so a piece never breaks a table row or a line of output.
CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {
    ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"
}
FORMATS = {"--ids": "ids", "--count": "count", "--json": "json"}


class Request(NamedTuple):
    words: list[str]
    encoding: str | None
    output: str | None  # "ids", "count", "json", or None: "id<TAB>piece" lines
    allow_special: bool


def parse(args: list[str]) -> Request | None:
    """The arguments after `tokenize`, or None for anything this path leaves to Typer."""
    words: list[str] = []
    encoding, outputs, allow_special = None, set(), False
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            words.extend(rest)
        elif arg in FORMATS:
            outputs.add(FORMATS[arg])
        elif arg == "--allow-special":
            allow_special = True
        elif arg in ("-e", "--encoding"):
            encoding = next(rest, None)
            if encoding is None:
                return None
        elif arg.startswith("--encoding="):
            encoding = arg.removeprefix("--encoding=")
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            words.append(arg)
    if len(outputs) > 1:
        return None
    return Request(words, encoding, outputs.pop() if outputs else None, allow_special)


def text_source(words: list[str] | None) -> str | None:
    """TEXT words joined by spaces, '-' for stdin, or None (stdin when piped): read_text_argument's input."""
    if not words:
        return None
    return "-" if words == ["-"] else " ".join(words)


def read_text(words: list[str] | None) -> str:
    text = read_text_argument(text_source(words), combine_with_stdin=False)
    if not text:
        raise UsageError("no text to tokenize: pass TEXT, or pipe it on stdin")
    return text


def listing(encoding_name: str, ids: list[int], pieces: list[str], output: str | None) -> str:
    """What `llmgen tokenize` prints when it does not draw a table."""
    if output == "count":
        return f"{len(ids)}\n"
    if output == "ids":
        return " ".join(map(str, ids)) + "\n"
    if output == "json":
        import json

        payload = {"encoding": encoding_name, "ids": ids, "tokens": pieces, "count": len(ids)}
        return json.dumps(payload, ensure_ascii=False) + "\n"
    return "".join(f"{i}\t{p.translate(CONTROL_ESCAPES)}\n" for i, p in zip(ids, pieces))


def run(args: list[str]) -> int | None:
    """Do `llmgen tokenize ARGS` and return its exit code, or None (having read nothing) to leave it to Typer."""
    if sys.stdout is None or sys.stdout.isatty() or (request := parse(args)) is None:
        return None
    from llmgen.tokenization.tiktoken_files import DEFAULT_ENCODING, ENCODINGS, tokenizer_for_text
    from llmgen.tokenization.tokenizer import piece

    name = request.encoding or DEFAULT_ENCODING
    if name.lower() not in ENCODINGS:
        return None  # Typer's command words the error
    text = read_text(request.words)
    tokenizer = tokenizer_for_text(name, text)
    ids = tokenizer.encode(text, bos=False, allow_special=request.allow_special)
    pieces = [piece(tokenizer.token_bytes(i)) for i in ids]
    sys.stdout.write(listing(tokenizer.name, ids, pieces, request.output))
    sys.stdout.flush()
    return 0
