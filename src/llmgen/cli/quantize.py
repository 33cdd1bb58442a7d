"""`llmgen quantize`: a checkpoint to a standard GGUF file (weights/sources.py, weights/gguf_write.py), with progress."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from llmgen.cli import console


def quantize(
    source: str = typer.Argument(..., metavar="SRC", help="A Meta-layout directory (params.json, "
                                 "consolidated.*.pth, tokenizer.model), a Hugging Face LLaMA/Mistral directory "
                                 "with a byte-level BPE tokenizer.json, a LLaMA-architecture .gguf file, or an "
                                 "alias `llmgen download` fetched."),
    out: Path = typer.Argument(..., metavar="OUT.gguf", help="The GGUF file to write (replaced when complete)."),
    out_type: str = typer.Option("q4_0", "--type", "-t", help="Block type of the matrices: f32, f16, bf16, "
                                 "q8_0, q4_0 or q4_1 (norms stay f32; the 4-bit types keep the head in q8_0)."),
) -> None:
    """Write a checkpoint as a GGUF file that llama.cpp and llmgen run, one tensor at a time."""
    from llmgen.cli.model_path import resolve_model
    from llmgen.weights.gguf_write import OUT_TYPES, write_gguf
    from llmgen.weights.sources import open_source

    if out_type.lower() not in OUT_TYPES:
        from llmgen.errors import UsageError

        raise UsageError(f"unknown --type {out_type!r}; choose one of: {', '.join(OUT_TYPES)}")
    path = resolve_model(source)[0]
    started = time.perf_counter()
    with console.status(f"reading {path.name}"):
        checkpoint = open_source(path)
    if console.stderr.is_terminal:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console.stderr, transient=True) as progress:
            task = progress.add_task(f"{out.name} ({out_type.lower()})", total=None)

            def on_tensor(name: str, done: int, total: int) -> None:
                progress.update(task, completed=done, total=total, description=f"{out.name}: {name}")

            written = write_gguf(checkpoint, out, out_type.lower(), on_tensor)
    else:
        written = write_gguf(checkpoint, out, out_type.lower())
    size = written.stat().st_size
    console.stderr.print(f"wrote {written} ({size / 1e9:.2f} GB, {out_type.lower()}) in "
                         f"{time.perf_counter() - started:.1f} s", markup=False, highlight=False, soft_wrap=True)
