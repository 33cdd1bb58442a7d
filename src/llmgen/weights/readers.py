"""Reading tensors from checkpoint files, safely: no pickle code runs, every failure is one clear error."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from llmgen.errors import LLMGenError, first_line

MAX_JSON_BYTES = 64 << 20  # configs and shard indexes are kilobytes; tokenizer.json files a few MB


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"the key {duplicate[:80]!r} appears twice")
    return dict(pairs)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; a duplicate key, a huge file or deep nesting is an error, not a guess."""
    try:
        if Path(path).stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES >> 20} MB")
        value = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise LLMGenError(f"{path} is not a readable JSON file: {reason}") from None
    if not isinstance(value, dict):
        raise LLMGenError(f"{path} must hold a JSON object")
    return value


def read_torch(path: Path) -> dict[str, torch.Tensor]:
    """A torch.save'd state dict, memory-mapped, with the weights-only unpickler (no code execution)."""
    try:
        # Hostile files make torch warn (odd pickle protocols, ...); the outcome is reported in one line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = first_line(e)
        raise LLMGenError(f"{path.name} was refused by the weights-only loader (it holds more than tensors): "
                          f"{reason[:200]}") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, TypeError) as e:
        reason = first_line(e)
        raise LLMGenError(f"{path.name} is not a readable PyTorch checkpoint (truncated or not a zip archive?): "
                          f"{reason[:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LLMGenError(f"{path.name} does not hold a state dict of tensors")
    return state


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = first_line(e)
        raise LLMGenError(f"{path.name} is not a readable safetensors file: {reason[:200]}") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path) if path.suffix == ".safetensors" else read_torch(path)


def read_shards(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Tensors of several files that together hold one state dict (each name in exactly one file)."""
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        for name, tensor in read_tensors(path).items():
            if name in merged:
                raise LLMGenError(f"tensor {name!r} appears in more than one shard (again in {path.name})")
            merged[name] = tensor
    return merged


def shards_from_index(index_path: Path) -> list[Path]:
    """The files named by a *.index.json weight map, checked to lie beside it."""
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise LLMGenError(f"{index_path.name} has no weight_map")
    if not all(isinstance(name, str) for name in weight_map.values()):
        bad = next(name for name in weight_map.values() if not isinstance(name, str))
        raise LLMGenError(f"{index_path.name}: weight_map values must be file names, got {bad!r:.60}")
    names = sorted(set(weight_map.values()))
    for name in names:
        if Path(name).name != name or name in ("", ".", ".."):
            raise LLMGenError(f"{index_path.name} names a shard outside its directory: {name!r}")
        if not (index_path.parent / name).is_file():
            raise LLMGenError(f"shard {name} listed in {index_path.name} is missing")
    return [index_path.parent / n for n in names]
