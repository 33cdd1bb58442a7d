"""GGUF files in the block types people download (Q4_K_M and friends), in llmgen and llama.cpp side by side.

    python benchmarks/kquant_engines.py [--rounds 3] [--new-tokens 32]
        [--file 1b|q4_k_m|q5_k_m|q6_k|q8_0|qwen2.5-0.5b|qwen3-0.6b|gemma-3-1b|PATH.gguf]

The files come from kquant_files.py (llama.cpp's own quantizer): "1b" is the Llama-3.2-1B-shaped Q4_K_M
(random weights: Q4_K, Q6_K for attn_v, half of ffn_down and the tied embedding), the others the real
SmolLM2-135M-Instruct requantized. llmgen keeps every block type as stored (weights/gguf_blocks.py):
4-bit types on its int4 kernel, the rest on its int8 kernel. Greedy, 2 threads, fresh processes,
interleaved, medians; peak RSS against the file's size. Needs llama-cpp-python (`make bench-peers`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from common import engines_main, gguf_engine_worker, prepare_in_own_process
from kquant_files import QWEN_SHAPES, llama1b_q4_k_m, qwen_file, smollm2_file, write_all, write_qwen

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. Write a short story about a cat."
KERNELS = {"llmgen": "auto", "llmgen avx2": "avx2"}  # LLMGEN_KERNELS
ENGINES = ["llmgen", "llmgen avx2", "llama.cpp"]


def chosen_file():
    name = os.environ.get("KQUANT_FILE", "1b")
    if name.endswith(".gguf"):  # a file made elsewhere (quantize_8b.py's)
        return Path(name)
    if name in QWEN_SHAPES:
        return qwen_file(name)
    return llama1b_q4_k_m() if name == "1b" else smollm2_file(name.upper())


def prepare() -> None:
    name = os.environ.get("KQUANT_FILE", "1b")
    if name.endswith(".gguf"):
        return
    write_qwen(name) if name in QWEN_SHAPES else write_all()


def worker(engine: str, new_tokens: int) -> dict:
    return gguf_engine_worker(chosen_file(), engine, new_tokens, PROMPT, KERNELS.get(engine, "auto"))


def main() -> None:
    if "--file" in sys.argv:  # passed to the workers through the environment
        at = sys.argv.index("--file")
        os.environ["KQUANT_FILE"] = sys.argv[at + 1]
        del sys.argv[at:at + 2]
    prepare_in_own_process(prepare)  # the file's size goes into the title
    path = chosen_file()
    size = path.stat().st_size / 1e6
    engines_main(__file__, worker, ENGINES, f"{path.name} ({size:.0f} MB; RSS bound 1.5x file + 600 MB = "
                 f"{1.5 * size + 600:.0f} MB), greedy, {{new_tokens}} new tokens, 2 threads, median of {{rounds}} "
                 "interleaved rounds", new_tokens=32)


if __name__ == "__main__":
    main()
