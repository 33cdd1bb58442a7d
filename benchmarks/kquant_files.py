"""GGUF files in the block types people download, made with llama.cpp's own quantizer.

    python benchmarks/kquant_files.py        # writes what is missing into benchmarks/out/

- The real SmolLM2-135M-Instruct (the embedded default's Q4_1 file) requantized to Q4_K_M, Q5_K_M, Q6_K
  and Q8_0 (allow_requantize): its 576-wide rows are not a multiple of 256, so llama.cpp mixes in Q5_0,
  Q5_1 and Q8_0 where a k-quant does not fit: real weights in every common block type.
- The Llama-3.2-1B-shaped F16 file of llama1b_engines.py quantized to Q4_K_M (Q4_K, and Q6_K for attn_v,
  half of ffn_down and the tied embedding).
Needs llama-cpp-python (`make bench-peers`).
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).parent / "out"
SMOLLM2_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def smollm2_file(kind: str) -> Path:
    return OUT / f"SmolLM2-135M-Instruct.{kind}.gguf"


def llama1b_q4_k_m() -> Path:
    return OUT / "llama-3.2-1b-shaped-q4_k_m.gguf"


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
