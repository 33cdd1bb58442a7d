"""llmgen (float32 and weight-only int8) vs Hugging Face transformers on the same GPT-2-124M-shaped
random weights, side by side.

    python benchmarks/generate_gpt2.py [--rounds 3] [--prompt-tokens 128] [--new-tokens 128]

Each measurement runs in a fresh process (so peak RSS is that engine's own), engines alternate within
each round (so drift in machine load hits both alike), and the table reports medians and ratios to
llmgen. Greedy decoding; both use torch's default thread count.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
ENGINES = ("llmgen", "llmgen int8", "transformers")


def make_weights(directory: Path) -> Path:
    if (directory / "model.safetensors").is_file():
        return directory
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)  # 124M: 12 layers, 768 wide, 50257 vocab
    return directory


def worker(engine: str, directory: Path, prompt_tokens: int, new_tokens: int) -> dict:
    import torch

    prompt = torch.randint(0, 50257, (prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    started = time.perf_counter()
    if engine.startswith("llmgen"):
        from llmgen.generation import SamplingSettings, generate_ids
        from llmgen.quantize import quantize_int8
        from llmgen.weights.loading import load_weights

        model, _ = load_weights(directory)
        if engine == "llmgen int8":
            quantize_int8(model)
        loaded = time.perf_counter()
        stamps = []
        for _ in generate_ids(model, prompt, SamplingSettings(max_new_tokens=new_tokens, temperature=0)):
            stamps.append(time.perf_counter())
        first, last = stamps[0], stamps[-1]
        prefill_s = first - loaded
    else:
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32).eval()
        loaded = time.perf_counter()
        ids = torch.tensor([prompt])
        kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
            first = time.perf_counter()
            prefill_s = first - t0
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
            last = time.perf_counter()
            first = t1 + prefill_s  # decode time = full run minus its prefill
    return {
        "load_s": loaded - started,
        "prefill_tok_s": prompt_tokens / prefill_s,
        "decode_tok_s": (new_tokens - 1) / (last - first),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--worker", choices=ENGINES)
    parser.add_argument("--dir", type=Path, default=OUT / "gpt2-124m-random")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.dir, args.prompt_tokens, args.new_tokens)))
        return

    make_weights(args.dir)
    results: dict[str, list[dict]] = {e: [] for e in ENGINES}
    for _ in range(args.rounds):
        for engine in ENGINES:
            done = subprocess.run(
                [sys.executable, __file__, "--worker", engine, "--dir", str(args.dir),
                 "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)],
                capture_output=True, text=True, check=True,
            )
            results[engine].append(json.loads(done.stdout.strip().splitlines()[-1]))

    metrics = [("load_s", "load s", False), ("prefill_tok_s", "prefill tok/s", True),
               ("decode_tok_s", "decode tok/s", True), ("peak_rss_mb", "peak RSS MB", False)]
    median = {e: {k: statistics.median(r[k] for r in results[e]) for k, _, _ in metrics} for e in ENGINES}
    print(f"GPT-2-124M-shaped random weights, fp32, greedy, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, median of {args.rounds} interleaved rounds\n")
    print("| engine | " + " | ".join(label for _, label, _ in metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for engine in ENGINES:
        cells = []
        for key, _, _ in metrics:
            value, ours = median[engine][key], median["llmgen"][key]
            ratio = "" if engine == "llmgen" else f" ({value / ours:.2f}x)"
            cells.append(f"{value:.1f}{ratio}" if key != "load_s" else f"{value:.2f}{ratio}")
        print(f"| {engine} | " + " | ".join(cells) + " |")
    print("\nRatios are the engine's value over llmgen's (float32). Decode against transformers: llmgen "
          f"{median['llmgen']['decode_tok_s'] / median['transformers']['decode_tok_s']:.2f}x, llmgen int8 "
          f"{median['llmgen int8']['decode_tok_s'] / median['transformers']['decode_tok_s']:.2f}x.")


if __name__ == "__main__":
    main()
