"""Model aliases -> where they live on the Hugging Face hub and what to fetch. Data, in one place."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from llmgen.errors import LLMGenError

HF_GPT2_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
# Meta's own layout inside the hub repos (as the seed downloads it): original/params.json, ...
META_FILES = ("original/params.json", "original/tokenizer.model", "original/consolidated.*.pth")
HF_LLAMA_FILES = ("config.json", "model*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                  "tokenizer_config.json", "generation_config.json", "chat_template.jinja", "vocab.json",
                  "merges.txt")


@dataclass(frozen=True)
class ModelEntry:
    alias: str
    repo_id: str
    files: tuple[str, ...]  # globs over the repo's file names
    layout: str  # "hf" or "meta": what llmgen loads from the downloaded files
    tokenizer: str  # gpt2, llama3 or the model's own vocabulary
    chat_template: str | None = None  # "chatml" or "llama3" for instruct models
    revision: str = "main"
    gated: bool = False  # the repo asks users to accept a licence first


def _llama(alias: str, repo: str, instruct: bool) -> ModelEntry:
    return ModelEntry(alias, repo, META_FILES, "meta", "llama3", "llama3" if instruct else None, gated=True)


MODELS: dict[str, ModelEntry] = {
    e.alias.lower(): e
    for e in [
        ModelEntry("gpt2", "openai-community/gpt2", HF_GPT2_FILES, "hf", "gpt2"),
        ModelEntry("gpt2-medium", "openai-community/gpt2-medium", HF_GPT2_FILES, "hf", "gpt2"),
        ModelEntry("gpt2-large", "openai-community/gpt2-large", HF_GPT2_FILES, "hf", "gpt2"),
        ModelEntry("gpt2-xl", "openai-community/gpt2-xl", HF_GPT2_FILES, "hf", "gpt2"),
        _llama("llama-3-8B", "meta-llama/Meta-Llama-3-8B", instruct=False),
        _llama("llama-3-8B-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", instruct=True),
        _llama("llama-3.1-8B", "meta-llama/Llama-3.1-8B", instruct=False),
        _llama("llama-3.1-8B-instruct", "meta-llama/Llama-3.1-8B-Instruct", instruct=True),
        _llama("llama-3.2-1B", "meta-llama/Llama-3.2-1B", instruct=False),
        _llama("llama-3.2-1B-instruct", "meta-llama/Llama-3.2-1B-Instruct", instruct=True),
        _llama("llama-3.2-3B", "meta-llama/Llama-3.2-3B", instruct=False),
        _llama("llama-3.2-3B-instruct", "meta-llama/Llama-3.2-3B-Instruct", instruct=True),
        ModelEntry("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", HF_LLAMA_FILES, "hf", "model"),
        ModelEntry("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", HF_LLAMA_FILES, "hf", "model",
                   chat_template="chatml"),
    ]
}


def lookup(name: str) -> ModelEntry | None:
    """The registry entry for an alias (exact, case-insensitive), or None."""
    return MODELS.get(name.lower())


def resolve(name: str, include: tuple[str, ...] = ()) -> ModelEntry:
    """An alias, or any owner/name repo id (files chosen by `include` globs, default everything)."""
    if (entry := lookup(name)) is not None:
        return entry if not include else ModelEntry(**{**entry.__dict__, "files": tuple(include)})
    if name.count("/") == 1 and all(name.split("/")):
        return ModelEntry(name, name, tuple(include) or ("*",), "unknown", "model")
    close = difflib.get_close_matches(name.lower(), list(MODELS), n=1, cutoff=0.6)
    hint = f"; did you mean {MODELS[close[0]].alias!r}?" if close else "; see `llmgen models`"
    raise LLMGenError(f"unknown model {name!r}: not an alias or an owner/name repo id{hint}")
