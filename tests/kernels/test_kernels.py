"""llmgen's own CPU kernels (kernels/): exact against the arithmetic they promise, and a clean fallback."""

import math

import pytest
import torch
import torch.nn.functional as F
from checkpoints import hf_gpt2, hf_llama, save_hf

from llmgen import kernels
from llmgen.decode import choose_decoder
from llmgen.kernels import build
from llmgen.loading import load_weights
from llmgen.models.kv_cache import decode_attention
from llmgen.models.llama import apply_rope, rope_frequencies
from llmgen.quantization.linear import Int4Linear
from llmgen.quantization.model import quantize_model
from llmgen.weights.stored import Int4Groups, SuperBlockScales

needs_kernels = pytest.mark.skipif(kernels.library() is None,
                                   reason=f"llmgen's kernels do not run here: {kernels.unavailable_reason()}")
LEVELS = kernels.supported_levels()  # every level this CPU runs: each is tested, whatever auto would pick


@pytest.fixture(params=LEVELS)
def level(request, monkeypatch):
    """LLMGEN_KERNELS forced to each level the CPU supports; the library built must be that level's."""
    monkeypatch.setenv("LLMGEN_KERNELS", request.param)
    if kernels.library() is None:
        pytest.skip(f"llmgen's kernels do not run here: {kernels.unavailable_reason()}")
    assert kernels.level() == request.param
    assert kernels.library().kernel_level().decode() == request.param
    return request.param


def int8_rounded(x: torch.Tensor) -> torch.Tensor:
    """x as the kernel sees it: each group of 32 rounded to int8 steps of its own amax / 127."""
    groups = x.double().unflatten(-1, (-1, 32))
    amax = groups.abs().amax(dim=-1, keepdim=True).float().double()
    rounded = (groups.float() * torch.where(amax > 0, 127 / amax, 0).float()).round()
    return (rounded.double() * (amax.float() / 127).double()).flatten(-2)


def dequantized_fp16(groups: Int4Groups) -> torch.Tensor:
    """The weights with their scales and minimums in float16, as the kernel stores them."""
    scale = groups.scale.half().double().repeat_interleave(32, dim=1)
    return groups.q.double() * scale + groups.minimum.half().double().repeat_interleave(32, dim=1)


# in_features: whole 512-chunks only; pairs only; an odd group count (padded); chunks and pairs (576: SmolLM2)
@pytest.mark.parametrize("symmetric", [False, True], ids=["q4_1", "q4_0"])
@pytest.mark.parametrize("in_features", [512, 1024, 64, 96, 576, 768])
@pytest.mark.parametrize("out_features", [37, 64])
def test_int4_matmul_computes_exactly_its_rounded_product(level, in_features, out_features, symmetric):
    """Q4_1 form (a minimum per group) and Q4_0 form (minimum -8 * scale, kept implicit), exact against a
    float64 simulation of the int8-rounded product."""
    generator = torch.Generator().manual_seed(in_features + out_features)
    groups = Int4Groups.from_float(torch.randn(out_features, in_features, generator=generator) * 0.05)
    if symmetric:
        groups = Int4Groups(groups.q, groups.scale, -8 * groups.scale)
    x = torch.randn(5, in_features, generator=generator)
    x[1, :32] = 0  # an all-zero group: scale 0
    bias = torch.randn(out_features, generator=generator)
    packed = kernels.pack_int4(groups.q, groups.scale, groups.minimum)
    assert (packed.minimums is None) == symmetric
    matmul = kernels.Int4Matmul(packed, bias)
    expected = int8_rounded(x) @ dequantized_fp16(groups).T + bias.double()
    got = matmul(x)
    assert got.shape == (5, out_features) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    # One row at a time (decode) gives the same rows; accumulate adds into `out` in place.
    torch.testing.assert_close(torch.cat([matmul(row[None]) for row in x]), got, atol=0, rtol=0)
    out = torch.ones(5, out_features)
    assert matmul(x, out=out, accumulate=True) is out
    torch.testing.assert_close(out, got + 1, atol=1e-5, rtol=0)


