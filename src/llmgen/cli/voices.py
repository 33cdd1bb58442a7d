"""`llmgen voices`: the speech engine's voices, for `generate --voice`."""

from __future__ import annotations

import json

import typer

from llmgen.cli import console
from llmgen.errors import LLMGenError


def voices(
    language: str = typer.Option(None, "--language", "-l", help="Only voices for this language code (e.g. en, cmn)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """List the voices the speech engine offers."""
    from llmgen.speech import SpeechError, list_voices

    try:
        found = list_voices()
    except SpeechError as e:
        raise LLMGenError(str(e)) from None
    if language:
        found = [v for v in found if any(language.lower() in x.lower() for x in v["languages"])]
    if as_json:
        console.write(json.dumps(found, ensure_ascii=False) + "\n")
        return
    header = ("id", "name", "languages")
    lines = [(v["id"], v["name"], ", ".join(x.lstrip("\x05") for x in v["languages"])) for v in found]
    if not console.stdout.is_terminal:
        console.rows(header, lines)
        return
    from rich.table import Table

    table = Table(caption=f"{len(found)} voices")
    for column in header:
        table.add_column(column)
    for line in lines:
        table.add_row(*line)
    console.stdout.print(table)
