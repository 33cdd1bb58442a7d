"""A Llama-3.2-1B-shaped Q4_0 GGUF, made the way people get one, in llmgen and llama.cpp side by side.

    python benchmarks/llama1b_engines.py [--rounds 3] [--new-tokens 32]

Writes once, into benchmarks/out/: random weights of Llama-3.2-1B's shape (dim 2048, 16 layers, 32 heads,
8 KV heads, FFN 8192, vocabulary 128256, tied embeddings) as an F16 GGUF the way llama.cpp's converter
writes a Llama 3.2 (its llama3 RoPE scaling as a `rope_freqs.weight` tensor, the real LLaMA-3 tokenizer),
then quantizes it to Q4_0 with llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize:
Q4_0 matrices, and Q6_K for the tied embedding, as llama.cpp chooses). Both engines then run that one
file: greedy, 2 threads, fresh processes, interleaved, medians. Needs llama-cpp-python (`make bench-peers`).
"""

from __future__ import annotations

import math
from pathlib import Path

from common import engines_main, gguf_engine_worker

OUT = Path(__file__).parent / "out"
F16_FILE, Q4_0_FILE = OUT / "llama-3.2-1b-shaped-f16.gguf", OUT / "llama-3.2-1b-shaped-q4_0.gguf"
DIM, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 2048, 16, 32, 8, 8192, 128256
ROPE_THETA = 500000.0
ROPE_SCALING = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}  # Llama 3.2's config.json
PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. Write a short story about a cat."
KERNELS = {"llmgen": "auto", "llmgen avx2": "avx2", "llmgen pytorch-int4": "0"}  # LLMGEN_KERNELS
ENGINES = ["llmgen", "llmgen avx2", "llmgen pytorch-int4", "llama.cpp"]


def rope_factors() -> list[float]:
    """rope_freqs.weight as llama.cpp's convert_hf_to_gguf.py computes it for rope_type "llama3"."""
    head_dim = DIM // HEADS
    factor, low, high = ROPE_SCALING["factor"], ROPE_SCALING["low_freq_factor"], ROPE_SCALING["high_freq_factor"]
    old_context = ROPE_SCALING["original_max_position_embeddings"]
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * ROPE_THETA ** (i / head_dim)
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def write_files() -> Path:
    if Q4_0_FILE.is_file():
        return Q4_0_FILE
    import gguf
    import llama_cpp
    import torch
    from gguf_export import add_bpe_tokenizer, write

    from llmgen.tokenization.tiktoken_files import get_tokenizer

    OUT.mkdir(exist_ok=True)
    if not F16_FILE.is_file():
        writer = gguf.GGUFWriter(None, "llama")
        writer.add_context_length(131072)
        writer.add_embedding_length(DIM)
        writer.add_feed_forward_length(FFN)
        writer.add_block_count(LAYERS)
        writer.add_head_count(HEADS)
        writer.add_head_count_kv(KV_HEADS)
        writer.add_rope_freq_base(ROPE_THETA)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(VOCAB)
        writer.add_rope_dimension_count(DIM // HEADS)
        tokenizer = get_tokenizer("llama3")
        add_bpe_tokenizer(writer, tokenizer.encoding._mergeable_ranks, tokenizer.encoding._special_tokens,
                          "llama-bpe", tokenizer.bos_id, tokenizer.stop_ids[0])
        generator = torch.Generator().manual_seed(0)
        kv = DIM // HEADS * KV_HEADS
        shapes = [("token_embd.weight", (VOCAB, DIM)), ("output_norm.weight", (DIM,))]
        for i in range(LAYERS):
            shapes += [(f"blk.{i}.attn_norm.weight", (DIM,)), (f"blk.{i}.attn_q.weight", (DIM, DIM)),
                       (f"blk.{i}.attn_k.weight", (kv, DIM)), (f"blk.{i}.attn_v.weight", (kv, DIM)),
                       (f"blk.{i}.attn_output.weight", (DIM, DIM)), (f"blk.{i}.ffn_norm.weight", (DIM,)),
                       (f"blk.{i}.ffn_gate.weight", (FFN, DIM)), (f"blk.{i}.ffn_up.weight", (FFN, DIM)),
                       (f"blk.{i}.ffn_down.weight", (DIM, FFN))]
        tensors = [("rope_freqs.weight", torch.tensor(rope_factors()))]
        tensors += [(name, torch.ones(shape) if len(shape) == 1 else
                     (torch.randn(shape, generator=generator) * 0.02).half()) for name, shape in shapes]
        write(F16_FILE, writer, tensors, "F16")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = 2
    partial = Q4_0_FILE.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(F16_FILE).encode(), str(partial).encode(), params) != 0:
        raise SystemExit("llama.cpp's quantizer failed")
    partial.rename(Q4_0_FILE)
    return Q4_0_FILE


def worker(engine: str, new_tokens: int) -> dict:
    return gguf_engine_worker(Q4_0_FILE, engine, new_tokens, PROMPT, KERNELS.get(engine, "auto"))


def main() -> None:
    engines_main(__file__, worker, ENGINES, "Llama-3.2-1B-shaped Q4_0 GGUF (llama.cpp's quantizer, rope_freqs), "
                 "greedy, {new_tokens} new tokens, 2 threads, median of {rounds} interleaved rounds", new_tokens=32,
                 prepare=write_files)


if __name__ == "__main__":
    main()
