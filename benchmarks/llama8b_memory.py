"""Llama-3-8B-shaped bfloat16 weights on a 24 GB machine: 5 tokens with llmgen and llama.cpp, peak RSS.

    python benchmarks/llama8b_memory.py [--dir benchmarks/out/llama-3-8b-shaped] [--rounds 1]

Writes (once) what `llmgen download llama-3-8B` fetches, Meta's layout: params.json, the real LLaMA-3
tokenizer.model and one 16 GB consolidated.00.pth of bfloat16 weights (random values: speed and memory
do not depend on them). llmgen then runs in a fresh process and its peak RSS is read from wait4. It
memory-maps the checkpoint (torch.load(mmap=True)) and computes in bfloat16, so its RSS is the weights'
pages plus the runtime; the target (issue #7) is <= 17.5 GB. llama.cpp runs the same weights as a
BF16 GGUF (gguf_export.py, another 16 GB written once), memory-mapped as well, 2 threads, greedy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
PARAMS = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
          "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
FFN_DIM = 14336  # what multiple_of and ffn_dim_multiplier give for dim 4096
PROMPT, NEW_TOKENS = "武", 5


def write_checkpoint(directory: Path) -> Path:
    """Meta layout, bfloat16; each tensor its own storage (as in a real checkpoint), values cheap to make."""
    if (directory / "consolidated.00.pth").is_file():
        return directory
    import torch
    from common import meta_shapes, save_meta_checkpoint

    pattern = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
    state = {}
    for name, shape in meta_shapes(PARAMS, FFN_DIM).items():
        if len(shape) == 1:
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
            continue
        tensor = torch.empty(shape, dtype=torch.bfloat16)
        flat = tensor.view(-1)
        for start in range(0, flat.numel(), pattern.numel()):
            chunk = flat[start:start + pattern.numel()]
            chunk.copy_(pattern[:chunk.numel()])
        state[name] = tensor
    return save_meta_checkpoint(directory, state, PARAMS)


def run_measured(command: list[str]) -> dict:
    """Run a command; wall time and peak RSS of that process (wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    return {"returncode": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - started,
            "peak_rss_gb": usage.ru_maxrss / 1024 ** 2, "stdout": stdout, "stderr": stderr}


def llama_cpp_worker(gguf: Path, new_tokens: int = NEW_TOKENS) -> None:
    """One llama.cpp run, reporting what `llmgen --stats` reports."""
    from common import llama_cpp_greedy
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=64, n_threads=2, n_threads_batch=2, verbose=False)
    loaded = time.perf_counter()
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    stamps = llama_cpp_greedy(llm, prompt, new_tokens)
    print(f"load {loaded - started:.2f} s · prompt {len(prompt)} tokens in {stamps[1] - stamps[0]:.2f} s · "
          f"{new_tokens - 1} tokens at {(new_tokens - 1) / (stamps[-1] - stamps[1]):.2f} tok/s", file=sys.stderr)


def main() -> None:
    from common import machine

    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=OUT / "llama-3-8b-shaped")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--warm", action="store_true", help="run each engine once unmeasured right before "
                        "its measured run, so that its 16 GB file is in the page cache (the machine holds one)")
    parser.add_argument("--llama-cpp-worker", type=Path)
    args = parser.parse_args()
    if args.llama_cpp_worker:
        llama_cpp_worker(args.llama_cpp_worker, args.new_tokens)
        return
    print(machine())
    directory = write_checkpoint(args.dir)
    size_gb = (directory / "consolidated.00.pth").stat().st_size / 1e9
    commands = {"llmgen": [sys.executable, "-m", "llmgen", "generate", PROMPT, "--max-new-tokens", str(args.new_tokens),
                           "--model", str(directory), "--temperature", "0", "--stats"]}
    if importlib.util.find_spec("llama_cpp") is not None:
        from gguf_export import llama_gguf

        gguf = llama_gguf(directory, directory.with_name(f"{directory.name}.BF16.gguf"), PARAMS, "BF16")
        commands["llama.cpp"] = [sys.executable, __file__, "--llama-cpp-worker", str(gguf), "--new-tokens",
                                 str(args.new_tokens)]
    else:
        print("llama.cpp: not installed (make bench-peers), skipped", file=sys.stderr)
    print(f"Llama-3-8B-shaped bfloat16 ({size_gb:.2f} GB), {args.new_tokens} new tokens after `{PROMPT}`, greedy, "
          f"fresh process per run, {args.rounds} round(s) interleaved{', warm' if args.warm else ''}\n")
    print("| engine | wall s | peak RSS GB | load, prompt and decode (the engine's own report) |")
    print("|---|---|---|---|")
    for _ in range(args.rounds):
        for engine, command in commands.items():
            if args.warm:
                run_measured(command)
            result = run_measured(command)
            if result["returncode"] != 0:
                sys.exit(f"{engine} failed: {result['stderr'].strip()[-500:]}")
            stats = " ".join(line.strip() for line in result["stderr"].splitlines())
            print(f"| {engine} | {result['seconds']:.1f} | {result['peak_rss_gb']:.2f} | {stats} |", flush=True)


if __name__ == "__main__":
    main()
