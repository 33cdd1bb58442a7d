"""One rank's part of a checkpoint: which rows or columns of each weight it keeps, as data.

Megatron-style, as gpt-fast's tp.py splits LLaMA: each rank owns whole attention heads and a slice of the
MLP's width. The projections into them (q, k, v; the MLP's gate and up) keep the rank's output rows; the
projections out of them (attention's wo, the MLP's down) keep the rank's input columns and so produce a
partial sum that an all-reduce adds up (parallel/layers.py). The embedding and the head keep a run of the
vocabulary's rows. Everything else (norms, GPT-2's positions) is replicated: it is small.

Shards are cut from the memory-mapped tensors before anything is converted: a run of rows stays a view of
the file (its other rows are never read), a run of columns is copied and the file's pages it was copied
from are let go (weights/memory.py). A rank's memory is then about 1/N of the weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from llmgen.config import LlamaConfig, ModelConfig
from llmgen.errors import LLMGenError
from llmgen.weights import maps
from llmgen.weights.memory import release_file_pages


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int

    def even(self, n: int) -> tuple[int, int]:
        """This rank's equal part of n things (n divisible by world: checked in local_config)."""
        size = n // self.world
        return self.rank * size, (self.rank + 1) * size

    def vocab_rows(self, vocab: int) -> tuple[int, int]:
        """This rank's run of the vocabulary: ceil(vocab / world) rows, the last rank's fewer."""
        size = -(-vocab // self.world)
        return min(self.rank * size, vocab), min((self.rank + 1) * size, vocab)

    def kv_heads(self, n_kv_heads: int) -> tuple[int, int]:
        """This rank's key/value heads: an equal part, or with fewer kv heads than ranks, the one head its
        query heads share (replicated on world / n_kv_heads ranks)."""
        if n_kv_heads >= self.world:
            return self.even(n_kv_heads)
        head = self.rank * n_kv_heads // self.world
        return head, head + 1


# How each weight splits, by our names (weights/maps.py) with the layer number taken out. Rows of heads or
# of the MLP's width are the rank's outputs; "*_in" keeps the rank's input columns instead.
LLAMA_SPLITS = {
    "tok_embeddings.weight": "vocab",
    "output.weight": "vocab",
    "attention.wq.weight": "q_heads", "attention.wq.bias": "q_heads",
    "attention.wk.weight": "kv_heads", "attention.wk.bias": "kv_heads",
    "attention.wv.weight": "kv_heads", "attention.wv.bias": "kv_heads",
    "attention.wo.weight": "q_heads_in",
    "feed_forward.w1.weight": "ffn", "feed_forward.w3.weight": "ffn",
    "feed_forward.w2.weight": "ffn_in",
}
GPT2_SPLITS = {
    "wte.weight": "vocab",
    "attn.c_attn.weight": "qkv_heads", "attn.c_attn.bias": "qkv_heads",  # q, k and v rows, each the rank's heads
    "attn.c_proj.weight": "q_heads_in", "attn.c_proj.bias": "first_rank",  # added once, not once a rank
    "mlp.c_fc.weight": "ffn", "mlp.c_fc.bias": "ffn",
    "mlp.c_proj.weight": "ffn_in", "mlp.c_proj.bias": "first_rank",
}
SPLITS = {"llama": LLAMA_SPLITS, "gpt2": GPT2_SPLITS}


def local_config(config: ModelConfig, shard: Shard) -> ModelConfig:
    """The config of one rank's blocks: its heads and MLP width (the vocabulary stays whole: the embedding
    and the head gather it, parallel/layers.py). Splits that do not come out even are refused."""
    world = shard.world
    n_kv_heads = getattr(config, "n_kv_heads", config.n_heads)
    ffn_dim = config.ffn_dim
    problems = []
    if config.n_heads % world:
        problems.append(f"{config.n_heads} attention heads")
    if n_kv_heads % world and world % n_kv_heads:
        problems.append(f"{n_kv_heads} key/value heads")
    if ffn_dim % world:
        problems.append(f"an MLP width of {ffn_dim}")
    if problems:
        raise LLMGenError(f"--tp {world} cannot split this model evenly: it has {' and '.join(problems)}")
    if config.vocab_size < world:
        raise LLMGenError(f"--tp {world} is more ranks than the model's {config.vocab_size} vocabulary rows")
    n_heads, ffn_dim, head_dim = config.n_heads // world, ffn_dim // world, config.head_dim
    if isinstance(config, LlamaConfig):
        return dataclasses.replace(config, n_heads=n_heads, ffn_dim=ffn_dim, head_dim=head_dim,
                                   n_kv_heads=max(1, n_kv_heads // world))
    return dataclasses.replace(config, n_heads=n_heads, ffn_dim=ffn_dim, head_dim=head_dim)


def shard_state(config: ModelConfig, state: dict[str, Any], shard: Shard) -> dict[str, Any]:
    """The rank's part of every weight (state: our names; tensors, or a GGUF's blocks as stored)."""
    splits = SPLITS[config.arch]
    head_dim = config.head_dim
    n_kv_heads = getattr(config, "n_kv_heads", config.n_heads)
    q0, q1 = shard.even(config.n_heads)
    k0, k1 = shard.kv_heads(n_kv_heads)
    f0, f1 = shard.even(config.ffn_dim)
    v0, v1 = shard.vocab_rows(config.vocab_size)
    q_rows, kv_rows = (q0 * head_dim, q1 * head_dim), (k0 * head_dim, k1 * head_dim)
    width = config.n_heads * head_dim  # GPT-2's c_attn: q, k, v each this many rows
    cuts = {  # kind -> (dimension, [(first, stop), ...] concatenated)
        "vocab": (0, [(v0, v1)]),
        "q_heads": (0, [q_rows]),
        "kv_heads": (0, [kv_rows]),
        "q_heads_in": (1, [q_rows]),
        "ffn": (0, [(f0, f1)]),
        "ffn_in": (1, [(f0, f1)]),
        "qkv_heads": (0, [(part * width + q_rows[0], part * width + q_rows[1]) for part in range(3)]),
    }
    local = {}
    for name, value in state.items():
        kind = splits.get(maps.strip_layer(name))
        if kind is None:
            local[name] = value
        elif kind == "first_rank":
            local[name] = value if shard.rank == 0 else torch.zeros_like(value)
        else:
            local[name] = take(name, value, *cuts[kind])
    return local


def take(name: str, value, dim: int, ranges: list[tuple[int, int]]):
    """Rows (dim 0) or columns (dim 1) first..stop of each range, side by side."""
    from llmgen.weights.meta import ModelParallelParts
    from llmgen.weights.stored import BlockEmbedding, DeferredGroups

    if dim >= len(value.shape):
        raise LLMGenError(f"tensor {name!r} has shape {list(value.shape)}, not a matrix")
    size = value.shape[dim]
    if any(not 0 <= a < b <= size for a, b in ranges):
        raise LLMGenError(f"tensor {name!r} has shape {list(value.shape)}, too small for this rank's part")
    if isinstance(value, torch.Tensor):
        if dim == 0 and len(ranges) == 1 and value.is_contiguous():
            return value[ranges[0][0]:ranges[0][1]]  # a view: only these rows' pages are ever read
        part = torch.cat([value.narrow(dim, a, b - a) for a, b in ranges], dim=dim)
        release_file_pages(value)
        return part
    if isinstance(value, ModelParallelParts):  # Meta's model-parallel files: only the pieces this part covers
        pieces = [value.narrow(dim, a, b - a) for a, b in ranges]  # a view of a file where one part covers it
        part = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)
        for source in value.parts:
            if part.untyped_storage().data_ptr() != source.untyped_storage().data_ptr():
                release_file_pages(source)  # copied from it, or not needed: let its pages go
        return part
    if isinstance(value, BlockEmbedding):  # a GGUF's quantized embedding: a run of its rows
        (a, b), = ranges
        return BlockEmbedding(value.blocks[a:b], value.kind, value.embedding_dim,
                              read_rows=lambda first, stop: value.read_rows(a + first, a + stop))
    if isinstance(value, DeferredGroups):
        (a, b), = ranges
        return deferred_rows(value, a, b) if dim == 0 else deferred_columns(name, value, a, b)
    raise LLMGenError(f"tensor {name!r} cannot be split across ranks")


def deferred_rows(groups, first: int, stop: int):
    """Rows first..stop of quantized rows as stored, still unread."""
    from llmgen.weights.stored import DeferredGroups

    def offset(pair):
        return None if pair is None else (pair[0], lambda a, b: pair[1](first + a, first + b))

    return DeferredGroups((stop - first, groups.shape[1]), groups.kind,
                          lambda a, b: groups.rows(first + a, first + min(b, stop - first)),
                          blocks=offset(groups.blocks), source=offset(groups.source))


def deferred_columns(name: str, groups, first: int, stop: int):
    """Columns first..stop of a GGUF matrix's blocks: whole blocks of each row, cut from its bytes."""
    from llmgen.weights.gguf_blocks import block_size
    from llmgen.weights.stored import deferred_matrix

    if groups.source is None:
        raise LLMGenError(f"tensor {name!r} cannot be split across ranks by columns")
    kind, read_rows = groups.source
    block = block_size(kind)
    if first % block or stop % block:
        raise LLMGenError(f"tensor {name!r} is stored in {kind} blocks of {block} columns, which this rank's "
                          f"columns {first}-{stop} would cut through; use fewer ranks")
    in_features = groups.shape[1]

    def read(a: int, b: int) -> torch.Tensor:
        rows = read_rows(a, b)  # (n, row bytes) uint8
        block_bytes = rows.shape[1] // (in_features // block)
        return rows[:, first // block * block_bytes:stop // block * block_bytes].contiguous()

    return deferred_matrix(kind, (groups.shape[0], stop - first), read)


def build_config(local: ModelConfig, state: dict[str, Any]) -> ModelConfig:
    """The config to build the rank's modules from: local_config with the vocabulary rows it holds (the
    model's config is set back to the whole vocabulary once its weights are in)."""
    embedding = state.get("tok_embeddings.weight", state.get("wte.weight"))
    return dataclasses.replace(local, vocab_size=embedding.shape[0]) if embedding is not None else local

