"""`llmgen tokenize`: token ids and pieces for a text, or text for token ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from llmgen.cli import console
from llmgen.cli.text_input import read_text_argument
from llmgen.cli.tokenize_fast import CONTROL_ESCAPES, listing, read_text, text_source
from llmgen.errors import LLMGenError, UsageError


def tokenize(
    text: Optional[List[str]] = typer.Argument(
        None, help="Text to tokenize ('-' or omitted with piped stdin reads stdin); with --decode, token ids."
    ),
    encoding: Optional[str] = typer.Option(
        None, "--encoding", "-e", help="cl100k_base (default), gpt2, r50k_base or llama3."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Use this model's tokenizer: a model directory, a .gguf file, an alias `llmgen download` fetched, "
             "or 'default' (the embedded SmolLM2).",
    ),
    tokenizer_path: Optional[Path] = typer.Option(
        None, "--tokenizer", help="A tokenizer file (LLaMA-3 tokenizer.model, tokenizer.json) or a directory holding one."
    ),
    ids_only: bool = typer.Option(False, "--ids", help="Print the ids only, space-separated."),
    count_only: bool = typer.Option(False, "--count", help="Print the number of tokens only."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object with encoding, ids, tokens and count."),
    decode: bool = typer.Option(False, "--decode", "-d", help="Treat the arguments as token ids and print their text."),
    allow_special: bool = typer.Option(
        False, "--allow-special", help="Encode special-token strings such as <|endoftext|> as special tokens."
    ),
) -> None:
    """Show the token ids and pieces of TEXT (or the text of token ids with --decode)."""
    from llmgen.tokenization.files import tokenizer_from_path
    from llmgen.tokenization.tiktoken_files import DEFAULT_ENCODING, get_tokenizer, tokenizer_for_text
    from llmgen.tokenization.tokenizer import piece

    if sum(x is not None for x in (encoding, model, tokenizer_path)) > 1:
        raise UsageError("choose one of --encoding, --model and --tokenizer")
    if sum((ids_only, count_only, as_json)) > 1:
        raise UsageError("choose one of --ids, --count and --json")

    args = text or []
    if decode:
        raw = read_text_argument(text_source(args), combine_with_stdin=False).split()
        if not raw:
            raise LLMGenError("no token ids given to --decode")
        ids = [_parse_id(r) for r in raw]
    else:
        input_text = read_text(args)

    if model is not None:
        from llmgen.cli.model_path import resolve_model
        from llmgen.weights.layout import model_tokenizer

        tok = model_tokenizer(resolve_model(model)[0])
    elif tokenizer_path is not None:
        tok = tokenizer_from_path(tokenizer_path)
    elif decode:
        tok = get_tokenizer(encoding or DEFAULT_ENCODING)
    else:
        tok = tokenizer_for_text(encoding or DEFAULT_ENCODING, input_text)

    if decode:
        text_out = tok.decode(ids)
        if as_json:
            console.write(json.dumps({"encoding": tok.name, "ids": ids, "text": text_out}, ensure_ascii=False) + "\n")
        else:
            console.write(text_out + "\n")
        return

    ids = tok.encode(input_text, bos=False, allow_special=allow_special)
    pieces = [piece(tok.token_bytes(i)) for i in ids]
    output = "count" if count_only else "ids" if ids_only else "json" if as_json else None
    if output is None and console.stdout.is_terminal:
        _print_table(tok.name, ids, pieces)
    else:
        console.write(listing(tok.name, ids, pieces, output))


def _parse_id(raw: str) -> int:
    try:
        return int(raw.strip(","))
    except ValueError:
        raise LLMGenError(f"--decode takes integer token ids; got {raw!r}") from None


def _print_table(encoding_name: str, ids: list[int], pieces: list[str]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("id", justify="right", style="cyan")
    table.add_column("piece")
    for n, (token_id, p) in enumerate(zip(ids, pieces)):
        # A background makes leading and trailing spaces of a piece visible.
        table.add_row(str(n), str(token_id), Text(p.translate(CONTROL_ESCAPES), style="on grey23"))
    console.stdout.print(table)
    # Below the table, not as its caption: a caption wraps at the table's (narrow) width.
    console.stdout.print(f"{len(ids)} tokens · {encoding_name}", style="dim", soft_wrap=True, markup=False)
