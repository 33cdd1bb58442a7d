"""llmgen's own CPU kernels, in C++ (this directory), built on first use: what a decode step spends
its time on.

- int4_matmul.cpp: y = x W^T for 4-bit weights (GGUF's Q4_1 form). Decoding a small model reads weights
  that mostly stay in the CPU's caches, so its speed is set by how fast the kernel turns 4-bit weights
  into dot products. PyTorch's CPU int4 kernel converts every weight to float; this one rounds the
  activations to int8 and multiplies bytes, 64 per instruction with AVX-512 VNNI, 32 per two
  instructions with AVX2, as llama.cpp does.
- int8_matmul.cpp: the same for 8-bit weights in groups of 16 or 32: the GGUF block types that are not
  4-bit (Q8_0, Q5_x, Q6_K, ...), held losslessly as int8 and a scale per group.
- linear.cpp: one layer's call: it can RMS-normalise its input or take SwiGLU's silu(gate) * up first,
  add its result into the residual stream, and run parts in different formats side by side.
- attention.cpp: one decode step's attention for one layer (RoPE, cache writes, softmax attention), one
  call instead of a dozen tensor ops that each cost more in dispatch than in arithmetic.
- llama_layers.cpp: all of a LLaMA's blocks for one token in one call (decode/llama.py's kernel_step).
The numbers are in benchmarks/RESULTS.md.

Levels: the same sources are built for the best instruction set the CPU has (LEVELS: avx512 with VNNI,
avx2, or portable C++ for anything else, ARM included), and LLMGEN_KERNELS=avx512|avx2|portable forces
a level the CPU supports, so every level can be tested on any machine able to run it. Without a C++
compiler, or with LLMGEN_KERNELS=0, models use PyTorch's kernels and ops instead (same results, within
rounding; tests/test_kernels.py).

Each level's library is compiled once per machine (a few seconds) into llmgen's data directory, named by
a hash of the sources, the compiler, the level and the CPU, and called through ctypes: plain pointers,
no Python objects, so no torch headers to compile against. Its OpenMP threads are PyTorch's: torch
loads libgomp first, and the library links the same libgomp.so.1.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from llmgen.errors import LLMGenWarning, first_line

HERE = Path(__file__).parent
SOURCES = (HERE / "int4_matmul.cpp", HERE / "int8_matmul.cpp", HERE / "bf16_matmul.cpp", HERE / "linear.cpp",
           HERE / "attention.cpp", HERE / "llama_layers.cpp", HERE / "repack.cpp")
HEADERS = (HERE / "kernels.h", HERE / "fast_exp.h", HERE / "simd.h")
FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


@dataclass(frozen=True)
class Level:
    name: str
    cpu_flags: tuple[str, ...]  # what /proc/cpuinfo must list
    compiler_flags: tuple[str, ...]  # what selects this level's code in the sources (int4_matmul.cpp)


# Best first: "auto" picks the first the CPU supports.
LEVELS = (
    Level("avx512", ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
          ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni")),
    Level("avx2", ("avx2", "fma", "f16c"), ("-mavx2", "-mfma", "-mf16c")),
    # Plain C++ for the machine's own vector unit (SSE, NEON, ...), the intrinsics left out.
    Level("portable", (), ("-march=native", "-DLLMGEN_PORTABLE")),
)
X86 = ("x86_64", "amd64", "i386", "i686")
GROUP = 32  # weights per scale and minimum (GGUF's Q4_1 blocks)
CHUNK_GROUPS = 16  # groups per whole chunk of the packed layout (int4_matmul.cpp)
SUPER_GROUPS = 8  # groups per Q4_K super-block: one pair of super_scales/super_minimums
INT8_GROUPS = (16, 32)  # the group sizes int8_matmul.cpp takes
INT8_ROW_ALIGN = 64  # int8 rows are padded to whole 64-byte steps (int8_matmul.cpp)


@dataclass(frozen=True)
class PackedInt4:
    """4-bit weights in int4_matmul.cpp's layout (described there)."""

    packed: torch.Tensor  # (out, padded_in / 2) uint8
    scales: torch.Tensor  # (out, groups) float16; uint8 with super_scales
    minimums: torch.Tensor | None  # (out, groups) float16; None: GGUF's Q4_0 form, minimum = -8 * scale
    in_features: int
    # Q4_K's two levels (quantize.SuperBlockScales): scales and minimums are 6-bit integers in uint8, and
    # a group's scale is scales * super_scales[group // 8], its minimum minimums * super_minimums[group // 8].
    super_scales: torch.Tensor | None = None  # (out, groups / 8) float16: Q4_K's d
    super_minimums: torch.Tensor | None = None  # (out, groups / 8) float16: Q4_K's -dmin

    bits = 4
    group = GROUP
    TENSORS = ("packed", "scales", "minimums", "super_scales", "super_minimums")

    @property
    def groups(self) -> int:
        return self.scales.size(1)

    @property
    def out_features(self) -> int:
        return self.packed.size(0)