# 256: one super-block (pairs only); 512: one whole chunk; 768: a chunk and a pair; 2048: 4 chunks
@pytest.mark.parametrize("in_features", [256, 512, 768, 2048])
def test_int4_matmul_with_two_level_scales_is_exact(level, in_features):
    """Q4_K's scales as stored (6-bit scale and minimum per group of 32, fp16 factors per 256) give exactly
    the product with scale = d * sc and minimum = -dmin * m, in float64, of the int8-rounded x."""
    out_features, generator = 45, torch.Generator().manual_seed(in_features)
    groups, supers = in_features // 32, in_features // 256
    sc, m = (torch.randint(0, 64, (out_features, groups), dtype=torch.uint8, generator=generator) for _ in range(2))
    d, dmin = ((torch.rand(out_features, supers, generator=generator) * 0.01).half() for _ in range(2))
    q = torch.randint(0, 16, (out_features, in_features), dtype=torch.uint8, generator=generator)
    scale = d.float().repeat_interleave(8, dim=1) * sc
    minimum = -(dmin.float().repeat_interleave(8, dim=1) * m)
    packed = kernels.pack_int4(q, scale, minimum, SuperBlockScales(sc, m, d, dmin))
    assert packed.super_scales is not None and packed.scales.dtype == torch.uint8
    assert packed.scales.nbytes + packed.minimums.nbytes + 2 * packed.super_scales.nbytes == in_features * out_features * 5 // 64
    x = torch.randn(3, in_features, generator=generator)
    expected = int8_rounded(x) @ (q.double() * scale.double().repeat_interleave(32, dim=1)
                                  + minimum.double().repeat_interleave(32, dim=1)).T
    got = kernels.Int4Matmul(packed)(x)
    torch.testing.assert_close(got.double(), expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    one_level = kernels.Int4Matmul(kernels.pack_int4(q, scale, minimum))(x)  # fp16 products: close, not equal
    torch.testing.assert_close(one_level, got, atol=1e-2 * got.abs().max().item(), rtol=0)


def test_int4_matmul_folds_in_rms_norm_and_swiglu(level):
    generator = torch.Generator().manual_seed(0)
    groups = Int4Groups.from_float(torch.randn(48, 576, generator=generator) * 0.05)
    weights = kernels.pack_int4(groups.q, groups.scale, groups.minimum)
    plain = kernels.Int4Matmul(weights)
    x = torch.randn(3, 576, generator=generator) * 4
    norm_weight = torch.rand(576, generator=generator) + 0.5
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_weight
    torch.testing.assert_close(kernels.Int4Matmul(weights, norm_weight=norm_weight, norm_eps=1e-5)(x), plain(normed),
                               atol=2e-3, rtol=0)  # the same product, but for a rare rounding step
    gate_up = torch.randn(3, 2 * 576, generator=generator) * 3
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(kernels.Int4Matmul(weights, gated=True)(gate_up), plain(F.silu(gate) * up),
                               atol=2e-3, rtol=0)
    geglu = kernels.Int4Matmul(weights, gated=True, activation="gelu_tanh")(gate_up)  # Gemma's
    torch.testing.assert_close(geglu, plain(F.gelu(gate, approximate="tanh") * up), atol=2e-3, rtol=0)


@pytest.mark.parametrize("rope, n_heads, n_kv_heads, window", [(True, 9, 3, 0), (True, 4, 4, 0), (False, 12, 12, 0),
                                                                (True, 4, 2, 8), (True, 4, 2, 30)])
def test_attention_step_matches_pytorch(level, rope, n_heads, n_kv_heads, window):
    """Decode attention on the kernels: RoPE, the caches written, GQA, and Gemma's local window (the last
    `window` positions; 30 > pos + 1 covers them all)."""
    head_dim, max_len, pos = 64, 40, 29
    generator = torch.Generator().manual_seed(n_heads)
    keys_t = torch.randn(n_kv_heads, head_dim, max_len, generator=generator)
    values = torch.randn(n_kv_heads, max_len, head_dim, generator=generator)
    heads = torch.randn(1, (n_heads + 2 * n_kv_heads) * head_dim, generator=generator) * 3
    rotations = torch.polar(torch.ones(max_len, head_dim // 2),
                            torch.outer(torch.arange(max_len).float(), rope_frequencies(head_dim, 500000.0, None)))
    table = torch.stack((rotations.real, rotations.imag), dim=1) if rope else None  # (max_len, 2, head_dim / 2)

    q, k, v = heads.view(-1, head_dim).split((n_heads, n_kv_heads, n_kv_heads))
    if rope:
        q, k = (apply_rope(t[None, None], rotations[pos:pos + 1])[0, 0] for t in (q, k))
    expected_keys_t, expected_values = keys_t.clone(), values.clone()
    expected_keys_t[:, :, pos], expected_values[:, pos] = k, v
    mask = torch.full((max_len,), -math.inf)
    mask[max(0, pos + 1 - window) if window else 0:pos + 1] = 0
    scale = 0.1 if window else head_dim ** -0.5
    expected = decode_attention(q.reshape(n_kv_heads, n_heads // n_kv_heads, head_dim), expected_keys_t,
                                expected_values, mask, scale).reshape(1, -1)

    got = kernels.AttentionStep(keys_t, values, n_heads, table, window, scale if window else None)(
        heads, torch.tensor([pos]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keys_t, expected_keys_t, atol=1e-6, rtol=0)  # the new k and v written in place
    torch.testing.assert_close(values, expected_values, atol=0, rtol=0)


@pytest.mark.parametrize("make", [hf_llama, hf_gpt2])
def test_pytorch_int4_kernel_is_the_fallback(tmp_path, monkeypatch, make):
    """Without llmgen's kernels (no AVX-512 VNNI, no compiler, LLMGEN_KERNELS=0) int4 layers use
    PyTorch's kernel, and both give about the same logits."""
    directory = save_hf(make(), tmp_path)
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(1))
    logits = {}
    for own in (True, False):
        model, _ = load_weights(directory)
        quantize_model(model, "int4", own_kernels=own)
        layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
        assert layers and all(m.own_kernel == (own and kernels.library() is not None) for m in layers)
        model.setup_cache(1, 10)
        with torch.inference_mode():
            logits[own] = model(ids, 0)
    # int8 activations (ours) against bfloat16 ones (PyTorch's): the same weights, a little rounding apart.
    assert (logits[True] - logits[False]).abs().max() < 0.05 * logits[False].abs().max()


def test_a_failed_build_is_a_reason_not_an_error(tmp_path, monkeypatch):
    compiler = tmp_path / "broken-c++"  # knows its version, fails every build
    compiler.write_text('#!/bin/sh\n[ "$1" = --version ] && echo broken 1.0 && exit 0\n'
                        'echo "broken-c++: error: no" >&2\nexit 1\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("LLMGEN_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("LLMGEN_KERNELS", "portable")  # every CPU has it
    build.forget()
    try:
        assert kernels.unavailable_reason() == "building them failed: broken-c++ failed: broken-c++: error: no"
        assert kernels.library() is None
        assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-written left behind
    finally:
        monkeypatch.undo()
        build.forget()


def test_llmgen_kernels_0_turns_them_off(monkeypatch):
    monkeypatch.setenv("LLMGEN_KERNELS", "0")
    assert kernels.unavailable_reason() == "turned off by LLMGEN_KERNELS=0"
    assert not Int4Linear(Int4Groups.from_float(torch.randn(16, 64))).own_kernel


def test_levels_the_cpu_lacks_or_that_do_not_exist_are_reasons(monkeypatch):
    monkeypatch.setenv("LLMGEN_KERNELS", "avx9000")
    assert kernels.unavailable_reason() == "LLMGEN_KERNELS=avx9000 is not one of 0, auto, avx512, avx2, portable"
    assert kernels.library() is None
    for level in kernels.LEVELS:
        monkeypatch.setenv("LLMGEN_KERNELS", level.name)
        if level.name in LEVELS:
            assert kernels.level() == level.name
        else:
            assert kernels.unavailable_reason().startswith(f"LLMGEN_KERNELS={level.name}, but the CPU lacks")
    monkeypatch.setenv("LLMGEN_KERNELS", "auto")
    assert kernels.level() == LEVELS[0] and "portable" in LEVELS


@needs_kernels
def test_kernels_refuse_what_would_take_them_out_of_bounds(tmp_path):
    groups = Int4Groups.from_float(torch.randn(16, 64))
    matmul = kernels.Int4Matmul(kernels.pack_int4(groups.q, groups.scale, groups.minimum))
    with pytest.raises(ValueError, match="takes \\(rows, 64\\) inputs"):
        matmul(torch.randn(1, 32))
    with pytest.raises(ValueError, match="output"):
        matmul(torch.randn(1, 64), out=torch.empty(1, 8))
    attention = kernels.AttentionStep(torch.zeros(2, 64, 8), torch.zeros(2, 8, 64), 2, None)
    with pytest.raises(ValueError, match="position 8 is outside the KV cache's 8"):
        attention(torch.randn(1, 6 * 64), torch.tensor([8]))

    model, _ = load_weights(save_hf(hf_llama(), tmp_path))
    quantize_model(model, "int4")
    model.setup_cache(1, 4)
    decoder = choose_decoder(model)
    assert decoder.use_kernels
    with torch.inference_mode(), pytest.raises(ValueError, match="position 4 is outside"):
        decoder(1, 4)
    with torch.inference_mode(), pytest.raises(ValueError, match="slot"):  # one slot: 0 only
        decoder.rows([1, 2], [0, 0], [0, 1], [1])


def int8_rounded_in(x: torch.Tensor, group: int) -> torch.Tensor:
    """x as the int8 kernel sees it: padded to whole 64s, each group rounded to int8 steps of amax / 127."""
    x = F.pad(x, (0, -x.shape[-1] % 64))
    groups = x.double().unflatten(-1, (-1, group))
    amax = groups.abs().amax(dim=-1, keepdim=True).float().double()
    rounded = (groups.float() * torch.where(amax > 0, 127 / amax, 0).float()).round()
    return (rounded.double() * (amax.float() / 127).double()).flatten(-2)


@pytest.mark.parametrize("minimums", [False, True], ids=["no_minimum", "minimum"])
@pytest.mark.parametrize("group", [16, 32])
@pytest.mark.parametrize("in_features", [64, 96, 576, 1024])
def test_int8_matmul_computes_exactly_its_rounded_product(level, in_features, group, minimums):
    """The int8 group kernel (GGUF's 5-8-bit and 2-3-bit k-quant types as stored), at every level, exact
    against a float64 simulation: int8 x, fp16 scales and minimums, any int8 q (-128 included)."""
    generator = torch.Generator().manual_seed(in_features + group)
    out_features = 37
    q = torch.randint(-128, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
    scale = torch.rand(out_features, in_features // group, generator=generator) * 0.01
    minimum = torch.randn(out_features, in_features // group, generator=generator) * 0.01 if minimums else None
    x = torch.randn(3, in_features, generator=generator)
    x[1, :group] = 0  # an all-zero group: scale 0
    bias = torch.randn(out_features, generator=generator)
    got = kernels.QuantMatmul([(kernels.pack_int8(q, scale, minimum, group), bias)])(x)
    weight = q.double() * scale.half().double().repeat_interleave(group, dim=1)
    if minimums:
        weight += minimum.half().double().repeat_interleave(group, dim=1)
    expected = int8_rounded_in(x, group) @ F.pad(weight, (0, -in_features % 64)).T + bias.double()
    torch.testing.assert_close(got.double(), expected, atol=2e-5 * expected.abs().max().item(), rtol=0)


@pytest.mark.parametrize("in_features", [7, 64, 100, 4096])
def test_bf16_matmul_is_the_float_product_of_the_stored_weights(level, in_features):
    """bfloat16 weights used in place (a checkpoint's own rows, any width: the tail is scalar), x in
    float32 unrounded: the float64 product of the same bf16 values, for several rows of x at once and one,
    with a bias, accumulating into an output, and fused with an RMSNorm in front."""
    generator = torch.Generator().manual_seed(in_features)
    weight = (torch.randn(45, in_features, generator=generator) * 0.05).bfloat16()
    x, bias = torch.randn(3, in_features, generator=generator), torch.randn(45, generator=generator)
    matmul = kernels.QuantMatmul([(kernels.PackedBf16(weight), bias)])
    expected = x.double() @ weight.double().T + bias.double()
    torch.testing.assert_close(matmul(x).double(), expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    torch.testing.assert_close(matmul(x[1:2]).double(), expected[1:2], atol=1e-5 * expected.abs().max().item(), rtol=0)
    out = torch.ones(3, 45)
    torch.testing.assert_close(matmul(x, out, accumulate=True).double(), expected + 1, atol=1e-4, rtol=0)
    norm_weight = torch.rand(in_features, generator=generator) + 0.5
    normed = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * norm_weight.double()
    fused = kernels.QuantMatmul([(kernels.PackedBf16(weight), None)], norm_weight=norm_weight, norm_eps=1e-5)
    torch.testing.assert_close(fused(x).double(), normed @ weight.double().T, atol=1e-4, rtol=1e-4)


def test_bf16_weights_must_be_a_contiguous_bf16_matrix():
    with pytest.raises(ValueError, match="contiguous"):
        kernels.PackedBf16(torch.zeros(4, 8, dtype=torch.bfloat16).T)
    with pytest.raises(ValueError, match="bfloat16"):
        kernels.PackedBf16(torch.zeros(4, 8))


@pytest.mark.parametrize("in_features", [256, 512, 2048])
def test_q6_k_blocks_as_stored_compute_exactly_their_rounded_product(level, in_features):
    """Q6_K's 210-byte blocks (random bytes: every q in 0..63, every int8 scale) rearranged for the kernel
    without losing a bit (unpacked again, they are the file's), and the kernel exact against gguf-py's
    dequantization times the int8-rounded x."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from gguf_files import random_blocks

    out_features = 37
    blocks = random_blocks("Q6_K", out_features * in_features // 256, seed=in_features)
    packed = kernels.pack_q6_k(blocks.reshape(out_features, -1), in_features)
    assert packed.packed.shape == (out_features, in_features // 256 * 210)
    assert torch.equal(kernels.unpack_q6_k(packed), blocks.reshape(out_features, -1))
    x = torch.randn(3, in_features, generator=torch.Generator().manual_seed(in_features))
    x[1, :16] = 0  # an all-zero group: scale 0
    bias = torch.randn(out_features)
    got = kernels.QuantMatmul([(packed, bias)])(x)
    weight = torch.from_numpy(dequantize(blocks.numpy(), GGMLQuantizationType.Q6_K)).double().reshape(out_features, -1)
    expected = int8_rounded_in(x, 16) @ weight.T + bias.double()
    torch.testing.assert_close(got.double(), expected, atol=2e-5 * expected.abs().max().item(), rtol=0)


def test_parts_in_two_formats_run_side_by_side_in_one_call(level):
    """A fused layer of a 4-bit and an 8-bit part (a Q4_K_M block's q/k and v): one call, with the RMSNorm
    or SwiGLU first, equals each part alone on the prepared input, concatenated."""
    generator = torch.Generator().manual_seed(5)
    four = Int4Groups.from_float(torch.randn(40, 256, generator=generator) * 0.05)
    packed4 = kernels.pack_int4(four.q, four.scale, four.minimum)
    packed8 = kernels.pack_int8(torch.randint(-32, 32, (24, 256), dtype=torch.int8, generator=generator),
                                torch.rand(24, 16, generator=generator) * 0.01, None, 16)
    x = torch.randn(2, 256, generator=generator)
    norm_weight = torch.rand(256, generator=generator) + 0.5
    both = kernels.QuantMatmul([(packed4, None), (packed8, None)], norm_weight=norm_weight, norm_eps=1e-5)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_weight
    expected = torch.cat((kernels.Int4Matmul(packed4)(normed), kernels.QuantMatmul([(packed8, None)])(normed)), dim=1)
    torch.testing.assert_close(both(x), expected, atol=1e-4, rtol=1e-4)
    gate_up = torch.randn(2, 512, generator=generator)
    gated = kernels.QuantMatmul([(packed4, None), (packed8, None)], gated=True)
    silu = F.silu(gate_up[:, :256]) * gate_up[:, 256:]
    expected = torch.cat((kernels.Int4Matmul(packed4)(silu), kernels.QuantMatmul([(packed8, None)])(silu)), dim=1)
    torch.testing.assert_close(gated(gate_up), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
@pytest.mark.parametrize("in_features", [32, 96, 512, 544, 576])
def test_q4_blocks_repack_into_the_same_layout_as_their_levels(kind, in_features):
    """kernels.pack_q4_blocks (repack.cpp: straight from the file's bytes) gives byte for byte what
    pack_int4 makes of the same blocks' levels, scales and minimums: whole chunks of 16 groups, pairs,
    and an odd group count's empty group."""
    import gguf
    import numpy as np

    from llmgen.weights.stored import matrix_rows

    if kernels.library() is None:
        pytest.skip(f"llmgen's kernels do not run here: {kernels.unavailable_reason()}")
    weights = np.random.default_rng(in_features).standard_normal((7, in_features), dtype=np.float32)
    blocks = torch.from_numpy(gguf.quants.quantize(weights, getattr(gguf.GGMLQuantizationType, kind)))
    levels = matrix_rows(kind, blocks, in_features)
    expected = kernels.pack_int4(levels.q, levels.scale, levels.minimum)
    got = kernels.pack_q4_blocks(blocks, in_features, kind)
    assert torch.equal(got.packed, expected.packed) and torch.equal(got.scales, expected.scales)
    assert (got.minimums is None) == (kind == "Q4_0") == (expected.minimums is None)
    if kind == "Q4_1":
        assert torch.equal(got.minimums, expected.minimums)


@pytest.fixture
def gemv_too():
    """The library's GEMM path (rows > 1) and a switch to its GEMV path, put back after the test."""
    library = kernels.library()
    yield library
    library.set_gemm(1)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K"])
@pytest.mark.parametrize("in_features", [64, 96, 576, 1024, 2560])
def test_int4_gemm_equals_gemv_row_by_row_bit_for_bit(level, gemv_too, kind, in_features):
    """A matmul over M rows on the GEMM path (each weight chunk unpacked once for a tile of 4 rows) gives
    exactly, bit for bit, what the GEMV path gives for each row alone: the same integer dot products and the
    same float sums in the same order. Every tile remainder (1-3 rows), fused parts, a bias and accumulate."""
    from gguf_files import random_blocks

    from llmgen.weights.stored import matrix_rows

    library = gemv_too
    assert kernels.build.matmul_path(1) == "gemv"
    assert kernels.build.matmul_path(8) == ("gemm" if library.has_gemm() else "gemv")
    assert bool(library.has_gemm()) == (level != "portable")
    block = 256 if kind == "Q4_K" else 32
    if in_features % block:
        pytest.skip(f"{kind} rows are whole blocks of {block}")
    parts = []
    for out_features, seed in ((48, 1), (21, 2)):
        blocks = random_blocks(kind, out_features * in_features // block, seed=seed + in_features)
        groups = matrix_rows(kind, blocks.reshape(out_features, -1), in_features)
        parts.append((kernels.pack_int4(groups.q, groups.scale, groups.minimum, groups.levels),
                      torch.randn(out_features, generator=torch.Generator().manual_seed(seed))))
    matmul = kernels.QuantMatmul(parts)
    generator = torch.Generator().manual_seed(in_features)
    for rows in (2, 3, 4, 5, 6, 7, 9, 33):
        x = torch.randn(rows, in_features, generator=generator)
        library.set_gemm(1)
        gemm = matmul(x)
        into = torch.randn(rows, matmul.out_features, generator=generator)
        accumulated = matmul(x, out=into.clone(), accumulate=True)
        library.set_gemm(0)
        assert torch.equal(gemm, matmul(x)), rows
        assert torch.equal(gemm, torch.cat([matmul(row[None]) for row in x])), rows
        assert torch.equal(accumulated, matmul(x, out=into.clone(), accumulate=True)), rows


def test_llmgen_gemm_0_forces_the_gemv_path(tmp_path):
    """LLMGEN_GEMM=0 keeps every 4-bit matmul on the one-row path (and says so), in a process of its own."""
    import subprocess
    import sys

    probe = ("from llmgen import kernels\nfrom llmgen.kernels import build\n"
             "print(build.matmul_path(16), kernels.library() is None or kernels.library().has_gemm())")
    forced = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**__import__("os").environ, "LLMGEN_GEMM": "0"})
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split()[0] == "gemv"
