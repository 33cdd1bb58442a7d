"""The `llmgen` command: a thin Typer layer that parses, calls the library and renders.

Heavy imports (torch, huggingface_hub) happen inside the commands that need them, so `llmgen --help`
and `llmgen tokenize` start fast.
"""

from __future__ import annotations

import sys

import typer

from llmgen.cli import download, generate, inspect_weights, tokenize, voices
from llmgen.cli.console import print_error
from llmgen.errors import LLMGenError

app = typer.Typer(
    name="llmgen",
    help="Generate text with GPT-2 and LLaMA-3-family models, tokenize, download and inspect weights.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:  # bare `llmgen`: show the help, like --help
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


app.command("generate")(generate.generate)
app.command("tokenize")(tokenize.tokenize)
app.command("download")(download.download)
app.command("models")(download.models)
app.command("inspect-weights")(inspect_weights.inspect_weights)
app.command("voices")(voices.voices)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure becomes one line on stderr and a non-zero exit code."""
    command = typer.main.get_command(app)
    try:
        # standalone_mode=False hands usage errors and Ctrl-C to us instead of click's multi-line output.
        result = command.main(args=argv, prog_name="llmgen", standalone_mode=False)
    except typer.TyperException as e:  # usage errors: bad option, missing argument, bad value
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print_error(e.format_message() + hint)
        sys.exit(EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(EXIT_INTERRUPTED)
    except LLMGenError as e:
        print_error(str(e))
        sys.exit(e.exit_code)
    sys.exit(result if isinstance(result, int) else 0)
