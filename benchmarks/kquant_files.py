"""GGUF files in the block types people download, made with llama.cpp's own quantizer.

    python benchmarks/kquant_files.py        # writes what is missing into benchmarks/out/

- The real SmolLM2-135M-Instruct (the embedded default's Q4_1 file) requantized to Q4_K_M, Q5_K_M, Q6_K
  and Q8_0 (allow_requantize): its 576-wide rows are not a multiple of 256, so llama.cpp mixes in Q5_0,
  Q5_1 and Q8_0 where a k-quant does not fit: real weights in every common block type.
- The Llama-3.2-1B-shaped F16 file of llama1b_engines.py quantized to Q4_K_M (Q4_K, and Q6_K for attn_v,
  half of ffn_down and the tied embedding).
- Qwen2.5-0.5B- and Qwen3-0.6B-shaped models (random weights, Qwen's real tokenizer) written by
  transformers, converted by llama.cpp's convert_hf_to_gguf.py to F16 and quantized to Q4_K_M: the families
  llmgen reads with their GGUF architectures qwen2 and qwen3 (Qwen2.5's 896-wide rows mix in Q5_0/Q8_0);
  and a Gemma-3-1B-shaped one the same way (architecture gemma3, Gemma 4's vocabulary standing in).
Needs llama-cpp-python (`make bench-peers`) and the test extras (transformers; tests/support/llama_cpp_vocab.py).
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).parent / "out"
SMOLLM2_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def smollm2_file(kind: str) -> Path:
    return OUT / f"SmolLM2-135M-Instruct.{kind}.gguf"


def llama1b_q4_k_m() -> Path:
    return OUT / "llama-3.2-1b-shaped-q4_k_m.gguf"


# Hugging Face configs of the real models' shapes (config.json of Qwen/Qwen2.5-0.5B and Qwen/Qwen3-0.6B).
QWEN_SHAPES = {
    "qwen2.5-0.5b": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, use_sliding_window=False)),
    "qwen3-0.6b": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True)),
    # google/gemma-3-1b-it's config.json (local layers with a 512 window, every 6th global), with Gemma 4's
    # vocabulary standing in for Gemma 3's (tests/support/llama_cpp_vocab.py).
    "gemma-3-1b": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
        max_position_embeddings=32768, rope_theta=1000000.0, rope_local_base_freq=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True)),
}
VOCAB_OF = {"qwen2.5-0.5b": "qwen2", "qwen3-0.6b": "qwen2", "gemma-3-1b": "gemma-4"}


def qwen_file(name: str) -> Path:
    return OUT / f"{name}-shaped-q4_k_m.gguf"


def write_qwen(name: str) -> Path:
    """A Qwen- or Gemma-shaped Q4_K_M: transformers writes random weights with the family's tokenizer,
    llama.cpp's converter makes an F16 GGUF of them, llama.cpp's quantizer the Q4_K_M."""
    import shutil
    import sys

    target = qwen_file(name)
    if target.is_file():
        return target
    import torch
    import transformers

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "support"))
    import llama_cpp_vocab

    config_class, model_class, shape = QWEN_SHAPES[name]
    llama_cpp_vocab.fetch()
    directory = OUT / f"{name}-hf"
    directory.mkdir(parents=True, exist_ok=True)
    if VOCAB_OF[name] == "gemma-4":  # a Gemma 3 directory ships a SentencePiece model; the converter reads it
        llama_cpp_vocab.gemma_sentencepiece_model(directory / "tokenizer.model")
        tokenizer = transformers.GemmaTokenizer.from_pretrained(str(directory))
    else:
        vocab = llama_cpp_vocab.vocab_path(VOCAB_OF[name])
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(vocab.parent), gguf_file=vocab.name)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(vocab_size=len(tokenizer), **shape))
    model.to(torch.float16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    f16 = llama_cpp_vocab.convert_hf_to_gguf(directory, OUT / f"{name}-shaped-f16.gguf", "f16")
    shutil.rmtree(directory)
    requantize(f16, target, "Q4_K_M")
    f16.unlink()
    return target


def requantize(source: Path, target: Path, kind: str) -> Path:
    """source -> target in llama.cpp's `kind` (its LLAMA_FTYPE_MOSTLY_<kind>), written whole or not at all."""
    import llama_cpp

    if target.is_file():
        return target
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = 2
    params.allow_requantize = True
    partial = target.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
        raise SystemExit(f"llama.cpp's quantizer failed on {source.name} -> {kind}")
    partial.rename(target)
    return target


def write_all() -> list[Path]:
    from llama1b_engines import F16_FILE, write_files

    from llmgen.assets import locate

    OUT.mkdir(exist_ok=True)
    made = [requantize(locate("smollm2-135m-instruct-q4_1"), smollm2_file(kind), kind) for kind in SMOLLM2_TYPES]
    if not F16_FILE.is_file():
        write_files()
    return [*made, requantize(F16_FILE, llama1b_q4_k_m(), "Q4_K_M")]


if __name__ == "__main__":
    for path in write_all():
        print(path, path.stat().st_size)
