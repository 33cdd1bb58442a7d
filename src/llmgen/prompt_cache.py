"""`--prompt-cache FILE` (llama.cpp's name): a prompt's keys and values saved after a run and restored by the
next run whose prompt starts with the same tokens, so that only the rest is prefilled.

The file is safetensors (no pickle): per layer the keys and values of the cached positions, with the
token ids and a fingerprint in its metadata. The fingerprint covers what the keys and values depend on:
the model file (resolved path, size, modification time), the tokenizer's vocabulary and chat template, and
the caches' shape and dtype. A file with another fingerprint is refused with one line, never loaded into
the model; a file that is not one of ours is one line too. It is written to a temporary file in the same
directory and renamed over the old one, so that an interrupted run leaves the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from llmgen.errors import LLMGenError
from llmgen.generation import common_prefix
from llmgen.models import Model
from llmgen.models.kv_cache import KVCache, cached_attentions
from llmgen.tokenization.tokenizer import Tokenizer

FORMAT = "llmgen-prompt-cache-1"
MAX_TOKENS_META = 2_000_000  # characters of the ids' JSON: far beyond any context


def fingerprint(model_path: Path, tokenizer: Tokenizer, model: Model, dtype: torch.dtype, decoder: str) -> str:
    """What the saved keys and values depend on, hashed (decoder: which kernels computed them)."""
    stat = model_path.resolve().stat()
    vocabulary = hashlib.sha256()
    for i in range(tokenizer.n_vocab):
        vocabulary.update(tokenizer.token_bytes(i) if tokenizer.is_valid(i) else b"\xff")
        vocabulary.update(b"\x00")
    parts = [FORMAT, str(model_path.resolve()), str(stat.st_size), str(stat.st_mtime_ns), vocabulary.hexdigest(),
             tokenizer.chat_template or "", repr(model.config), str(dtype), decoder]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass
class SavedPrompt:
    ids: list[int]
    keys: list[torch.Tensor]  # per layer (n_kv_heads, head_dim, positions): transposed, as KVCache keeps them
    values: list[torch.Tensor]  # per layer (n_kv_heads, positions, head_dim)


def load(path: Path, expected_fingerprint: str) -> SavedPrompt | None:
    """The saved prompt, None when there is no file yet; a file of another model or not ours: one error."""
    if not path.exists():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise LLMGenError(f"--prompt-cache {path} is not an llmgen prompt cache; give another file")
            if meta.get("fingerprint") != expected_fingerprint:
                raise LLMGenError(f"--prompt-cache {path} was saved for another model, tokenizer or template; "
                                  "delete it or give another file")
            ids_text = meta.get("ids", "")
            if len(ids_text) > MAX_TOKENS_META:
                raise LLMGenError(f"--prompt-cache {path} is damaged (too many ids)")
            ids = json.loads(ids_text)
            layers = int(meta.get("layers", "0"))
            keys = [f.get_tensor(f"k.{i}") for i in range(layers)]
            values = [f.get_tensor(f"v.{i}") for i in range(layers)]
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise LLMGenError(f"--prompt-cache {path} cannot be read ({str(e).splitlines()[0][:160]})") from None
    if (not isinstance(ids, list) or not all(isinstance(i, int) for i in ids)
            or any(k.dim() != 3 or k.size(2) != len(ids) for k in keys)
            or any(v.dim() != 3 or v.size(1) != len(ids) for v in values)):
        raise LLMGenError(f"--prompt-cache {path} is damaged (its tensors do not match its ids)")
    return SavedPrompt(ids, keys, values)


def restore(model: Model, saved: SavedPrompt, prompt_ids: list[int]) -> int:
    """Copy the saved positions the prompt shares into the model's caches (set up already); how many. At
    least the prompt's last id is left to compute: its logits start the reply."""
    shared = min(common_prefix(saved.ids, prompt_ids), len(prompt_ids) - 1)
    caches = [a.cache for a in cached_attentions(model)]
    if len(caches) != len(saved.keys) or shared <= 0:
        return 0
    for cache, keys, values in zip(caches, saved.keys, saved.values):
        if keys.shape[:2] != cache.k_t.shape[1:3] or keys.dtype != cache.k_t.dtype or shared > cache.max_len:
            return 0
        cache.k_t[0, :, :, :shared] = keys[:, :, :shared]
        cache.v[0, :, :shared] = values[:, :shared]
    return shared


def save(path: Path, model: Model, prompt_ids: list[int], expected_fingerprint: str) -> None:
    """The prompt's keys and values (positions 0 .. len - 1 of the model's caches), atomically."""
    from safetensors.torch import save_file

    caches: list[KVCache] = [a.cache for a in cached_attentions(model)]
    n = len(prompt_ids)
    tensors = {}
    for i, cache in enumerate(caches):
        tensors[f"k.{i}"] = cache.k_t[0, :, :, :n].contiguous()
        tensors[f"v.{i}"] = cache.v[0, :, :n].contiguous()
    meta = {"format": FORMAT, "fingerprint": expected_fingerprint, "ids": json.dumps(prompt_ids),
            "layers": str(len(caches))}
    directory = path.resolve().parent
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata=meta)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise LLMGenError(f"cannot write --prompt-cache {path}: {e.strerror or e}") from None
