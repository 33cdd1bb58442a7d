"""Weights as a file stores them, before or instead of unpacking: 4-bit and 8-bit groups (w = q * scale
[+ minimum]), Q4_K's two-level scales, Q6_K blocks, and the same read from a file only when used
(DeferredGroups). Pure data: the kernels' packing (kernels/packing.py) and the layers (quantization/)
take these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmgen.weights.gguf_blocks import FOUR_BIT, block_size, split

INT4_GROUP = 32  # weights per scale/minimum pair, as in GGUF's 4-bit blocks
ROW_CHUNK = 4096  # rows quantized at a time, so that float temporaries stay small


@dataclass
class SuperBlockScales:
    """GGUF Q4_K's scales as stored, in two levels: per group of 32 weights a 6-bit scale `sc` and minimum
    `m`, per 256 weights (8 groups) fp16 factors: scale = d * sc, minimum = -dmin * m. Packed as they are,
    they cost the kernel 0.625 bits a weight instead of the 1 bit of an fp16 scale and minimum per group."""

    sc: torch.Tensor  # (out, in // 32) uint8, 0..63
    m: torch.Tensor  # (out, in // 32) uint8, 0..63
    d: torch.Tensor  # (out, in // 256) float16
    dmin: torch.Tensor  # (out, in // 256) float16

    def rows(self, first: int, stop: int) -> SuperBlockScales:
        return SuperBlockScales(*(t[first:stop] for t in (self.sc, self.m, self.d, self.dmin)))

    @classmethod
    def cat(cls, parts: list[SuperBlockScales]) -> SuperBlockScales:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("sc", "m", "d", "dmin")))


@dataclass
class Int4Groups:
    """4-bit weights before packing: w[n, k] = q[n, k] * scale[n, k // 32] + minimum[n, k // 32]."""

    q: torch.Tensor  # (out, in) uint8, values 0..15
    scale: torch.Tensor  # (out, in // 32) float32
    minimum: torch.Tensor  # (out, in // 32) float32
    levels: SuperBlockScales | None = None  # the same scale and minimum as Q4_K stores them, when it did

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = self.q.shape
        return rows, columns

    @classmethod
    def from_float(cls, weight: torch.Tensor, symmetric: bool = False) -> Int4Groups:
        """Round each group of 32 onto 16 levels from its minimum to its maximum (llama.cpp's Q4_1 rule), or
        with `symmetric` onto 16 levels around zero, the largest magnitude at level 0 (its Q4_0 rule: no
        minimum is stored, 4.5 bits a weight instead of 5).

        ROW_CHUNK rows at a time: the float temporaries of a whole 128k-row head would be gigabytes."""
        out_features, in_features = weight.shape
        q = torch.empty(out_features, in_features, dtype=torch.uint8)
        scale = torch.empty(out_features, in_features // INT4_GROUP)
        minimum = torch.empty_like(scale)
        for first in range(0, out_features, ROW_CHUNK):
            rows = slice(first, first + ROW_CHUNK)
            groups = weight[rows].detach().float().reshape(-1, in_features // INT4_GROUP, INT4_GROUP)
            if symmetric:
                extreme = groups.gather(-1, groups.abs().argmax(-1, keepdim=True))[..., 0]  # signed
                # fp16 now: the kernel stores the scale in fp16, and its minimum must stay -8 * scale exactly
                step = (extreme / -8).half().float()
                low = -8 * step
            else:
                low, high = groups.aminmax(dim=-1)  # (rows, in // 32) each
                step = (high - low) / 15
            inverse = torch.where(step != 0, 1 / step, 0.0)
            levels = (groups - low[..., None]).mul_(inverse[..., None]).round_().clamp_(0, 15)
            q[rows], scale[rows], minimum[rows] = levels.reshape(-1, in_features), step, low
        return cls(q, scale, minimum)

    @classmethod
    def cat(cls, parts: list[Int4Groups]) -> Int4Groups:
        """Stack along the output dimension: one matmul computes all parts' outputs side by side (parts
        with two-level scales or none: see _format)."""
        levels = [p.levels for p in parts if p.levels is not None]
        return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]),
                   torch.cat([p.minimum for p in parts]), SuperBlockScales.cat(levels) if levels else None)

    def dequantize(self) -> torch.Tensor:
        scale = self.scale.repeat_interleave(INT4_GROUP, dim=1)
        return self.q.float() * scale + self.minimum.repeat_interleave(INT4_GROUP, dim=1)  # (out, in)


    def rows(self, first: int, stop: int) -> Int4Groups:
        levels = None if self.levels is None else self.levels.rows(first, stop)
        return Int4Groups(self.q[first:stop], self.scale[first:stop], self.minimum[first:stop], levels)


