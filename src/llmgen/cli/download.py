"""`llmgen download`: fetch a model from the Hugging Face hub."""

from __future__ import annotations

import typer

from llmgen.errors import LLMGenError


def download(name: str = typer.Argument(..., help="Model alias or owner/name repo id.")) -> None:
    """Download a model from the Hugging Face hub."""
    raise LLMGenError("download is not implemented yet (issue #4)")
