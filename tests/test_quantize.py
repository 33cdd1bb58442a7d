"""Weight-only int8: close to float32 on real weights, and the same on its decode and prefill paths."""

import pytest
import torch
from torch import nn

from llmgen import assets
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.quantize import Int8Linear
from llmgen.weights.loading import load_model

TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
        "capital of Germany. def add(a, b):\n    return a + b\n")


def test_int8_linear_is_close_and_paths_agree():
    torch.manual_seed(0)
    dense = nn.Linear(96, 40)
    q = Int8Linear(dense.weight, dense.bias)
    x = torch.randn(5, 96)
    with torch.inference_mode():
        expected = dense(x)
        prefill = q(x)  # dequantized dense path
        decode = torch.cat([q(row[None]) for row in x])  # int8 kernel, one row at a time
    assert q.weight.dtype == torch.int8 and q.weight.shape == (40, 96)
    assert (prefill - expected).abs().max() < 0.05
    assert (decode - prefill).abs().max() < 0.05  # bfloat16 activations on the decode path


@pytest.fixture(scope="module")
def smollm2_pair():
    path = assets.locate("smollm2-135m-instruct-q4_1")
    return load_model(path), load_model(path, quantize="int8")


def test_int8_smollm2_agrees_with_float32(smollm2_pair):
    full, quant = smollm2_pair
    ids = torch.tensor([full.tokenizer.encode(TEXT)])
    for loaded in smollm2_pair:
        loaded.model.setup_cache(1, ids.size(1))
    with torch.inference_mode():
        logits_full, logits_q = full.model(ids, 0)[0], quant.model(ids, 0)[0]
    agreement = (logits_full.argmax(-1) == logits_q.argmax(-1)).float().mean().item()
    nll = lambda logits: torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item()
    assert agreement >= 0.9, agreement
    assert abs(nll(logits_q) - nll(logits_full)) < 0.1  # log-perplexity barely moves


def test_int8_smollm2_still_knows_paris(smollm2_pair):
    _, quant = smollm2_pair
    ids = list(generate_ids(quant.model, quant.tokenizer.encode("The capital of France is"),
                            SamplingSettings(max_new_tokens=2, temperature=0)))
    assert quant.tokenizer.decode(ids).startswith(" Paris")
