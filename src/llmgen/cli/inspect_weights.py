"""`llmgen inspect-weights`: a checkpoint's tensors, shapes, dtypes, parameter counts and config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from llmgen.cli import console


def inspect_weights(
    name: str = typer.Argument(..., metavar="PATH", help="A .safetensors, .pth/.bin or .gguf file, a model "
                               "directory, an alias `llmgen download` fetched, or 'default' (the embedded model)."),
    filter_glob: Optional[str] = typer.Option(None, "--filter", help="Only tensors whose name matches this glob."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of tables."),
    no_tensors: bool = typer.Option(False, "--no-tensors", help="Show the config and totals only."),
) -> None:
    """Show a checkpoint's tensors, shapes, dtypes, parameter counts and config (without loading it)."""
    from llmgen.cli.model_path import resolve_model
    from llmgen.weights.inspect import inspect_path

    path = resolve_model(name)[0]
    whole = inspect_path(path)
    if unknown := whole.unknown_tensors():
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        console.print_warning(f"{path.name} holds a tensor no model llmgen loads has: {unknown[0]!r:.100}{more}; "
                              "llmgen will refuse to load it")
    inspection = whole.filtered(filter_glob)
    if as_json:
        console.write(json.dumps(inspection.to_json(with_tensors=not no_tensors), default=str) + "\n")
        return
    _render(path, inspection, show_tensors=not no_tensors)


def _render(path: Path, inspection, show_tensors: bool) -> None:
    from rich.table import Table

    out = console.stdout
    if inspection.config:
        config = Table(title=f"config ({inspection.format})", show_header=False, box=None)
        config.add_column(style="cyan")
        config.add_column()
        for key, value in inspection.config.items():
            config.add_row(str(key), _short(value))
        out.print(config)
    if show_tensors:
        out.print(str(path), style="bold", soft_wrap=True, markup=False, highlight=False)  # a title would break it
        table = Table()
        table.add_column("name", overflow="fold")
        table.add_column("shape", justify="right")
        table.add_column("dtype")
        table.add_column("params", justify="right")
        table.add_column("bytes", justify="right")
        for t in inspection.tensors:
            table.add_row(t.name, "×".join(map(str, t.shape)) or "scalar", t.dtype, f"{t.params:,}", _size(t.nbytes))
        out.print(table)
    sizes = inspection.bytes_by_dtype()
    by_dtype = ", ".join(f"{dtype} {params:,} in {_size(sizes[dtype])}" for dtype, params in inspection.by_dtype().items())
    out.print(f"{len(inspection.tensors)} tensors, {inspection.total_params:,} parameters, "
              f"{_size(inspection.total_bytes)}" + (f" ({by_dtype})" if by_dtype else ""),
              markup=False, highlight=False, soft_wrap=True)


def _short(value) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 100 else text[:97] + "..."


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"
