"""Weight-only int8 and int4: exact where they should be, close to float32 on real weights."""

import pytest
import torch
from checkpoints import hf_gpt2, hf_llama, save_hf
from torch import nn

from llmgen import assets
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.loading import load_model, load_weights
from llmgen.quantization.heads import Int4Head, StoredHead, top_indices
from llmgen.quantization.linear import Int4Linear, Int8Linear
from llmgen.quantization.model import quantize_model
from llmgen.weights.stored import BlockEmbedding, Int4Groups

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


def test_int4_groups_round_to_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(40, 96)
    groups = Int4Groups.from_float(weight)
    assert groups.q.dtype == torch.uint8 and int(groups.q.max()) <= 15 and groups.scale.shape == (40, 3)
    step = groups.scale.repeat_interleave(32, dim=1)
    assert ((groups.dequantize() - weight).abs() <= step / 2 + 1e-6).all()
    # Weights already on a group's 16-level grid come back exactly.
    again = Int4Groups.from_float(groups.dequantize())
    assert torch.equal(again.q, groups.q)
    torch.testing.assert_close(again.dequantize(), groups.dequantize(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("out_features", [40, 48])  # 40 is padded to the kernel's 16-row multiple
def test_int4_linear_matches_its_dequantized_weights(out_features):
    torch.manual_seed(0)
    groups = Int4Groups.from_float(torch.randn(out_features, 96) * 0.1)
    bias = torch.randn(out_features)
    layer = Int4Linear(groups, bias)
    x = torch.randn(5, 96)
    with torch.inference_mode():
        expected = x.bfloat16().float() @ groups.dequantize().T + bias
        batch = layer(x)
        rows = torch.cat([layer(row[None]) for row in x])
    assert batch.shape == (5, out_features)
    torch.testing.assert_close(batch.float(), expected, atol=0.02, rtol=0.01)  # bfloat16 output
    torch.testing.assert_close(rows.float(), batch.float(), atol=0.02, rtol=0.01)


def test_int4_head_is_exact_to_8_bits_on_its_top_rows():
    torch.manual_seed(0)
    weight = torch.randn(500, 64)
    head, fine = Int4Head(weight, top=16), Int8Linear(weight)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        got, coarse = head(x), head.coarse(x).float()
        exact = x @ (fine.weight.float() * fine.scales.float()[:, None]).T
    top = coarse.topk(16, dim=-1).indices
    torch.testing.assert_close(got.gather(-1, top), exact.gather(-1, top), atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(-1), exact.argmax(-1))
    rest = torch.ones_like(got, dtype=torch.bool).scatter_(-1, top, False)
    assert torch.equal(got[rest], coarse[rest])  # everything else keeps its 4-bit logit


def test_top_indices_finds_the_same_set_as_topk():
    torch.manual_seed(0)
    spread = torch.randn(2, 1, 49152)
    clustered = torch.randn(3, 64 * 100)
    clustered[0, 640:704] += 10  # the 64 largest all in one block
    clustered[1, ::64] += 10  # one in each of the first 64 blocks... and 36 more
    for scores, k in [(spread, 64), (clustered, 64), (clustered, 7), (torch.randn(4, 500), 16)]:
        got = top_indices(scores, k)
        assert got.shape == (*scores.shape[:-1], k)
        assert torch.equal(got.sort(dim=-1).values, scores.topk(k, dim=-1).indices.sort(dim=-1).values)


def on_int4_grid(model: nn.Module) -> nn.Module:
    """Replace every quantizable weight by its int4 rounding, so that quantizing it again is exact."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module is not getattr(model, "wpe", None):
                module.weight.copy_(Int4Groups.from_float(module.weight).dequantize())
    return model


@pytest.mark.parametrize("make, fused", [(hf_llama, {"wqkv", "w13"}), (hf_gpt2, set())])
def test_int4_model_matches_float_on_the_same_grid(tmp_path, make, fused):
    directory = save_hf(make(), tmp_path)
    model, _ = load_weights(directory)
    on_int4_grid(model)
    quantized, _ = load_weights(directory)
    quantized.load_state_dict(model.state_dict())
    quantize_model(quantized, "int4")
    names = {name.rsplit(".", 1)[-1] for name, m in quantized.named_modules() if isinstance(m, Int4Linear)}
    assert fused <= names and not any(isinstance(m, nn.Linear) for m in quantized.modules())
    ids = torch.randint(0, 1000, (1, 12))
    for m in (model, quantized):
        m.setup_cache(1, 12)
    with torch.inference_mode():
        expected, got = model(ids, 0), quantized(ids, 0)
    # The only difference left is bfloat16 activations into the kernel and out of it.
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.fixture(scope="module")
def smollm2_models():
    path = assets.locate("smollm2-135m-instruct-q4_1")
    return {kind: load_model(path, quantize=kind) for kind in ("none", "int8", "auto")}


@pytest.mark.parametrize("kind, min_agreement", [("int8", 0.9), ("auto", 0.9)])
def test_quantized_smollm2_agrees_with_float32(smollm2_models, kind, min_agreement):
    full, quant = smollm2_models["none"], smollm2_models[kind]
    ids = torch.tensor([full.tokenizer.encode(TEXT)])
    for loaded in (full, quant):
        loaded.model.setup_cache(1, ids.size(1))
    with torch.inference_mode():
        logits_full, logits_q = full.model(ids, 0)[0], quant.model(ids, 0)[0]
    agreement = (logits_full.argmax(-1) == logits_q.argmax(-1)).float().mean().item()
    def nll(logits):
        return torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item()
    assert agreement >= min_agreement, agreement
    assert abs(nll(logits_q) - nll(logits_full)) < 0.1  # log-perplexity barely moves


def test_auto_keeps_the_gguf_weights_as_stored(smollm2_models):
    """Q4_1 matrices fused on the int4 kernel; the tied Q8_0 embedding looked up from its blocks, and as
    the head a StoredHead (a 4-bit first pass, the top candidates from the stored 8-bit rows)."""
    model = smollm2_models["auto"].model
    assert isinstance(model.layers[0].attention.wqkv, Int4Linear)
    assert isinstance(model.layers[0].feed_forward.w13, Int4Linear)
    assert model.layers[0].attention.wq is None and isinstance(model.output, StoredHead)
    assert isinstance(model.tok_embeddings, BlockEmbedding) and model.tok_embeddings.kind == "Q8_0"


@pytest.mark.parametrize("kind", ["int8", "auto"])
def test_quantized_smollm2_still_knows_paris(smollm2_models, kind):
    quant = smollm2_models[kind]
    ids = list(generate_ids(quant.model, quant.tokenizer.encode("The capital of France is"),
                            SamplingSettings(max_new_tokens=2, temperature=0)))
    assert quant.tokenizer.decode(ids).startswith(" Paris")
