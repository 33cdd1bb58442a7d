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


def write_kquant_gguf(path, types: dict[str, str], dim: int = 256, ffn: int = 512, vocab: int = 8192):
    """A tiny LLaMA GGUF whose matrices are random blocks of the given types (GGUF name suffix -> type),
    as a "Q4_K_M" file mixes them; small scales keep activations in range."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in {"llama.block_count": 2, "llama.context_length": 64, "llama.embedding_length": dim,
                       "llama.feed_forward_length": ffn, "llama.attention.head_count": 4,
                       "llama.attention.head_count_kv": 2, "llama.vocab_size": vocab}.items():
        writer.add_uint32(key, value)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    # A byte-level vocabulary: GPT-2's 256 byte symbols, then made-up tokens.
    symbols = [chr(b) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255 else None for b in range(256)]
    extra = iter(range(256, 512))
    symbols = [s if s is not None else chr(next(extra)) for s in symbols]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(symbols + [f"t{i}" for i in range(vocab - 256)])
    writer.add_token_types([1] * vocab)
    kv = dim // 4 * 2
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,), "output.weight": (vocab, dim)}
    for i in range(2):
        shapes |= {f"blk.{i}.attn_norm.weight": (dim,), f"blk.{i}.ffn_norm.weight": (dim,),
                   f"blk.{i}.attn_q.weight": (dim, dim), f"blk.{i}.attn_k.weight": (kv, dim),
                   f"blk.{i}.attn_v.weight": (kv, dim), f"blk.{i}.attn_output.weight": (dim, dim),
                   f"blk.{i}.ffn_gate.weight": (ffn, dim), f"blk.{i}.ffn_up.weight": (ffn, dim),
                   f"blk.{i}.ffn_down.weight": (dim, ffn)}
    for seed, (name, shape) in enumerate(shapes.items()):
        if len(shape) == 1:
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
            continue
        kind = next(t for suffix, t in types.items() if name.endswith(suffix))
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
        blocks = random_blocks(kind, shape[0] * shape[1] // block, seed).numpy()
        for offset in F16_FIELDS[kind]:  # scales small enough that a weight stays around 0.02
            n = len(blocks)
            scale = (np.random.default_rng(seed).random(n) * 0.002 / (1 if block == 32 else 8)).astype(np.float16)
            blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(n, 2)
        writer.add_tensor(name, blocks.reshape(shape[0], -1), raw_dtype=GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# A Q4_K_M-like mix (q/k/gate/up Q4_K, v and down Q6_K, embedding Q4_K, head Q6_K), and one with every
# other type somewhere.
MIXES = {
    "q4_k_m": {"attn_v.weight": "Q6_K", "ffn_down.weight": "Q6_K", "output.weight": "Q6_K", "weight": "Q4_K"},
    "others": {"attn_q.weight": "Q5_K", "attn_k.weight": "Q5_0", "attn_v.weight": "Q8_0", "attn_output.weight": "Q3_K",
               "ffn_gate.weight": "Q2_K", "ffn_up.weight": "Q5_1", "ffn_down.weight": "IQ4_NL",
               "token_embd.weight": "Q6_K", "output.weight": "Q8_0", "weight": "Q4_0"},
}


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_kquant_model_kept_as_stored_matches_its_float32_self(tmp_path, mix):
    """The same file loaded dequantized (--quantize none: float32, the reference) and kept as stored (the
    default): logits close (the kernels round activations to int8), every layer on the kernels, and the
    kernel decode step equal to the forward pass."""
    from llmgen.quantize import SideBySide, StoredHead
    from llmgen.weights.loading import load_model

    path = write_kquant_gguf(tmp_path / f"{mix}.gguf", MIXES[mix])
    reference, kept = load_model(path, quantize="none").model, load_model(path).model
    if mix == "q4_k_m":  # q and k 4-bit, v 8-bit: one call, two formats side by side
        assert isinstance(kept.layers[0].attention.wqkv, SideBySide)
    assert isinstance(kept.output, StoredHead)
    ids = torch.randint(0, 8192, (1, 12), generator=torch.Generator().manual_seed(0))
    expected, got = assert_kept_matches_dequantized_on_the_kernels(reference, kept, ids)
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def assert_kept_matches_dequantized_on_the_kernels(dequantized, kept, ids):
    """The same file dequantized and kept as stored: top-8 logits within 3% (a stored head's candidates
    come from its stored rows, the rest from its 4-bit first pass), kept on llmgen's kernel decoder, and
    its decode step equal to its forward pass. Returns both forward passes' logits (T, vocab)."""
    from llmgen.decode import choose_decoder

    for model in (dequantized, kept):
        model.setup_cache(1, 16)
    with torch.inference_mode():
        expected, got = dequantized(ids, 0)[0], kept(ids, 0)[0]
        top = expected.topk(8, dim=-1).indices
        assert (got.gather(-1, top) - expected.gather(-1, top)).abs().max() < 0.03 * expected.abs().max()
        decoder = choose_decoder(kept)
        assert decoder.use_kernels, decoder
        kept.setup_cache(1, 16)
        kept(ids[:, :-1], 0)
        step = decoder(int(ids[0, -1]), ids.size(1) - 1)
    torch.testing.assert_close(step, got[-1], atol=1e-3, rtol=1e-3)
    return expected, got


@pytest.mark.slow
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_kquant_model_dequantized_matches_transformers(tmp_path, mix):
    """--quantize none on a GGUF of every block type against transformers' own GGUF loader (which
    dequantizes with gguf-py) on the same file: logits within 1e-3 and the same 24 greedy tokens."""
    from test_model_parity import greedy_ours, greedy_reference
    from transformers import AutoModelForCausalLM, GgufConfig

    from llmgen.weights.loading import load_model

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