@dataclass(frozen=True)
class PackedInt8:
    """8-bit weights in groups in int8_matmul.cpp's layout: w = q * scale [+ minimum]."""

    packed: torch.Tensor  # (out, padded_in) int8: rows padded with zeros to a multiple of 64
    scales: torch.Tensor  # (out, padded_in / group) float16
    minimums: torch.Tensor | None  # like scales, or None: no minimum
    in_features: int
    group: int  # 16 or 32

    bits = 8
    TENSORS = ("packed", "scales", "minimums")
    super_scales = super_minimums = None

    @property
    def groups(self) -> int:
        return self.scales.size(1)

    @property
    def out_features(self) -> int:
        return self.packed.size(0)


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
    scales, minimums = (None if t is None else F.pad(t.float(), (0, groups - t.size(1))).half().contiguous()
                        for t in (scale, minimum))
    return PackedInt8(packed, scales, minimums, in_features, group)


def pack_int4(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, levels=None) -> PackedInt4:
    """q (out, in) uint8 in 0..15, scale and minimum (out, in / 32) -> int4_matmul.cpp's layout.

    Weights in GGUF's Q4_0 form (every minimum -8 * scale) keep no minimums: a tenth fewer bytes for
    the kernel to read, one stream fewer. Weights with `levels` (quantize.SuperBlockScales: Q4_K's, the
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
    library().pack_q4_rows(rows.data_ptr(), n_rows, in_features, block_bytes, packed.data_ptr(),
                           scales.data_ptr(), _pointer(minimums), torch.get_num_threads())
    return PackedInt4(packed, scales, minimums, in_features)


# kernels.h's GATED_* codes: the activation of a gated layer's input.
GATED_ACTIVATIONS = {"silu": 1, "gelu_tanh": 2}


class QuantLayer(ctypes.Structure):
    """kernels.h's QuantLayer: what a layer's calls share."""


QuantLayer._fields_ = [
    ("packed", ctypes.c_void_p), ("scales", ctypes.c_void_p), ("minimums", ctypes.c_void_p),
    ("super_scales", ctypes.c_void_p), ("super_minimums", ctypes.c_void_p),
    ("groups", ctypes.c_int64), ("in_features", ctypes.c_int64), ("out_features", ctypes.c_int64),
    ("bias", ctypes.c_void_p), ("norm_weight", ctypes.c_void_p), ("norm_eps", ctypes.c_float),
    ("gated", ctypes.c_int32), ("bits", ctypes.c_int32), ("group", ctypes.c_int32),
    ("next", ctypes.POINTER(QuantLayer))]

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


class QuantMatmul:
    """x -> prepare(x) W^T (+ bias) through quant_linear, for one layer: float32 (rows, in) in, (rows, out)
    out. W is one packed matrix, or several side by side (`parts`, each with its bias or None), whose
    outputs are concatenated: a fused q/k/v whose parts are stored in different formats.

    prepare is nothing, RMSNorm with `norm_weight` (then x is the un-normalised residual stream), or with
    `gated`, activation(gate) * up of x = [gate, up] (rows, 2 in), activation "silu" (SwiGLU) or "gelu_tanh"
    (Gemma's GeGLU). With `out` and accumulate=True the result is added into `out` in place: a residual
    connection with no extra tensor op.
    """

    def __init__(self, parts: list[tuple[Packed, torch.Tensor | None]], norm_weight: torch.Tensor | None = None,
                 norm_eps: float = 0.0, gated: bool = False, activation: str = "silu"):
        if activation not in GATED_ACTIVATIONS:
            raise ValueError(f"gated activation {activation!r} is not one of {', '.join(GATED_ACTIVATIONS)}")
        in_features = parts[0][0].in_features
        if any(weights.in_features != in_features for weights, _ in parts):
            raise ValueError("the parts of a fused layer take the same input")
        for weights, _ in parts:  # the kernel reads an fp16 pair per 8 groups, 8-bit values per group
            if weights.bits == 6 and not (weights.in_features % 256 == 0 and weights.packed.dtype == torch.uint8
                                          and weights.packed.shape[1] == weights.in_features // 256 * 210):
                raise ValueError("Q6_K rows are whole 210-byte blocks of 256 weights")
            if weights.super_scales is not None and not (
                    weights.groups % SUPER_GROUPS == 0 and weights.scales.dtype == weights.minimums.dtype == torch.uint8
                    and weights.super_scales.shape == weights.super_minimums.shape
                    == (weights.out_features, weights.groups // SUPER_GROUPS)):
                raise ValueError("two-level scales need whole super-blocks of 8 groups")
        # Kept here: the structs hold raw pointers to these tensors.
        self.parts = [(weights, None if bias is None else bias.detach().float().contiguous()) for weights, bias in parts]
        self.norm_weight = None if norm_weight is None else norm_weight.detach().float().contiguous()
        self.layers = (QuantLayer * len(parts))()
        for i, (weights, bias) in enumerate(self.parts):
            first = i == 0
            self.layers[i] = QuantLayer(
                weights.packed.data_ptr(), _pointer(weights.scales), _pointer(weights.minimums),
                _pointer(weights.super_scales), _pointer(weights.super_minimums), weights.groups,
                in_features, weights.out_features, _pointer(bias), _pointer(self.norm_weight) if first else None,
                norm_eps, GATED_ACTIVATIONS[activation] if gated and first else 0, weights.bits, weights.group,
                ctypes.pointer(self.layers[i + 1]) if i + 1 < len(parts) else None)
        self.layer = self.layers[0]
        self.address = ctypes.addressof(self.layers)
        self.out_features = sum(weights.out_features for weights, _ in parts)
        self.in_width = 2 * in_features if gated else in_features  # x's columns
        self.run = library().quant_linear

    @property
    def weights(self) -> Packed:
        return self.parts[0][0]

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        rows = x.shape[0]
        # The kernel trusts these shapes: a wrong one would read or write past the tensors.
        if x.dim() != 2 or x.shape[1] != self.in_width:
            raise ValueError(f"quantized layer takes (rows, {self.in_width}) inputs, got {tuple(x.shape)}")
        if out is None:
            out = torch.empty(rows, self.out_features)
        elif out.shape != (rows, self.out_features) or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"quantized layer writes a contiguous float32 ({rows}, {self.out_features}) output")
        self.run(self.address, x.data_ptr(), rows, out.data_ptr(), int(accumulate), torch.get_num_threads())
        return out


def Int4Matmul(weights: PackedInt4, bias: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
               norm_eps: float = 0.0, gated: bool = False,
               activation: str = "silu") -> QuantMatmul:  # noqa: N802 (kept for its callers)
    """One packed matrix as a QuantMatmul."""
    return QuantMatmul([(weights, bias)], norm_weight, norm_eps, gated, activation)


class AttentionStep:
    """(heads, pos) -> (1, n_heads * head_dim): one layer's decode-step attention through attention.cpp.

    heads: (1, (n_heads + 2 n_kv_heads) head_dim) float32, the new token's q, k, v (turned in place by RoPE);
    pos: (1,) int64 tensor. keys_t and values are the layer's caches (batch row 0, float32); rope:
    (max_len, 2, head_dim / 2) cos and sin, or None for a model without RoPE; window: attend to the last
    `window` positions only (0: all); scale: q.k's (None: 1 / sqrt(head_dim)).
    """

    def __init__(self, keys_t: torch.Tensor, values: torch.Tensor, n_heads: int, rope: torch.Tensor | None,
                 window: int = 0, scale: float | None = None):
        n_kv_heads, head_dim, max_len = keys_t.shape
        if not (keys_t.dtype == values.dtype == torch.float32 and keys_t.is_contiguous() and values.is_contiguous()):
            raise ValueError("the attention kernel needs contiguous float32 caches")
        self.keys_t, self.values, self.rope = keys_t, values, None if rope is None else rope.contiguous()
        self.shape = (n_heads, n_kv_heads, head_dim, max_len)
        self.pointers = (_pointer(self.rope), keys_t.data_ptr(), values.data_ptr())
        self.window, self.scale = window, head_dim ** -0.5 if scale is None else scale
        self.run = library().attention_step

    def __call__(self, heads: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if heads.dtype != torch.float32 or not heads.is_contiguous():
            heads = heads.float().contiguous()
        n_heads, n_kv_heads, head_dim, max_len = self.shape
        out = torch.empty(1, n_heads * head_dim)
        rope, keys_t, values = self.pointers
        if self.run(heads.data_ptr(), rope, keys_t, values, _position(pos), n_heads, n_kv_heads, head_dim, max_len,
                    self.window, self.scale, out.data_ptr(), torch.get_num_threads()):
            raise ValueError(f"position {int(pos)} is outside the KV cache's {max_len}")
        return out


class LlamaLayer(ctypes.Structure):
    """llama_layers.cpp's LlamaLayer: one TransformerBlock's four quantized layers, its caches, and what
    Qwen3's and Gemma 3's blocks add to LLaMA's."""

    _fields_ = [("qkv", QuantLayer), ("wo", QuantLayer), ("gate_up", QuantLayer), ("down", QuantLayer),
                ("keys_t", ctypes.c_void_p), ("values", ctypes.c_void_p), ("q_norm", ctypes.c_void_p),
                ("k_norm", ctypes.c_void_p), ("norm_eps", ctypes.c_float), ("post_attention_norm", ctypes.c_void_p),
                ("post_ffn_norm", ctypes.c_void_p), ("rope", ctypes.c_void_p), ("window", ctypes.c_int64),
                ("attention_scale", ctypes.c_float)]


@dataclass
class BlockKernels:
    """One transformer block for LlamaLayers: its QuantMatmuls (qkv with attention_norm, wo, gate_up with
    ffn_norm, down gated), its caches keys_t (n_kv_heads, head_dim, max_len) and values (n_kv_heads,
    max_len, head_dim), its RoPE table (max_len, 2, head_dim / 2) cos and sin, and the optional parts:
    Qwen3's/Gemma's q and k norm weights (head_dim,), Gemma's post-attention and post-MLP norm weights
    (dim,), a sliding window (0: none)."""

    qkv: QuantMatmul
    wo: QuantMatmul
    gate_up: QuantMatmul
    down: QuantMatmul
    keys_t: torch.Tensor
    values: torch.Tensor
    rope: torch.Tensor
    qk_norms: tuple[torch.Tensor, torch.Tensor] | None = None
    post_norms: tuple[torch.Tensor, torch.Tensor] | None = None
    window: int = 0


# void (*)(float* data, int64_t n): a tensor-parallel all-reduce, called back from llama_layers.cpp.
ALL_REDUCE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)


