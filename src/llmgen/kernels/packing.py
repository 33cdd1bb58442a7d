"""Weights in the layouts the kernels read (described in int4_matmul.cpp and int8_matmul.cpp): packed once, at load."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmgen.kernels.build import loaded

GROUP = 32  # weights per scale and minimum (GGUF's Q4_1 blocks)
CHUNK_GROUPS = 16  # groups per whole chunk of the packed layout (int4_matmul.cpp)
SUPER_GROUPS = 8  # groups per Q4_K super-block: one pair of super_scales/super_minimums
INT8_GROUPS = (16, 32)  # the group sizes int8_matmul.cpp takes
INT8_ROW_ALIGN = 64  # int8 rows are padded to whole 64-byte steps (int8_matmul.cpp)


class _GroupedRows:
    """What the grouped layouts derive from their tensors."""

    packed: torch.Tensor
    scales: torch.Tensor

    @property
    def groups(self) -> int:
        return self.scales.size(1)

    @property
    def out_features(self) -> int:
        return self.packed.size(0)


@dataclass(frozen=True)
class PackedInt4(_GroupedRows):
    """4-bit weights in int4_matmul.cpp's layout (described there)."""

    packed: torch.Tensor  # (out, padded_in / 2) uint8
    scales: torch.Tensor  # (out, groups) float16; uint8 with super_scales
    minimums: torch.Tensor | None  # (out, groups) float16; None: GGUF's Q4_0 form, minimum = -8 * scale
    in_features: int
    # Q4_K's two levels (weights/stored.SuperBlockScales): scales and minimums are 6-bit integers in uint8, and
    # a group's scale is scales * super_scales[group // 8], its minimum minimums * super_minimums[group // 8].
    super_scales: torch.Tensor | None = None  # (out, groups / 8) float16: Q4_K's d
    super_minimums: torch.Tensor | None = None  # (out, groups / 8) float16: Q4_K's -dmin

    bits = 4
    group = GROUP
    TENSORS = ("packed", "scales", "minimums", "super_scales", "super_minimums")


@dataclass(frozen=True)
class PackedInt8(_GroupedRows):
    """8-bit weights in groups in int8_matmul.cpp's layout: w = q * scale [+ minimum]."""

    packed: torch.Tensor  # (out, padded_in) int8: rows padded with zeros to a multiple of 64
    scales: torch.Tensor  # (out, padded_in / group) float16
    minimums: torch.Tensor | None  # like scales, or None: no minimum
    in_features: int
    group: int  # 16 or 32

    bits = 8
    TENSORS = ("packed", "scales", "minimums")
    super_scales = super_minimums = None


@dataclass(frozen=True)
class PackedQ6K:
    """GGUF Q6_K blocks rearranged for int8_matmul.cpp's Q6_K path (pack_q6_k): 6.56 bits a weight."""

    packed: torch.Tensor  # (out, in / 256 * 210) uint8: each row's blocks
    in_features: int  # a multiple of 256

    bits = 6
    group = 16  # weights per scale: x is rounded to int8 in groups of 16
    TENSORS = ("packed",)
    scales = minimums = super_scales = super_minimums = None

    @property
    def groups(self) -> int:
        return self.in_features // self.group

    @property
    def out_features(self) -> int:
        return self.packed.size(0)


Q6_K_BYTES = 210  # bytes per block of 256 weights


def pack_q6_k(blocks: torch.Tensor, in_features: int) -> PackedQ6K:
    """Rows of GGUF Q6_K blocks (out, in / 256 * 210) -> the same bytes rearranged as int8_matmul.cpp's Q6_K
    path reads them: step t (0..3) of a block holds q[group j][4t + i] at byte 4j + i, its low nibbles in
    bytes 64 (t // 2) .. (low nibble for even t), its high 2 bits at bits 2t of bytes 128..191; then the
    16 scales and d as stored."""
    out_features = blocks.shape[0]
    raw = blocks.reshape(-1, Q6_K_BYTES)
    q = _q6_k_values(raw)  # (n, 256) in 0..63, natural order
    steps = q.view(-1, 16, 4, 4).transpose(1, 2).reshape(-1, 4, 64)  # (n, t, 4j + i)
    nibbles = (steps[:, 0::2] & 0x0F) | (steps[:, 1::2] & 0x0F) << 4  # (n, 2, 64)
    high = steps >> 4
    high_bits = high[:, 0] | high[:, 1] << 2 | high[:, 2] << 4 | high[:, 3] << 6  # (n, 64)
    packed = torch.cat((nibbles.reshape(-1, 128), high_bits, raw[:, 192:]), dim=1)
    return PackedQ6K(packed.reshape(out_features, -1).contiguous(), in_features)


