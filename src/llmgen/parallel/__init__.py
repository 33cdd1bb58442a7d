"""Tensor parallelism: one model split across processes, on torch.distributed.

- shard.py: which rows or columns of each weight a rank keeps, and the config of its blocks;
- layers.py: the all-reduces and the vocabulary split that join the shards, wrapped around the model's
  modules (models/ knows nothing of them);
- group.py: the process group, and what ranks agree on through rank 0 (prompt, sampled tokens, errors).
loading.py loads a rank's shard (load_model(tensor_parallel=...)); decode/ picks a decoder that
has room for the all-reduces; cli/launch.py starts the ranks for `llmgen generate --tp N`.
"""

from __future__ import annotations

import weakref

# Set by cli/launch.py for the ranks it starts: it reports their errors, rank 0 need not print them.
LAUNCHED_BY_LLMGEN = "LLMGEN_TP_LAUNCHER"

# Sharded models and the TensorParallel (group.py) they belong to: decode/ asks, without importing
# torch.distributed.
_SHARDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mark(model, tensor_parallel) -> None:
    _SHARDED[model] = tensor_parallel


def of(model):
    """The TensorParallel a model is a rank's shard of, or None."""
    return _SHARDED.get(model)
