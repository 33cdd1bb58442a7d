"""A model's linear layers swapped for quantized ones (int8, int4, or GGUF blocks kept as stored).

Quantizing also fuses the projections a model declares in its `FUSIONS` (q/k/v, gate/up): one matmul
instead of three costs one kernel launch instead of three, which matters at ~100 tokens/s.
The measured agreement with float32 is in tests/quantization/test_quantize.py and benchmarks/RESULTS.md.
"""
from __future__ import annotations

from typing import cast

import torch
from torch import nn

from llmgen import kernels
from llmgen.models import Model
from llmgen.quantization.heads import Int4Head, StoredHead
from llmgen.quantization.linear import (
    Int4Linear,
    Int8Linear,
    SideBySide,
    fused_bias,
    fusion_format,
    int4_fits,
    stored_linear,
)
from llmgen.weights.memory import return_freed_memory
from llmgen.weights.stored import (
    BlockEmbedding,
    DeferredGroups,
    Int4Groups,
    Int8Groups,
    Q6KBlocks,
    StoredGroups,
    resolved,
)

QUANTIZATIONS = ("auto", "none", "int8", "int4")
STORED_HEAD_ROWS = 8192  # a stored 8-bit head this large gets a 4-bit first pass (StoredHead)


def quantize_model(model: Model, kind: str, stored: dict[str, StoredGroups | nn.Module] | None = None,
                   own_kernels: bool = True) -> Model:
    """Swap linear layers for quantized ones in place (`kind` is "int8" or "int4").

    stored: weights kept as a file stores them (a GGUF's quantized blocks), by parameter name: Int4Groups,
    Int8Groups or DeferredGroups, whose nn.Linear modules the loader left empty; and an embedding kept in
    its blocks under the embedding's weight name (an nn.Module, weights/gguf_blocks.BlockEmbedding). The
    dict is consumed: each entry goes as its layer is built, so groups read from a file are unpacked and
    freed one layer at a time. Everything else is quantized from its float weight.
    own_kernels: layers use llmgen's kernels where they run (kernels/); False keeps PyTorch's int4
    kernel, which torch.compile can trace (decode/compiled.py).
    """
    embedding_name = "tok_embeddings" if hasattr(model, "tok_embeddings") else "wte"
    stored_embedding = (stored or {}).pop(f"{embedding_name}.weight", None)
    # The rest are matrices' groups; taken over from the caller's dict, which is left empty.
    stored_matrices = {name: groups for name, groups in (stored or {}).items() if not isinstance(groups, nn.Module)}
    if stored is not None:
        stored.clear()
    if isinstance(stored_embedding, BlockEmbedding):
        setattr(model, embedding_name, stored_embedding)
        if model.output is None:  # tied: the head is the embedding's matrix, as stored
            model.output = stored_head(stored_embedding.groups(), own_kernels)
    if "output.weight" in stored_matrices:
        model.output = stored_head(stored_matrices.pop("output.weight"), own_kernels)
    return_freed_memory()
    head = model.output if model.output is not None else getattr(model, embedding_name)
    if isinstance(head, (nn.Linear, nn.Embedding)) and getattr(head, "bias", None) is None:
        fits = kind == "int4" and int4_fits(tuple(head.weight.shape))
        model.output = Int4Head(head.weight, own_kernel=own_kernels) if fits else Int8Linear(head.weight)

    def stored_or_int4(name: str, linear: nn.Linear) -> StoredGroups | None:
        if f"{name}.weight" in stored_matrices:
            return stored_matrices.pop(f"{name}.weight")
        return Int4Groups.from_float(linear.weight) if int4_fits(tuple(linear.weight.shape)) else None

    for prefix, module in list(model.named_modules()):
        prefix = f"{prefix}." if prefix else ""
        # Fused projections first: they need the parts' groups before packing.
        for fused_name, part_names in getattr(module, "FUSIONS", {}).items():
            parts = [getattr(module, n) for n in part_names]
            if any(p is None for p in parts) or kind != "int4":
                continue
            bias = fused_bias(parts)
            maybe = [stored_or_int4(f"{prefix}{n}", p) for n, p in zip(part_names, parts)]
            groups = [g for g in maybe if g is not None]
            if len(groups) < len(maybe):  # a part that is neither stored nor int4-shaped: no fusion
                for n, g, p in zip(part_names, maybe, parts):
                    if g is not None:
                        setattr(module, n, stored_linear(g, p.bias, own_kernel=own_kernels))
                continue
            setattr(module, fused_name, fused_linear([g if _q4_blocks(g) else resolved(g) for g in groups], own_kernels, bias))
            for n in part_names:
                setattr(module, n, None)
            return_freed_memory()
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            name = f"{prefix}{child_name}"
            if f"{name}.weight" in stored_matrices:
                setattr(module, child_name, stored_linear(stored_matrices.pop(f"{name}.weight"), child.bias, own_kernels))
            elif kind == "int8":
                setattr(module, child_name, Int8Linear(child.weight, child.bias))
            elif int4_fits(tuple(child.weight.shape)):
                setattr(module, child_name, Int4Linear(Int4Groups.from_float(child.weight), child.bias, own_kernels))
    if stored_matrices:
        raise ValueError(f"stored weights left without a linear layer: {sorted(stored_matrices)[:3]}")
    return model


def _q4_blocks(groups: StoredGroups) -> bool:
    """Q4_0/Q4_1 rows still in the file, which the kernels' layout is made from directly."""
    return isinstance(groups, DeferredGroups) and groups.blocks is not None and kernels.library() is not None


def stored_head(groups: StoredGroups, own_kernels: bool) -> nn.Module:
    """A head kept as stored: as is when 4-bit, else a StoredHead when large enough to matter."""
    kind = groups.kind if isinstance(groups, DeferredGroups) else type(groups)
    if kind in (Int8Groups, Q6KBlocks) and groups.shape[0] >= STORED_HEAD_ROWS and int4_fits(groups.shape):
        return StoredHead(cast(Int8Groups | Q6KBlocks | DeferredGroups, groups), own_kernel=own_kernels)
    return stored_linear(groups, own_kernel=own_kernels)


def fused_linear(groups: list[StoredGroups], own_kernels: bool, bias: torch.Tensor | None = None
                 ) -> nn.Module:
    """Parts on one input as one layer: one matrix where their formats agree, else side by side (each run
    of parts in one format fused). bias: the parts' biases concatenated, or None."""
    runs: list[list[StoredGroups]] = []
    for g in groups:
        if runs and fusion_format(runs[-1][0]) == fusion_format(g):
            runs[-1].append(g)
        else:
            runs.append([g])
    layers, first = [], 0
    for run in runs:
        rows = sum(g.shape[0] for g in run)
        run_bias = None if bias is None else bias[first:first + rows]
        layers.append(stored_linear(_stacked(run) if len(run) > 1 else run[0], run_bias, own_kernels))
        first += rows
    return layers[0] if len(layers) == 1 else SideBySide(layers)


def _stacked(run: list[StoredGroups]) -> StoredGroups:
    """Parts of one format (fusion_format) stacked along the output."""
    if isinstance(run[0], DeferredGroups):
        return DeferredGroups.cat(cast(list[DeferredGroups], run))
    if isinstance(run[0], Int4Groups):
        return Int4Groups.cat(cast(list[Int4Groups], run))
    if isinstance(run[0], Int8Groups):
        return Int8Groups.cat(cast(list[Int8Groups], run))
    return Q6KBlocks.cat(cast(list[Q6KBlocks], run))
