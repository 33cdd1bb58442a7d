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
    layout: str  # "hf", "meta" or "gguf": what llmgen loads from the downloaded files
    tokenizer: str  # gpt2, llama3 or the model's own vocabulary
    chat_template: str | None = None  # "chatml" or "llama3" for instruct models
    revision: str = "main"
    gated: bool = False  # the repo asks users to accept a licence first
    family: str = ""  # what `llmgen models` shows: the architecture family
    size: str = ""  # parameters, as the model's name gives them


def _llama(alias: str, repo: str, instruct: bool) -> ModelEntry:
    size = alias.split("-")[2].upper()
    return ModelEntry(alias, repo, META_FILES, "meta", "llama3", "llama3" if instruct else None, gated=True,
                      family="llama", size=size)


def _hf(alias: str, repo: str, family: str, size: str, gated: bool = False) -> ModelEntry:
    """A Hugging Face layout repo: its config, safetensors and tokenizer files."""
    return ModelEntry(alias, repo, HF_LLAMA_FILES, "hf", "model", gated=gated, family=family, size=size)


def _gguf(alias: str, repo: str, pattern: str, family: str, size: str) -> ModelEntry:
    """One GGUF file of a repo that holds several quantizations (pattern picks it, e.g. *q4_k_m.gguf)."""
    return ModelEntry(alias, repo, (pattern,), "gguf", "model", family=family, size=size)


MODELS: dict[str, ModelEntry] = {
    e.alias.lower(): e
    for e in [
        ModelEntry("gpt2", "openai-community/gpt2", HF_GPT2_FILES, "hf", "gpt2", family="gpt2", size="124M"),
        ModelEntry("gpt2-medium", "openai-community/gpt2-medium", HF_GPT2_FILES, "hf", "gpt2", family="gpt2",
                   size="355M"),
        ModelEntry("gpt2-large", "openai-community/gpt2-large", HF_GPT2_FILES, "hf", "gpt2", family="gpt2",
                   size="774M"),
        ModelEntry("gpt2-xl", "openai-community/gpt2-xl", HF_GPT2_FILES, "hf", "gpt2", family="gpt2", size="1.5B"),
        _llama("llama-3-8B", "meta-llama/Meta-Llama-3-8B", instruct=False),
        _llama("llama-3-8B-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", instruct=True),
        _llama("llama-3.1-8B", "meta-llama/Llama-3.1-8B", instruct=False),
        _llama("llama-3.1-8B-instruct", "meta-llama/Llama-3.1-8B-Instruct", instruct=True),
        _llama("llama-3.2-1B", "meta-llama/Llama-3.2-1B", instruct=False),
        _llama("llama-3.2-1B-instruct", "meta-llama/Llama-3.2-1B-Instruct", instruct=True),
        _llama("llama-3.2-3B", "meta-llama/Llama-3.2-3B", instruct=False),
        _llama("llama-3.2-3B-instruct", "meta-llama/Llama-3.2-3B-Instruct", instruct=True),
        _hf("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", "llama", "135M"),
        _hf("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "llama", "135M"),
        _hf("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", "llama", "360M"),
        _hf("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "llama", "360M"),
        _hf("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B", "llama", "1.7B"),
        _hf("smollm2-1.7b-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "llama", "1.7B"),
        _hf("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "qwen2", "0.5B"),
        _hf("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "qwen2", "0.5B"),
        _hf("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", "qwen2", "1.5B"),
        _hf("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", "qwen2", "1.5B"),
        _hf("qwen3-0.6b", "Qwen/Qwen3-0.6B", "qwen3", "0.6B"),
        _hf("qwen3-1.7b", "Qwen/Qwen3-1.7B", "qwen3", "1.7B"),
        _hf("mistral-7b-instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "mistral", "7B", gated=True),
        _hf("phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", "phi3", "3.8B"),
        _hf("gemma-3-1b-it", "google/gemma-3-1b-it", "gemma3", "1B", gated=True),
        # GGUF repos: one quantization of several, as people download them.
        _gguf("qwen2.5-0.5b-instruct-gguf", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "*q4_k_m.gguf", "qwen2", "0.5B"),
        _gguf("qwen2.5-1.5b-instruct-gguf", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "*q4_k_m.gguf", "qwen2", "1.5B"),
        _gguf("llama-3.2-1b-instruct-gguf", "bartowski/Llama-3.2-1B-Instruct-GGUF", "*Q4_K_M.gguf", "llama", "1B"),
        _gguf("gemma-3-1b-it-gguf", "unsloth/gemma-3-1b-it-GGUF", "*Q4_K_M.gguf", "gemma3", "1B"),
        _gguf("smollm2-1.7b-instruct-gguf", "HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF", "*q4_k_m.gguf", "llama",
              "1.7B"),
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
