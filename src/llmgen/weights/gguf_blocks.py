"""ggml's block formats as integers and scales: what each GGUF block type stores, read with torch.

Every common type stores a weight as a small integer times a scale per group of 16 or 32 weights, plus a
minimum per group for some: w = q * scale [+ minimum]. `split` reads blocks into exactly that (q, scale,
minimum), which serves twice:
- kept quantized (weights/stored.py, quantization/): 4-bit types become Int4Groups for the int4 kernel (Q4_K with its
  two-level scales as stored), Q6_K stays in its blocks (Q6KBlocks) for the kernel's Q6_K path, the others
  become Int8Groups for the int8 kernel, with nothing converted to float;
- dequantized (`--quantize none`, the reference): q * scale + minimum, computed in float32 in the order
  gguf-py's numpy code uses, so the result is the same to the bit (tests/weights/test_gguf_blocks.py).
The k-quants' two-level scales (a 6- or 8-bit scale per sub-block times an fp16 scale per 256 weights)
are multiplied out here in float32, as ggml and gguf-py do.

Layouts from ggml-common.h and gguf-py's quants.py. Each function takes (n_blocks, block_bytes) uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QK_K = 256  # weights per k-quant super-block
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


@dataclass
class BlockGroups:
    """A run of blocks as w = q * scale [+ minimum], per group of `group` weights."""

    q: torch.Tensor  # (n_blocks, block) uint8 in 0..15 (bits 4) or int8 (bits 8)
    scale: torch.Tensor  # (n_blocks, block / group) float32
    minimum: torch.Tensor | None  # like scale, or None
    group: int
    bits: int
    # Q4_K's scale and minimum as stored: 6-bit sc and m (n_blocks, 8) uint8, fp16 d and dmin (n_blocks, 1)
    levels: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def dequantize(self) -> torch.Tensor:
        """(n_blocks, block) float32."""
        n, block = self.q.shape
        q = self.q.view(n, block // self.group, self.group).float()
        w = q * self.scale[..., None]
        if self.minimum is not None:
            w = w + self.minimum[..., None]
        return w.view(n, block)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()  # (n_blocks, 1)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    # Weight j of a 32-weight block sits in the low nibble of byte j (j < 16), weight 16 + j in its high one.
    return torch.cat((packed & 0x0F, packed >> 4), dim=1)  # (n_blocks, 32) uint8


def _bits(packed: torch.Tensor) -> torch.Tensor:
    """(n, bytes) -> (n, 8 bytes) of 0/1: bit i of byte b at 8b + i (a little-endian bit field)."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed[..., None] >> shifts) & 1).flatten(-2)


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit minimums (n, 8) each (get_scale_min_k4)."""
    low, high, mixed = packed.view(-1, 3, 4).unbind(1)  # bytes 0-3, 4-7, 8-11
    scales = torch.cat((low & 0x3F, (mixed & 0x0F) | ((low >> 2) & 0x30)), dim=1)
    minimums = torch.cat((high & 0x3F, (mixed >> 4) | ((high >> 2) & 0x30)), dim=1)
    return scales, minimums  # uint8


def q4_0(blocks: torch.Tensor) -> BlockGroups:  # 18 bytes: f16 d, 16 bytes of nibbles; w = d * (q - 8)
    d = _f16(blocks, 0)
    return BlockGroups(_nibbles(blocks[:, 2:]), d, -8 * d, 32, 4)


def q4_1(blocks: torch.Tensor) -> BlockGroups:  # 20 bytes: f16 d, f16 m, nibbles; w = d * q + m
    return BlockGroups(_nibbles(blocks[:, 4:]), _f16(blocks, 0), _f16(blocks, 2), 32, 4)


def q5_0(blocks: torch.Tensor) -> BlockGroups:  # 22 bytes: f16 d, 32 high bits, nibbles; w = d * (q - 16)
    q = _nibbles(blocks[:, 6:]) | _bits(blocks[:, 2:6]) << 4
    return BlockGroups(q.view(torch.int8) - 16, _f16(blocks, 0), None, 32, 8)


def q5_1(blocks: torch.Tensor) -> BlockGroups:  # 24 bytes: f16 d, f16 m, 32 high bits, nibbles; w = d q + m
    q = _nibbles(blocks[:, 8:]) | _bits(blocks[:, 4:8]) << 4
    return BlockGroups(q.view(torch.int8), _f16(blocks, 0), _f16(blocks, 2), 32, 8)


def q8_0(blocks: torch.Tensor) -> BlockGroups:  # 34 bytes: f16 d, 32 int8; w = d * q
    return BlockGroups(blocks[:, 2:].contiguous().view(torch.int8), _f16(blocks, 0), None, 32, 8)


def iq4_nl(blocks: torch.Tensor) -> BlockGroups:  # 18 bytes: f16 d, nibbles indexing a table; w = d * table[q]
    values = torch.tensor(IQ4_NL_VALUES, dtype=torch.int8)
    return BlockGroups(values[_nibbles(blocks[:, 2:]).long()], _f16(blocks, 0), None, 32, 8)


def q4_k(blocks: torch.Tensor) -> BlockGroups:
    """144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales and minimums, 128 bytes of nibbles. Sub-block
    2c is the low nibbles of bytes 32c..32c+31, 2c+1 their high nibbles; w = d sc q - dmin m."""
    scales, minimums = _k_scales(blocks[:, 4:16])
    packed = blocks[:, 16:].reshape(-1, 4, 1, 32)
    q = torch.cat((packed & 0x0F, packed >> 4), dim=2).reshape(-1, QK_K)
    d, dmin = (blocks[:, i:i + 2].contiguous().view(torch.float16) for i in (0, 2))  # (n_blocks, 1)
    return BlockGroups(q, d.float() * scales, -(dmin.float() * minimums), 32, 4, (scales, minimums, d, dmin))


def q5_k(blocks: torch.Tensor) -> BlockGroups:
    """176 bytes: d, dmin, 12 scale bytes, 32 bytes of high bits (sub-block j's in bit j), 128 of nibbles
    as in Q4_K; w = d sc q - dmin m with q in 0..31."""
    scales, minimums = _k_scales(blocks[:, 4:16])
    packed = blocks[:, 48:].reshape(-1, 4, 1, 32)
    low = torch.cat((packed & 0x0F, packed >> 4), dim=2).reshape(-1, 8, 32)
    high = (blocks[:, 16:48, None] >> torch.arange(8, dtype=torch.uint8)) & 1  # (n, 32 l, 8 j)
    q = low | high.transpose(1, 2) << 4
    return BlockGroups(q.reshape(-1, QK_K).view(torch.int8), _f16(blocks, 0) * scales,
                       -(_f16(blocks, 2) * minimums), 32, 8)


def q6_k(blocks: torch.Tensor) -> BlockGroups:
    """210 bytes: ql[128] low 4 bits, qh[64] high 2 bits, 16 int8 scales (one per 16 weights), f16 d. Each
    half of 128 weights takes 64 bytes of ql, 32 of qh, 8 scales: weight 32k + l (k < 4, l < 32) has its low
    bits in nibble k // 2 of ql[l + 32 (k % 2)] and its high bits in bits 2k, 2k + 1 of qh[l];
    w = d * scale[(32k + l) // 16] * (q - 32)."""
    ql = blocks[:, :128].reshape(-1, 2, 64)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    low = torch.cat((ql & 0x0F, ql >> 4), dim=-1)  # (n, 2, 128): weights 0-31, 32-63, 64-95, 96-127
    high = (qh >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)) & 3  # (n, 2, 4, 32)
    q = (low | high.reshape(-1, 2, 128) << 4).view(torch.int8) - 32  # in -32..31
    scales = _f16(blocks, 208) * blocks[:, 192:208].contiguous().view(torch.int8).float()  # (n, 16)
    return BlockGroups(q.reshape(-1, QK_K), scales, None, 16, 8)


def q3_k(blocks: torch.Tensor) -> BlockGroups:
    """110 bytes: hmask[32], qs[64] (2-bit), 12 bytes of 6-bit scales (offset 32), f16 d. Sub-block j
    (16 weights) of shift s = j // 2 % 4 ... as gguf-py: q = low 2 bits - 4 * (1 - hmask bit), in -4..3."""
    hmask, qs, packed_scales = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
    low_scales = (packed_scales[:, :8, None] >> torch.tensor([0, 4], dtype=torch.uint8)).transpose(1, 2)
    high_scales = (packed_scales[:, 8:12, None] >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8)).transpose(1, 2)
    scales = (low_scales.reshape(-1, 16) & 0x0F) | ((high_scales.reshape(-1, 16) & 0x03) << 4)
    scales = scales.view(torch.int8).float() - 32  # (n, 16)
    low = (qs.reshape(-1, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)) & 3
    high = (hmask.reshape(-1, 1, 32) >> torch.arange(8, dtype=torch.uint8).view(1, 8, 1)) & 1
    q = low.reshape(-1, QK_K).view(torch.int8) - ((high.reshape(-1, QK_K) ^ 1) << 2).view(torch.int8)
    return BlockGroups(q, _f16(blocks, 108) * scales, None, 16, 8)


def q2_k(blocks: torch.Tensor) -> BlockGroups:
    """84 bytes: 16 scale bytes (low nibble the scale, high the minimum, per 16 weights), qs[64] of 2-bit
    values, f16 d, f16 dmin; w = d sc q - dmin m."""
    packed_scales = blocks[:, :16]
    q = (blocks[:, 16:80].reshape(-1, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)) & 3
    return BlockGroups(q.reshape(-1, QK_K).view(torch.int8), _f16(blocks, 80) * (packed_scales & 0x0F).float(),
                       -(_f16(blocks, 82) * (packed_scales >> 4).float()), 16, 8)


SPLITTERS = {"Q4_0": q4_0, "Q4_1": q4_1, "Q5_0": q5_0, "Q5_1": q5_1, "Q8_0": q8_0, "IQ4_NL": iq4_nl,
             "Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k}


def split(kind: str, blocks: torch.Tensor) -> BlockGroups:
    """Blocks of GGUF type `kind` (a SPLITTERS key) as integers and scales."""
    return SPLITTERS[kind](blocks)


FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K")  # split into 4-bit groups (the int4 kernel); the rest are 8-bit


def block_size(kind: str) -> int:
    return QK_K if kind.endswith("_K") else 32






