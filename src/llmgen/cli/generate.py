"""`llmgen generate`: stream a model's continuation of a prompt."""

from __future__ import annotations

import typer

from llmgen.errors import LLMGenError


def generate(prompt: str = typer.Argument(None, help="Prompt text; '-' reads stdin.")) -> None:
    """Generate text from a prompt."""
    raise LLMGenError("generate is not implemented yet (issue #3)")
