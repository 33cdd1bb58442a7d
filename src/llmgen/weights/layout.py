"""Which layout a model path is in (Meta's, Hugging Face's, a GGUF file), from the files present."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmgen.errors import LLMGenError
from llmgen.tokenization.files import tokenizer_from_path
from llmgen.tokenization.tokenizer import Tokenizer
from llmgen.weights.gguf_file import GGUFFile
from llmgen.weights.gguf_vocab import gguf_tokenizer
from llmgen.weights.readers import shards_from_index

EXPECTED_FILES = (
    "params.json + consolidated.*.pth (Meta layout), or config.json + model.safetensors, "
    "model-*-of-*.safetensors with model.safetensors.index.json, or pytorch_model.bin (Hugging Face layout)"
)
HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                   "pytorch_model.bin")


@dataclass
class Layout:
    kind: str  # "meta", "hf" or "gguf"
    directory: Path
    gguf_file: GGUFFile | None = None  # kept open after reading: it also holds the tokenizer


def detect_layout(path: Path) -> Layout:
    path = Path(path)
    if not path.exists():
        raise LLMGenError(f"model path not found: {path}")
    if path.is_file() and path.suffix == ".gguf":
        return Layout("gguf", path)
    directory = path if path.is_dir() else path.parent
    if (directory / "config.json").is_file() and any((directory / f).is_file() for f in HF_WEIGHT_FILES):
        return Layout("hf", directory)
    if (directory / "config.json").is_file() and list(directory.glob("model-*-of-*.safetensors")):
        return Layout("hf", directory)
    for candidate in (directory, directory / "original"):
        if (candidate / "params.json").is_file():
            return Layout("meta", candidate)
    present = sorted(p.name for p in directory.iterdir())[:8]
    raise LLMGenError(f"{directory} has no model layout llmgen knows; expected {EXPECTED_FILES}; "
                      f"found: {', '.join(present) or 'nothing'}")


def hf_weight_files(directory: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index).is_file():
            return shards_from_index(directory / index)
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    return sorted(directory.glob("model-*-of-*.safetensors"))


def meta_tokenizer_path(directory: Path) -> Path | None:
    """A Meta-layout checkpoint's own tokenizer.model (beside it or one level up)."""
    return next((p for p in (directory / "tokenizer.model", directory.parent / "tokenizer.model") if p.is_file()), None)


def model_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer that goes with a model (a GGUF file's metadata, or a directory's tokenizer files),
    without reading its weights."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return gguf_tokenizer(GGUFFile(path))
    return tokenizer_from_path(path)