class LlamaLayers:
    """x -> x after all of a LLaMA's transformer blocks, for one decode step, in place: one call into
    llama_layers.cpp, which runs each block as five kernel calls (described there). norm_eps: the q/k and
    post-norms' epsilon; attention_scale: q.k's. all_reduce: for a tensor-parallel shard's blocks, the
    sum over ranks (in place, of a (dim,) float32 tensor) of wo's and down's outputs, called back between
    the kernel calls."""

    def __init__(self, blocks: list[BlockKernels], n_heads: int, norm_eps: float, attention_scale: float,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        n_kv_heads, head_dim, max_len = blocks[0].keys_t.shape
        dim = blocks[0].wo.out_features

        def floats(weights: tuple[torch.Tensor, ...] | None, size: int) -> tuple[torch.Tensor, ...] | None:
            if weights is None:
                return None
            weights = tuple(w.detach().float().contiguous() for w in weights)
            if any(w.shape != (size,) for w in weights):
                raise ValueError(f"norm weights must be ({size},)")
            return weights

        # Kept: the structs point into these tensors.
        self.kept = [(floats(b.qk_norms, head_dim), floats(b.post_norms, dim), b.rope.contiguous()) for b in blocks]
        for block, (_, _, rope) in zip(blocks, self.kept):
            if rope.shape != (max_len, 2, head_dim // 2) or rope.dtype != torch.float32:
                raise ValueError(f"a block's RoPE table must be float32 ({max_len}, 2, {head_dim // 2})")
            if block.keys_t.shape != (n_kv_heads, head_dim, max_len):
                raise ValueError("every block's caches must have the same shape")
        self.blocks = blocks
        self.layers = (LlamaLayer * len(blocks))(*(
            LlamaLayer(b.qkv.layer, b.wo.layer, b.gate_up.layer, b.down.layer, b.keys_t.data_ptr(), b.values.data_ptr(),
                       *_pointers(qk_norms, 2), norm_eps, *_pointers(post_norms, 2), rope.data_ptr(), b.window,
                       attention_scale)
            for b, (qk_norms, post_norms, rope) in zip(blocks, self.kept)))
        self.arguments = (self.layers, len(blocks), n_heads, n_kv_heads, head_dim, max_len)
        self.all_reduce = ALL_REDUCE() if all_reduce is None else ALL_REDUCE(_float_callback(all_reduce))
        self.run = library().llama_decode_layers

    def __call__(self, x: torch.Tensor, pos: torch.Tensor) -> None:
        """x: (1, dim) float32, updated in place; pos: (1,) int64, the new token's position."""
        if x.shape != (1, self.blocks[0].wo.out_features) or x.dtype != torch.float32 or not x.is_contiguous():
            raise ValueError(f"LlamaLayers updates a contiguous float32 (1, dim) x, got {tuple(x.shape)} {x.dtype}")
        outside = self.run(*self.arguments, x.data_ptr(), _position(pos), torch.get_num_threads(), self.all_reduce)
        if _callback_errors:
            error = _callback_errors[0]
            _callback_errors.clear()
            raise error
        if outside:
            raise ValueError(f"position {int(pos)} is outside the KV cache's {self.arguments[-1]}")


_callback_errors: list[BaseException] = []  # what a callback raised during the current call into C++


def _float_callback(function: Callable[[torch.Tensor], torch.Tensor]):
    """function(tensor) in place, called with (pointer, n floats) from C++. An exception cannot cross back
    into C++: it is kept, the data left as they are, and raised once the call into C++ returns."""
    def call(pointer: int, n: int) -> None:
        if _callback_errors:
            return  # the step is lost already: finish it quickly
        try:
            function(torch.frombuffer((ctypes.c_float * n).from_address(pointer), dtype=torch.float32))
        except BaseException as e:  # noqa: BLE001 - re-raised by check_callback
            _callback_errors.append(e)
    return call


def _pointers(tensors: tuple[torch.Tensor, ...] | None, count: int) -> tuple[int | None, ...]:
    return (None,) * count if tensors is None else tuple(t.data_ptr() for t in tensors)


def library() -> ctypes.CDLL | None:
    """The compiled kernel library of the selected level, or None where none runs (see unavailable_reason)."""
    chosen, reason = selected()
    return None if chosen is None or reason else _library(chosen)


def unavailable_reason() -> str | None:
    """Why llmgen's kernels are not used on this machine, or None when they are."""
    return selected()[1]


def level() -> str | None:
    """The name of the level in use ("avx512", "avx2", "portable"), or None."""
    chosen, reason = selected()
    return None if chosen is None or reason else chosen.name


def selected() -> tuple[Level | None, str | None]:
    """(the level llmgen's kernels run at, None) or (None, why they do not run): LLMGEN_KERNELS=0|auto|LEVEL
    (default auto: the best level this CPU supports), a C++ compiler, and a build that succeeds."""
    wanted = os.environ.get("LLMGEN_KERNELS", "auto").strip().lower() or "auto"
    if wanted in ("0", "off", "none"):
        return None, f"turned off by LLMGEN_KERNELS={wanted}"
    by_name = {lv.name: lv for lv in LEVELS}
    if wanted not in ("auto", "1", *by_name):
        return None, f"LLMGEN_KERNELS={wanted} is not one of 0, auto, {', '.join(by_name)}"
    if wanted in by_name:
        chosen = by_name[wanted]
        if missing := missing_features(chosen):
            return None, f"LLMGEN_KERNELS={wanted}, but the CPU lacks {', '.join(missing)}"
    else:
        chosen = next(lv for lv in LEVELS if not missing_features(lv))
    return chosen, _build_failure(chosen)


def supported_levels() -> list[str]:
    """Every level this CPU can run (for tests and benchmarks that go through each)."""
    return [lv.name for lv in LEVELS if not missing_features(lv)]


def missing_features(chosen: Level) -> list[str]:
    if chosen.cpu_flags and platform.machine().lower() not in X86:
        return ["x86-64 instructions"]
    return [f for f in chosen.cpu_flags if f not in _cpu_flags()]


@cache
def _build_failure(chosen: Level) -> str | None:
    if _compiler() is None:
        return "no C++ compiler (g++ or clang++; or set CXX)"
    try:
        _library(chosen)
    except (OSError, subprocess.SubprocessError) as e:
        return f"building them failed: {str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}"
    return None


@cache
def _library(chosen: Level) -> ctypes.CDLL:
    return _load(_build(chosen))


def _position(pos: torch.Tensor) -> int:
    """The address of a decode step's (1,) int64 position tensor, which the kernels read (and check)."""
    if pos.dtype != torch.int64 or pos.numel() != 1 or pos.device.type != "cpu":
        raise ValueError("a decode step's position is a (1,) int64 CPU tensor")
    return pos.data_ptr()


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


@cache
def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


@cache
def _build(chosen: Level) -> Path:
    """Compile SOURCES for a level unless this machine already has it, intact; -> the library's path.

    Beside each library is the sha256 it had when built: a library that no longer matches it (truncated by
    a full disk, replaced by another file) is never loaded, since loading a damaged shared object can crash
    the process (SIGBUS); it is built again, with one warning."""
    from llmgen.assets import data_dir, sha256_file, write_atomically

    compiler = _compiler()
    flags = (*FLAGS, *chosen.compiler_flags)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    texts = [path.read_text() for path in (*SOURCES, *HEADERS)]
    key = hashlib.sha256("\n".join((*texts, compiler, version, " ".join(flags),
                                    " ".join(sorted(_cpu_flags())))).encode()).hexdigest()[:16]
    library = data_dir() / "kernels" / f"llmgen_kernels-{chosen.name}-{key}.so"
    recorded = library.with_name(library.name + ".sha256")
    if library.exists() and recorded.exists():  # (without a record: built by an older llmgen, so built again)
        try:
            if recorded.read_text(encoding="ascii").strip() == sha256_file(library):
                return library
        except (OSError, UnicodeDecodeError):
            pass
        warnings.warn(f"llmgen's kernel library {library} is damaged or not llmgen's; building it again",
                      LLMGenWarning, stacklevel=2)
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        result = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"{Path(compiler).name} failed: {(result.stderr.strip() or 'no output').splitlines()[0]}")
        write_atomically(recorded, sha256_file(built).encode())
        os.replace(built, library)  # atomic: another process may be building the same file
    return library


@cache
def _load(path: Path) -> ctypes.CDLL:
    try:
        return _declare(ctypes.CDLL(str(path)))
    except (OSError, AttributeError) as e:  # AttributeError: a symbol these sources define is missing
        reason = first_line(e)[:160]
        warnings.warn(f"cannot load llmgen's kernel library {path.name} ({reason}); using PyTorch's kernels",
                      LLMGenWarning, stacklevel=2)
        raise OSError(reason) from None


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    """The argument and result types of the library's functions (kernels.h)."""
    pointer, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    library.quant_linear.argtypes = [pointer, pointer, size, pointer, flag, flag]
    library.attention_step.argtypes = [pointer, pointer, pointer, pointer, pointer, size, size, size, size, size,
                                       ctypes.c_float, pointer, flag]
    library.llama_decode_layers.argtypes = [ctypes.POINTER(LlamaLayer), size, size, size, size, size,
                                            pointer, pointer, flag, ALL_REDUCE]
    library.pack_q4_rows.argtypes = [pointer, size, size, flag, pointer, pointer, pointer, flag]
    library.pack_q4_rows.restype = None
    library.kernel_level.argtypes = []
    library.kernel_level.restype = ctypes.c_char_p
    library.quant_linear.restype = None
    library.attention_step.restype = library.llama_decode_layers.restype = ctypes.c_int32
    return library
