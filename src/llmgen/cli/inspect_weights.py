"""`llmgen inspect-weights`: a checkpoint's tensors, shapes, dtypes, parameter counts and config."""

from __future__ import annotations

from pathlib import Path

import typer

from llmgen.errors import LLMGenError


def inspect_weights(path: Path = typer.Argument(..., help="A checkpoint file or model directory.")) -> None:
    """Show a checkpoint's tensors, shapes, dtypes, parameter counts and config."""
    raise LLMGenError("inspect-weights is not implemented yet (issue #4)")
