"""GGUF files written for tests: a tiny LLaMA in any block type (with a byte-level vocabulary if asked), random
blocks of every type, k-quant mixes as llama.cpp's quantizer makes them, and the check that weights kept as
stored decode like their dequantized floats."""

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


def write_tiny_gguf(path, qtype, *, mutate_meta=None, drop_tensor=None, tokenizer=False):
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    dim, ffn, layers, vocab = 64, 128, 2, 300
    writer = gguf.GGUFWriter(str(path), "llama")
    meta = {
        "llama.block_count": layers, "llama.context_length": 128, "llama.embedding_length": dim,
        "llama.feed_forward_length": ffn, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": vocab,
    }
    for key, value in {**meta, **(mutate_meta or {})}.items():
        if value is None:
            continue
        add = writer.add_string if isinstance(value, str) else writer.add_float32 if isinstance(value, float) \
            else writer.add_uint32
        add(key, value)
    if tokenizer:  # a byte-level vocabulary: GPT-2's 256 byte symbols, then 44 two-letter merges
        symbols = [chr(b) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255 else None for b in range(256)]
        extra = iter(range(256, 512))
        symbols = [s if s is not None else chr(next(extra)) for s in symbols]
        tokens = symbols + [a + b for a, b in zip("abcdefghijklmnopqrstuv" * 2, "etaoinshrdlu" * 4)][:vocab - 256]
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
        writer.add_token_types([1] * len(tokens))
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,)}
    for i in range(layers):
        shapes |= {f"blk.{i}.attn_norm.weight": (dim,), f"blk.{i}.ffn_norm.weight": (dim,),
                   f"blk.{i}.attn_q.weight": (dim, dim), f"blk.{i}.attn_k.weight": (32, dim),
                   f"blk.{i}.attn_v.weight": (32, dim), f"blk.{i}.attn_output.weight": (dim, dim),
                   f"blk.{i}.ffn_gate.weight": (ffn, dim), f"blk.{i}.ffn_up.weight": (ffn, dim),
                   f"blk.{i}.ffn_down.weight": (dim, ffn)}
    originals = {}
    for name, shape in shapes.items():
        if name == drop_tensor:
            continue
        value = rng.standard_normal(shape).astype(np.float32)
        originals[name] = value
        if len(shape) == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, value)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, value.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(value, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return originals


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