def unpack_q6_k(packed: PackedQ6K) -> torch.Tensor:
    """pack_q6_k's inverse: the GGUF Q6_K blocks (out, in / 256 * 210) uint8."""
    raw = packed.packed.reshape(-1, Q6_K_BYTES)
    nibbles = raw[:, :128].view(-1, 2, 64)
    steps = torch.stack((nibbles[:, 0] & 0x0F, nibbles[:, 0] >> 4, nibbles[:, 1] & 0x0F, nibbles[:, 1] >> 4), dim=1)
    steps = steps | ((raw[:, None, 128:192] >> (2 * torch.arange(4, dtype=torch.uint8))[None, :, None]) & 3) << 4
    q = steps.view(-1, 4, 16, 4).transpose(1, 2).reshape(-1, 2, 4, 32)  # (n, half, quarter, l): natural order
    ql = torch.cat(((q[:, :, 0] & 0x0F) | q[:, :, 2] << 4, (q[:, :, 1] & 0x0F) | q[:, :, 3] << 4), dim=2)  # (n, 2, 64)
    high = q >> 4
    qh = high[:, :, 0] | high[:, :, 1] << 2 | high[:, :, 2] << 4 | high[:, :, 3] << 6  # (n, 2, 32)
    return torch.cat((ql.reshape(-1, 128), qh.reshape(-1, 64), raw[:, 192:]), dim=1).reshape(packed.packed.shape)


def _q6_k_values(raw: torch.Tensor) -> torch.Tensor:
    """GGUF Q6_K blocks (n, 210) -> q (n, 256) uint8 in 0..63: weight 128h + 32k + l takes its low 4 bits
    from ql[64h + 32 (k % 2) + l] (the high nibble for k >= 2) and its high 2 from qh[32h + l] >> 2k."""
    ql = raw[:, :128].reshape(-1, 2, 2, 32)  # (n, half, k % 2, l)
    qh = raw[:, 128:192].reshape(-1, 2, 1, 32)
    low = torch.cat((ql & 0x0F, ql >> 4), dim=2)  # (n, half, k, l)
    high = (qh >> (2 * torch.arange(4, dtype=torch.uint8)).view(1, 1, 4, 1)) & 3
    return (low | high << 4).reshape(-1, 256)


