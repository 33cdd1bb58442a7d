"""The one place that writes to the terminal: stdout for results, stderr for everything else."""

from __future__ import annotations

import sys

from rich.console import Console

# Results go to stdout; progress, warnings, statistics and errors go to stderr so pipelines stay clean.
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


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
        stdout.file.flush()
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
