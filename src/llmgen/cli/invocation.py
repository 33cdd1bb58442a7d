"""What one run of the CLI hands the command it runs, through click's context object (`ctx.obj`): the command
line, for a command that starts itself again as tensor-parallel ranks (cli/launch.py), and where a rank's
errors go instead of stderr. main.py makes it; commands read and set it; nothing else is shared."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Typer is not imported on `llmgen tokenize`'s fast path, which makes an Invocation too
    import typer


@dataclass
class Invocation:
    argv: list[str]
    # A tensor-parallel rank's: (message, exit code, consequence) -> whether to print the line here too
    # (parallel/group.py records it for the launcher).
    error_reporter: Callable[[str, int, bool], bool] | None = None


def of(ctx: typer.Context) -> Invocation:
    """The run's Invocation (one made from sys.argv when the app runs without main.py's, as in CliRunner)."""
    root = ctx.find_root()
    if not isinstance(root.obj, Invocation):
        root.obj = Invocation(sys.argv[1:])
    return root.obj
