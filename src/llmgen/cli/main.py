"""`llmgen`'s entry point: run the command; every failure becomes one line on stderr and an exit code.

Heavy imports (torch, huggingface_hub) happen inside the commands that need them, so `llmgen --help`
starts fast; `llmgen tokenize` into a pipe does not even import Typer and Rich (tokenize_fast.py).
"""

from __future__ import annotations

import sys

from llmgen.cli.invocation import Invocation
from llmgen.errors import LLMGenError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure becomes one line on stderr and a non-zero exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    invocation = Invocation(args)
    _show_warnings_as_lines()
    try:
        code = None
        if args[:1] == ["tokenize"]:
            from llmgen.cli import tokenize_fast

            code = tokenize_fast.run(args[1:])
        sys.exit(code if code is not None else run_typer(invocation))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except LLMGenError as e:
        _report(invocation, str(e), e.exit_code, e.consequence)
    except MemoryError:
        _report(invocation, "out of memory; close other programs or use a smaller or more quantized model")
    except RuntimeError as e:  # torch's allocator reports a failed allocation as a RuntimeError
        if "can't allocate memory" not in str(e) and "not enough memory" not in str(e):
            raise
        _report(invocation, f"out of memory ({str(e).splitlines()[0][:160]}); use a smaller or more quantized model")


def _show_warnings_as_lines() -> None:
    """The library's LLMGenWarnings (a damaged cache rebuilt) as one `warning:` line each on stderr."""
    import warnings

    from llmgen.errors import LLMGenWarning

    shown = warnings.showwarning
    if getattr(shown, "llmgen", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, LLMGenWarning):
            return shown(message, category, filename, lineno, file, line)
        from llmgen.cli.console import print_warning

        print_warning(str(message))

    show.llmgen = True  # type: ignore[attr-defined]  # the mark that it is installed
    warnings.showwarning = show


def _report(invocation: Invocation, message: str, exit_code: int = 1, consequence: bool = False) -> None:
    """The error line on stderr (or where a tensor-parallel rank's launcher collects it), and exit."""
    reporter = invocation.error_reporter
    if reporter is None or reporter(message, exit_code, consequence):
        _print_error(message)
    sys.exit(exit_code)


def run_typer(invocation: Invocation) -> int:
    import typer

    from llmgen.cli.app import app

    command = typer.main.get_command(app)
    try:
        # standalone_mode=False hands usage errors and Ctrl-C to us instead of click's multi-line output.
        result = command.main(args=invocation.argv, prog_name="llmgen", standalone_mode=False, obj=invocation)
    except typer.TyperException as e:  # usage errors: bad option, missing argument, bad value
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _print_error(e.format_message() + hint)
        return EXIT_USAGE
    except typer.Abort:
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def _print_error(message: str) -> None:
    from llmgen.cli.console import print_error  # Rich: only now, on the way out

    print_error(message)
