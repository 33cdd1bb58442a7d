"""GGUF block types read as integers and scales (weights/gguf_blocks.py): equal to the bit to gguf-py's
reference dequantization, on random blocks of every type (any bytes are a valid block, except fp16 scale
fields that are not finite) and on the real SmolLM2 weights requantized by llama.cpp where available."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from gguf_files import MIXES, assert_kept_matches_dequantized_on_the_kernels, random_blocks, write_kquant_gguf

from llmgen.weights.gguf_blocks import SPLITTERS, split


@pytest.mark.parametrize("kind", sorted(SPLITTERS))
def test_every_block_type_dequantizes_exactly_as_gguf_py(kind):
    blocks = random_blocks(kind, 64)
    ours = split(kind, blocks).dequantize()
    reference = dequantize(blocks.numpy(), GGMLQuantizationType[kind])
    assert ours.shape == reference.shape
    assert torch.equal(ours, torch.from_numpy(reference.astype(np.float32))), kind


@pytest.mark.parametrize("kind", sorted(SPLITTERS))
def test_block_integers_fit_their_kernel(kind):
    """4-bit types give q in 0..15 (uint8) for the int4 kernel; the rest int8, in groups of 16 or 32."""
    groups = split(kind, random_blocks(kind, 8, seed=1))
    if groups.bits == 4:
        assert groups.q.dtype == torch.uint8 and int(groups.q.max()) <= 15 and groups.group == 32
    else:
        assert groups.q.dtype == torch.int8 and groups.group in (16, 32)
    assert groups.scale.shape == (8, groups.q.shape[1] // groups.group)


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_kquant_model_kept_as_stored_matches_its_float32_self(tmp_path, mix):
    """The same file loaded dequantized (--quantize none: float32, the reference) and kept as stored (the
    default): logits close (the kernels round activations to int8), every layer on the kernels, and the
    kernel decode step equal to the forward pass."""
    from llmgen.loading import load_model
    from llmgen.quantization.heads import StoredHead
    from llmgen.quantization.linear import SideBySide

    path = write_kquant_gguf(tmp_path / f"{mix}.gguf", MIXES[mix])
    reference, kept = load_model(path, quantize="none").model, load_model(path).model
    if mix == "q4_k_m":  # q and k 4-bit, v 8-bit: one call, two formats side by side
        assert isinstance(kept.layers[0].attention.wqkv, SideBySide)
    assert isinstance(kept.output, StoredHead)
    ids = torch.randint(0, 8192, (1, 12), generator=torch.Generator().manual_seed(0))
    expected, got = assert_kept_matches_dequantized_on_the_kernels(reference, kept, ids)
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_kquant_model_dequantized_matches_transformers(tmp_path, mix):
    """--quantize none on a GGUF of every block type against transformers' own GGUF loader (which
    dequantizes with gguf-py) on the same file: logits within 1e-3 and the same 24 greedy tokens."""
    from parity import greedy_ours, greedy_reference
    from transformers import AutoModelForCausalLM, GgufConfig

    from llmgen.loading import load_model

    path = write_kquant_gguf(tmp_path / f"{mix}.gguf", MIXES[mix])
    ours = load_model(path, quantize="none").model
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
    ids = torch.randint(0, 8192, (1, 24), generator=torch.Generator().manual_seed(0))
    ours.setup_cache(1, 64)
    with torch.inference_mode():
        torch.testing.assert_close(ours(ids, 0)[0], reference(ids).logits[0], atol=1e-3, rtol=0)
    prompt = ids[0, :8].tolist()
    assert greedy_ours(ours, prompt, 24) == greedy_reference(reference, prompt, 24)
