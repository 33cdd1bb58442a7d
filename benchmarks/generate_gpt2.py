"""llmgen (float32, weight-only int8 and int4), Hugging Face transformers and llama.cpp (float32 and Q4_1
GGUF conversions, gguf_export.py) on the same GPT-2-124M-shaped random weights, side by side.

    python benchmarks/generate_gpt2.py [--rounds 3] [--prompt-tokens 128] [--new-tokens 128]

Each measurement runs in a fresh process (so peak RSS is that engine's own), engines alternate within
each round (so drift in machine load hits both alike), and the table reports medians and ratios to
llmgen (float32). Greedy decoding; 2 threads (the machine's cores) for all. llama.cpp's float32 GGUF
gives the same greedy ids as llmgen on these weights (checked when the file was written).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import (
    llama_cpp_greedy,
    llmgen_greedy,
    machine,
    measurements,
    print_table,
    run_interleaved,
    transformers_greedy,
)

OUT = Path(__file__).parent / "out"
QUANTIZE = {"llmgen": "auto", "llmgen int8": "int8", "llmgen int4": "int4"}  # auto: float32 as stored
GGUF_TYPES = {"llama.cpp": "F32", "llama.cpp Q4_1": "Q4_1"}
ENGINES = ("llmgen", "llmgen int8", "llmgen int4", "transformers", *GGUF_TYPES)


def make_weights(directory: Path) -> Path:
    if (directory / "model.safetensors").is_file():
        return directory
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)  # 124M: 12 layers, 768 wide, 50257 vocab
    return directory


def gguf_path(directory: Path, engine: str) -> Path:
    return directory.with_name(f"{directory.name}.{GGUF_TYPES[engine]}.gguf")


def worker(engine: str, directory: Path, prompt_tokens: int, new_tokens: int) -> dict:
    import torch

    torch.set_num_threads(2)
    prompt = torch.randint(0, 50257, (prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    started = time.perf_counter()
    if engine.startswith("llmgen"):
        from llmgen.loading import load_model

        model = load_model(directory, quantize=QUANTIZE[engine]).model
        loaded = time.perf_counter()
        stamps = llmgen_greedy(model, prompt, new_tokens)
    elif engine in GGUF_TYPES:
        from llama_cpp import Llama

        llm = Llama(model_path=str(gguf_path(directory, engine)), n_ctx=prompt_tokens + new_tokens, n_threads=2,
                    n_threads_batch=2, verbose=False)
        loaded = time.perf_counter()
        stamps = llama_cpp_greedy(llm, prompt, new_tokens)
    else:
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32).eval()
        loaded = time.perf_counter()
        stamps = transformers_greedy(model, prompt, new_tokens)
    return measurements(loaded - started, prompt_tokens, stamps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--worker", choices=ENGINES)
    parser.add_argument("--dir", type=Path, default=OUT / "gpt2-124m-random")
    args = parser.parse_args()
    sizes = ["--dir", str(args.dir), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
    if args.worker:
        print(json.dumps(worker(args.worker, args.dir, args.prompt_tokens, args.new_tokens)))
        return
    make_weights(args.dir)
    from gguf_export import gpt2_gguf

    for engine in GGUF_TYPES:
        gpt2_gguf(args.dir, gguf_path(args.dir, engine), GGUF_TYPES[engine])
    print(machine())
    medians = run_interleaved(__file__, list(ENGINES), sizes, args.rounds)
    print(f"GPT-2-124M-shaped random weights (float32 safetensors), greedy, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, median of {args.rounds} interleaved rounds\n")
    print_table(medians)


if __name__ == "__main__":
    main()
