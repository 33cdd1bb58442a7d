"""`llmgen download` and `llmgen models`: fetch models from the Hugging Face hub, list what is here."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from llmgen.cli import console


def download(
    name: str = typer.Argument(..., help="A model alias (see `llmgen models`) or an owner/name repo id."),
    local_dir: Optional[Path] = typer.Option(None, "--dir", help="Download into this directory, not the hub cache."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit (default: main)."),
    token: Optional[str] = typer.Option(
        None, "--token", help="Hub access token (default: $HF_TOKEN or `hf auth login`'s).", show_default=False
    ),
    include: Optional[List[str]] = typer.Option(None, "--include", help="Only files matching this glob (repeatable)."),
) -> None:
    """Download a model from the Hugging Face hub (resumable, sha256-checked); prints where it is."""
    from llmgen.registry import resolve
    from llmgen.weights.download import download as fetch

    entry = resolve(name, tuple(include or ()))

    def on_retry(file_name: str) -> None:
        console.print_info(f"the connection dropped during {file_name}; resuming")
    if console.stderr.is_terminal:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=console.stderr, transient=False) as progress:
            result = fetch(entry, local_dir=local_dir, revision=revision, token=token,
                           tqdm_class=_rich_tqdm(progress), on_retry=on_retry)
    else:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # quiet on pipes and in logs
        result = fetch(entry, local_dir=local_dir, revision=revision, token=token, on_retry=on_retry)
    console.print_info(f"{entry.repo_id}@{result.commit[:12]}: {len(result.files)} files")
    console.write(f"{result.path}\n")


def _rich_tqdm(progress):
    """A tqdm class (what huggingface_hub reports progress through) that drives a Rich progress bar."""
    from tqdm.auto import tqdm

    class RichTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a logger name
            total, initial = kwargs.get("total"), kwargs.get("initial", 0)
            description = (kwargs.get("desc") or "download").rsplit("/", 1)[-1]
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._task = progress.add_task(description, total=total, completed=initial)

        def update(self, n=1):
            progress.advance(self._task, n or 0)

        def close(self):
            super().close()

    return RichTqdm


def models() -> None:
    """List the model aliases and which models are already downloaded."""
    from rich.table import Table

    from llmgen.registry import MODELS
    from llmgen.weights.download import cached_models, disk_usage_text

    cached = cached_models()
    header = ("alias", "family", "size", "repo", "layout", "downloaded")
    lines = [(entry.alias, entry.family, entry.size, entry.repo_id + (" (gated)" if entry.gated else ""), entry.layout,
              disk_usage_text(cached[entry.repo_id]) if entry.repo_id in cached else "") for entry in MODELS.values()]
    lines += [("", "", "", repo_id, "", disk_usage_text(size)) for repo_id, size in sorted(cached.items())
              if all(e.repo_id != repo_id for e in MODELS.values())]
    if not console.stdout.is_terminal:
        console.rows(header, lines)
        return
    table = Table(caption="download with `llmgen download ALIAS`; gated repos need HF_TOKEN")
    for column in header:
        table.add_column(column)
    for line in lines:
        table.add_row(*line)
    console.stdout.print(table)
