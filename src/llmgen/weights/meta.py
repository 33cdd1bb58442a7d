"""Meta's layout: params.json and consolidated.NN.pth, model-parallel parts joined or kept apart."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmgen.config import LlamaConfig
from llmgen.errors import LLMGenError
from llmgen.weights import maps
from llmgen.weights.readers import read_json, read_shards


def read_meta(directory: Path, keep_parts: bool = False
              ) -> tuple[LlamaConfig, dict[str, torch.Tensor | ModelParallelParts]]:
    """keep_parts: a checkpoint in model-parallel files keeps each split tensor's parts apart
    (ModelParallelParts), for a tensor-parallel rank to cut its own part from."""
    params = read_json(directory / "params.json")
    shard_paths = sorted(directory.glob("consolidated.*.pth"))
    if not shard_paths:
        raise LLMGenError(f"{directory} has params.json but no consolidated.*.pth weights")
    shards = [read_shards([p]) for p in shard_paths]
    state: dict[str, torch.Tensor | ModelParallelParts] = (
        dict(shards[0]) if len(shards) == 1 else merge_model_parallel(shards, join=not keep_parts))
    state.pop("rope.freqs", None)  # Llama 2 era checkpoints carry precomputed RoPE frequencies
    config = LlamaConfig.from_meta(params, tie_embeddings="output.weight" not in state)
    return config, state


def merge_model_parallel(shards: list[dict[str, torch.Tensor]], join: bool = True
                         ) -> dict[str, torch.Tensor | ModelParallelParts]:
    """Concatenate model-parallel shards along each tensor's split dimension (maps.META_SHARD_DIM); with
    join False, leave them side by side, unread (ModelParallelParts)."""
    merged: dict[str, torch.Tensor | ModelParallelParts] = {}
    for name in shards[0]:
        if any(name not in shard for shard in shards):
            raise LLMGenError(f"tensor {name!r} is missing from some of the consolidated.*.pth shards")
        parts = [shard[name] for shard in shards]
        dim = maps.META_SHARD_DIM.get(maps.strip_layer(name))
        if dim is None:
            merged[name] = parts[0]
        elif any(p.dim() <= dim or p.shape[:dim] + p.shape[dim + 1:] != parts[0].shape[:dim] + parts[0].shape[dim + 1:]
                 for p in parts):
            raise LLMGenError(f"tensor {name!r} has parts of shapes that do not join along dimension {dim}")
        else:
            merged[name] = torch.cat(parts, dim=dim) if join else ModelParallelParts(parts, dim)
    return merged


@dataclass
class ModelParallelParts:
    """One tensor of a checkpoint saved as model-parallel parts (Meta's consolidated.NN.pth), side by side
    along `dim` and not joined: a tensor-parallel rank reads only the pieces its own part covers (Llama 3
    70B's eight files are 140 GB; each of eight ranks then reads one)."""

    parts: list[torch.Tensor]
    dim: int

    @property
    def shape(self) -> torch.Size:
        size = list(self.parts[0].shape)
        size[self.dim] = sum(p.shape[self.dim] for p in self.parts)
        return torch.Size(size)

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        """As Tensor.narrow: a view of one part where the range lies within it, else the pieces joined."""
        if dim != self.dim:
            return torch.cat([p.narrow(dim, start, length) for p in self.parts], dim=self.dim)
        pieces, first = [], 0
        for part in self.parts:
            size = part.shape[dim]
            low, high = max(start, first), min(start + length, first + size)
            if low < high:
                pieces.append(part.narrow(dim, low - first, high - low))
            first += size
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)
