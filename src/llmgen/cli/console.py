"""The one place that writes to the terminal: stdout for results, stderr for everything else."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn, cast

from rich.console import Console

if TYPE_CHECKING:
    from typing import IO


class _StdoutForRich:
    """sys.stdout for results (through Rich or not), where a reader that closed the pipe ends llmgen
    quietly (see reader_went_away) instead of Click's exit status 1."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except BrokenPipeError:
            reader_went_away()

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            reader_went_away()

    def __getattr__(self, name: str):
        return getattr(sys.stdout, name)  # isatty, fileno, encoding: the real stdout's


# Results go to stdout; progress, warnings, statistics and errors go to stderr so pipelines stay clean.
_results = _StdoutForRich()
stdout = Console(file=cast("IO[str]", _results), highlight=False)
stderr = Console(stderr=True, highlight=False)


def status(message: str):
    """A transient spinner line on stderr while something slow runs (loading a model), on a terminal only:
    pipes and logs get nothing."""
    if stderr.is_terminal:
        return stderr.status(message, spinner="dots")
    from contextlib import nullcontext

    return nullcontext()


def print_error(message: str) -> None:
    first_line = " ".join(message.split())  # one line, however the message was built
    if stderr.is_terminal:
        stderr.print(f"[bold red]error:[/] {first_line}", markup=True, soft_wrap=True, highlight=False)
    else:
        sys.stderr.write(f"error: {first_line}\n")
        sys.stderr.flush()


def print_warning(message: str) -> None:
    if stderr.is_terminal:
        stderr.print(f"[yellow]warning:[/] {message}", soft_wrap=True, highlight=False)
    else:
        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()


def print_info(message: str) -> None:
    if stderr.is_terminal:
        stderr.print(message, style="dim", soft_wrap=True, highlight=False, markup=False)
    else:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def write(text: str) -> None:
    """Results on stdout as they come: through Rich on a terminal, the exact text on a pipe."""
    if stdout.is_terminal:
        stdout.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    else:
        _results.write(text)
    _results.flush()


def rows(header: tuple[str, ...], lines: Sequence[tuple[str, ...]]) -> None:
    """A listing for scripts on a pipe: a header line, then one tab-separated line per row, nothing cut."""
    write("".join("\t".join(row) + "\n" for row in [header, *lines]))


def reader_went_away() -> NoReturn:
    """The reader closed the pipe (`llmgen generate ... | head -c 20`): it has what it wanted. Stop
    quietly with status 0, as cat and grep do, so `set -o pipefail` scripts work; stdout goes to
    /dev/null so the interpreter's last flush cannot fail too. (Click would exit 1 on the error.)"""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(0)