def pack_int8(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None, group: int) -> PackedInt8:
    """q (out, in) int8, scale and minimum (out, in / group) -> int8_matmul.cpp's layout: rows padded to
    whole 64-byte steps, the pad groups' scales 0."""
    if group not in INT8_GROUPS:
        raise ValueError(f"int8 groups are {INT8_GROUPS}, not {group}")
    out_features, in_features = q.shape
    padded_in = -(-in_features // INT8_ROW_ALIGN) * INT8_ROW_ALIGN
    groups = padded_in // group
    packed = F.pad(q.to(torch.int8), (0, padded_in - in_features)).contiguous()
    def padded(t: torch.Tensor) -> torch.Tensor:  # the pad groups' scales 0
        return F.pad(t.float(), (0, groups - t.size(1))).half().contiguous()

    return PackedInt8(packed, padded(scale), None if minimum is None else padded(minimum), in_features, group)


def pack_int4(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, levels=None) -> PackedInt4:
    """q (out, in) uint8 in 0..15, scale and minimum (out, in / 32) -> int4_matmul.cpp's layout.

    Weights in GGUF's Q4_0 form (every minimum -8 * scale) keep no minimums: a tenth fewer bytes for
    the kernel to read, one stream fewer. Weights with `levels` (weights/stored.SuperBlockScales: Q4_K's, the
    same scale and minimum in two levels) keep those instead: 0.625 bits a weight, not 1.

    Whole chunks of 16 groups: byte 4j + i of vector u holds q[group j][8u + i] (low nibble) and
    q[group j][8u + 4 + i] (high). Then the remaining groups in pairs, byte i holding q[i] and q[32 + i];
    an odd group count gets an empty group (zero weights) to pair with.
    """
    out_features, in_features = q.shape
    groups = in_features // GROUP + in_features // GROUP % 2
    q = F.pad(q, (0, groups * GROUP - in_features))
    chunks = groups // CHUNK_GROUPS
    whole = q[:, :chunks * CHUNK_GROUPS * GROUP].reshape(out_features, chunks, CHUNK_GROUPS, 4, 2, 4)  # (.., j, u, half, i)
    whole = (whole[..., 0, :] | whole[..., 1, :] << 4).permute(0, 1, 3, 2, 4)  # (out, chunk, u, j, i)
    pairs = q[:, chunks * CHUNK_GROUPS * GROUP:].reshape(out_features, -1, 2, GROUP)
    pairs = pairs[:, :, 0] | pairs[:, :, 1] << 4  # (out, pair, 32)
    packed = torch.cat((whole.reshape(out_features, -1), pairs.reshape(out_features, -1)), dim=1)
    if levels is not None and groups % SUPER_GROUPS == 0:  # whole super-blocks, as Q4_K's rows always are
        return PackedInt4(packed.contiguous(), levels.sc.contiguous(), levels.m.contiguous(), in_features,
                          levels.d.contiguous(), (-levels.dmin).contiguous())
    scales, minimums = (F.pad(t.float(), (0, groups - t.size(1))).half().contiguous() for t in (scale, minimum))
    symmetric = torch.equal(minimums, scales * -8)  # exact in float16: a power of two
    return PackedInt4(packed.contiguous(), scales, None if symmetric else minimums, in_features)


Q4_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}


def pack_q4_blocks(rows: torch.Tensor, in_features: int, kind: str) -> PackedInt4:
    """Rows of GGUF Q4_0 or Q4_1 blocks (n, in / 32 * 18 or 20) uint8 -> int4_matmul.cpp's layout in one
    pass (repack.cpp); the same as pack_int4 on the blocks' levels, scales and minimums."""
    block_bytes = Q4_BLOCK_BYTES[kind]
    n_rows = rows.shape[0]
    if in_features % GROUP or rows.shape[1] != in_features // GROUP * block_bytes or rows.dtype != torch.uint8:
        raise ValueError(f"{kind} rows of {in_features} weights are {in_features // GROUP * block_bytes} bytes")
    rows = rows.contiguous()
    groups = in_features // GROUP + in_features // GROUP % 2
    packed = torch.empty(n_rows, groups * GROUP // 2, dtype=torch.uint8)
    scales = torch.empty(n_rows, groups, dtype=torch.float16)
    minimums = torch.empty_like(scales) if kind == "Q4_1" else None
    loaded().pack_q4_rows(rows.data_ptr(), n_rows, in_features, block_bytes, packed.data_ptr(),
                           scales.data_ptr(), pointer(minimums), torch.get_num_threads())
    return PackedInt4(packed, scales, minimums, in_features)


@dataclass
class PackedBf16:
    """bfloat16 weights as a checkpoint stores them, for bf16_matmul.cpp: (out, in) row-major, used in place
    (a memory-mapped checkpoint's pages), nothing packed."""

    packed: torch.Tensor  # (out, in) bfloat16, contiguous

    bits = 16
    group = 0
    TENSORS = ("packed",)
    scales = minimums = super_scales = super_minimums = None
    groups = 0

    def __post_init__(self):
        if self.packed.dtype != torch.bfloat16 or self.packed.dim() != 2 or not self.packed.is_contiguous():
            raise ValueError("bf16 weights must be a contiguous (out, in) bfloat16 matrix")

    @property
    def in_features(self) -> int:
        return self.packed.shape[1]

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]


Packed = PackedInt4 | PackedInt8 | PackedQ6K | PackedBf16


def pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()
