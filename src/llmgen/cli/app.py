"""The Typer app: each command's options and help, and the call into its module."""

from __future__ import annotations

import typer

from llmgen.cli import bench, chat, download, generate, inspect_weights, perplexity, quantize, serve, tokenize, voices

app = typer.Typer(
    name="llmgen",
    help="Generate text with GPT-2 and LLaMA-3-family models, tokenize, download, inspect and quantize weights.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"llmgen {version('llmgen')}")
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context, version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show llmgen's version and exit.")) -> None:
    if ctx.invoked_subcommand is None:  # bare `llmgen`: show the help, like --help
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


app.command("generate")(generate.generate)
app.command("chat")(chat.chat)
app.command("tokenize")(tokenize.tokenize)
app.command("download")(download.download)
app.command("models")(download.models)
app.command("inspect-weights")(inspect_weights.inspect_weights)
app.command("quantize")(quantize.quantize)
app.command("voices")(voices.voices)
app.command("bench")(bench.bench)
app.command("perplexity")(perplexity.perplexity)
app.command("serve")(serve.serve)