@dataclass
class Int8Groups:
    """8-bit weights in groups: w[n, k] = q[n, k] * scale[n, k // group] (+ minimum[n, k // group]): GGUF's
    5-, 6- and 8-bit block types, and its 2- and 3-bit k-quants, as stored (weights/gguf_blocks.py)."""

    q: torch.Tensor  # (out, in) int8
    scale: torch.Tensor  # (out, in // group) float32
    minimum: torch.Tensor | None  # like scale, or None
    group: int  # 16 or 32

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = self.q.shape
        return rows, columns

    @classmethod
    def cat(cls, parts: list[Int8Groups]) -> Int8Groups:
        """Stack along the output dimension (parts of one group size, all with minimums or none)."""
        minimums = [p.minimum for p in parts if p.minimum is not None]
        minimum = torch.cat(minimums) if minimums else None
        return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), minimum, parts[0].group)

    def rows(self, first: int, stop: int) -> Int8Groups:
        minimum = None if self.minimum is None else self.minimum[first:stop]
        return Int8Groups(self.q[first:stop], self.scale[first:stop], minimum, self.group)

    def dequantize(self) -> torch.Tensor:
        w = self.q.float() * self.scale.repeat_interleave(self.group, dim=1)
        return w if self.minimum is None else w + self.minimum.repeat_interleave(self.group, dim=1)  # (out, in)


@dataclass
class Q6KBlocks:
    """GGUF Q6_K weights as the file stores them, for the kernel that reads them so (kernels.PackedQ6K):
    each row in_features / 256 blocks of 210 bytes, 6.56 bits a weight (as int8 groups, 9)."""

    blocks: torch.Tensor  # (out, in / 256 * 210) uint8
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.blocks.shape[0], self.in_features)

    @classmethod
    def cat(cls, parts: list[Q6KBlocks]) -> Q6KBlocks:
        return cls(torch.cat([p.blocks for p in parts]), parts[0].in_features)

    def rows(self, first: int, stop: int) -> Q6KBlocks:
        return Q6KBlocks(self.blocks[first:stop], self.in_features)

    def dequantize(self) -> torch.Tensor:
        n = self.blocks.shape[0]
        return split("Q6_K", self.blocks.reshape(-1, Q6_K_BLOCK_BYTES)).dequantize().view(n, self.in_features)


Q6_K_BLOCK_BYTES = 210
Groups = Int4Groups | Int8Groups | Q6KBlocks  # a matrix's groups or blocks, read


class DeferredGroups:
    """Int4Groups or Int8Groups read from a file only when used: quantize_model builds one layer at a time
    and drops what it read, and a large matrix (a 128k-row head) is read and packed ROW_CHUNK rows at a
    time, so a model's weights are never all unpacked at once."""

    def __init__(self, shape: tuple[int, int], kind: type[Int4Groups] | type[Int8Groups] | type[Q6KBlocks],
                 read_rows: Callable[[int, int], Groups],
                 blocks: tuple[str, Callable[[int, int], torch.Tensor]] | None = None,
                 source: tuple[str, Callable[[int, int], torch.Tensor]] | None = None):
        self.shape, self.kind, self._read_rows = shape, kind, read_rows  # kind: Int4Groups, Int8Groups, Q6KBlocks
        # GGUF Q4_0/Q4_1 rows as stored: (block type, read_bytes(first, stop) -> (n, row bytes) uint8), which
        # the kernels' layout is made from in one pass (kernels.pack_q4_blocks); None for other types.
        self.blocks = blocks
        # Any GGUF block type's rows as stored, the same pair: what a tensor-parallel shard of columns is cut
        # from (parallel/shard.py); None for rows made some other way.
        self.source = source

    @classmethod
    def cat(cls, parts: list[DeferredGroups]) -> DeferredGroups:
        """Parts of one block type on one input, stacked along the output (a fused q/k/v or gate/up),
        still unread."""
        bounds, first = [], 0
        for part in parts:
            bounds.append((first, first + part.shape[0], part))
            first += part.shape[0]

        def pieces(start: int, stop: int):  # (part, its first row, its stop row) covering start..stop
            return [(p, max(start, lo) - lo, min(stop, hi) - lo) for lo, hi, p in bounds if lo < stop and hi > start]

        def read_rows(start: int, stop: int):
            return parts[0].kind.cat([p.rows(a, b) for p, a, b in pieces(start, stop)])

        kinds = {None if p.blocks is None else p.blocks[0] for p in parts}
        blocks = None
        if len(kinds) == 1 and (kind := kinds.pop()) is not None:  # all Q4_0 or all Q4_1 rows as stored
            blocks = (kind, lambda start, stop: torch.cat([p.block_bytes(a, b) for p, a, b in pieces(start, stop)]))
        return cls((first, parts[0].shape[1]), parts[0].kind, read_rows, blocks)

    def read(self) -> Groups:
        return self._read_rows(0, self.shape[0])

    def rows(self, first: int, stop: int) -> Groups:
        return self._read_rows(first, min(stop, self.shape[0]))

    def block_bytes(self, first: int, stop: int) -> torch.Tensor:
        """Rows first..stop of a Q4_0/Q4_1 matrix as the file stores them, (n, row bytes) uint8."""
        if self.blocks is None:
            raise ValueError("these rows are not Q4_0/Q4_1 blocks as stored")
        return self.blocks[1](first, stop)


StoredGroups = Groups | DeferredGroups


def select_rows(groups, index: torch.Tensor):
    """Int4Groups, Int8Groups or Q6KBlocks (or Int4Groups' SuperBlockScales) with only the rows at index,
    in that order: each tensor field indexed along its first dimension."""
    values = {}
    for f in dataclasses.fields(groups):
        value = getattr(groups, f.name)
        values[f.name] = (value[index] if isinstance(value, torch.Tensor)
                          else select_rows(value, index) if dataclasses.is_dataclass(value) else value)
    return type(groups)(**values)


def resolved(groups: StoredGroups) -> Groups:
    return groups.read() if isinstance(groups, DeferredGroups) else groups


def matrix_rows(kind: str, rows: torch.Tensor, in_features: int) -> Groups:
    """Rows of a matrix stored in `kind` blocks, (n, row bytes) uint8 -> Int4Groups, Int8Groups or
    Q6KBlocks of shape (n, in_features)."""
    n = rows.shape[0]
    if kind == "Q6_K":  # read by the kernel as stored
        return Q6KBlocks(rows.contiguous(), in_features)
    groups = split(kind, rows.reshape(n * (in_features // block_size(kind)), -1))
    q, scale = groups.q.reshape(n, in_features), groups.scale.reshape(n, -1)
    minimum = None if groups.minimum is None else groups.minimum.reshape(n, -1)
    if groups.bits == 8:
        return Int8Groups(q, scale, minimum, groups.group)
    if minimum is None:  # every 4-bit type has one (Q4_0's is -8 * scale)
        raise ValueError(f"{kind} blocks split without minimums")
    levels = None if groups.levels is None else SuperBlockScales(*(t.reshape(n, -1) for t in groups.levels))
    return Int4Groups(q, scale, minimum, levels)


def deferred_matrix(kind: str, shape: tuple[int, int], read_rows: Callable[[int, int], torch.Tensor]) -> DeferredGroups:
    """A (out, in) matrix of `kind` blocks as DeferredGroups: read_rows(first, stop) gives those rows'
    bytes, (stop - first, row bytes) uint8."""
    return DeferredGroups(shape, Int4Groups if kind in FOUR_BIT else Q6KBlocks if kind == "Q6_K" else Int8Groups,
                          lambda first, stop: matrix_rows(kind, read_rows(first, stop), shape[1]),
                          blocks=(kind, read_rows) if kind in ("Q4_0", "Q4_1") else None, source=(kind, read_rows))


class BlockEmbedding(torch.nn.Module):
    """An embedding table kept in its GGUF blocks: each lookup converts only the rows it reads. A tied
    head is packed from the same blocks for the kernels (groups)."""

    blocks: torch.Tensor  # (vocab, row bytes) uint8

    def __init__(self, blocks: torch.Tensor, kind: str, dim: int, read_rows=None):
        """read_rows(first, stop): those rows' bytes for groups(), if not a slice of blocks (a file can
        copy them and let its pages go)."""
        super().__init__()
        self.register_buffer("blocks", blocks, persistent=False)  # (vocab, row bytes) uint8
        self.kind, self.num_embeddings, self.embedding_dim = kind, blocks.shape[0], dim
        self.read_rows = read_rows or (lambda first, stop: self.blocks[first:stop])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_embeddings, self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> (..., dim) float32."""
        rows = self.blocks[ids.reshape(-1)]  # (n, row bytes): a copy
        weights = split(self.kind, rows.reshape(rows.shape[0] * (self.embedding_dim // block_size(self.kind)), -1))
        return weights.dequantize().view(*ids.shape, self.embedding_dim)

    def groups(self):
        """The whole matrix as DeferredGroups, read a chunk of rows at a time as it is packed."""
        return deferred_matrix(self.kind, self.shape, self.read_rows)
