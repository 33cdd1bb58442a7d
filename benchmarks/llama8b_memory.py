"""Llama-3-8B-shaped bfloat16 weights on a 24 GB machine: `llmgen generate` 5 tokens, peak RSS.

    python benchmarks/llama8b_memory.py [--dir benchmarks/out/llama-3-8b-shaped]

Writes (once) what `llmgen download llama-3-8B` fetches, Meta's layout: params.json, the real LLaMA-3
tokenizer.model and one 16 GB consolidated.00.pth of bfloat16 weights (random values: speed and memory
do not depend on them). llmgen then runs in a fresh process and its peak RSS is read from wait4. It
memory-maps the checkpoint (torch.load(mmap=True)) and computes in bfloat16, so its RSS is the weights'
pages plus the runtime; the target (issue #7) is <= 17.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
PARAMS = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
          "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
FFN_DIM = 14336  # what multiple_of and ffn_dim_multiplier give for dim 4096
PROMPT, NEW_TOKENS = "武", 5


def meta_shapes() -> dict[str, tuple[int, ...]]:
    dim, kv = PARAMS["dim"], PARAMS["n_kv_heads"] * PARAMS["dim"] // PARAMS["n_heads"]
    shapes = {"tok_embeddings.weight": (PARAMS["vocab_size"], dim), "norm.weight": (dim,),
              "output.weight": (PARAMS["vocab_size"], dim)}
    for i in range(PARAMS["n_layers"]):
        p = f"layers.{i}."
        shapes |= {p + "attention.wq.weight": (dim, dim), p + "attention.wk.weight": (kv, dim),
                   p + "attention.wv.weight": (kv, dim), p + "attention.wo.weight": (dim, dim),
                   p + "feed_forward.w1.weight": (FFN_DIM, dim), p + "feed_forward.w2.weight": (dim, FFN_DIM),
                   p + "feed_forward.w3.weight": (FFN_DIM, dim),
                   p + "attention_norm.weight": (dim,), p + "ffn_norm.weight": (dim,)}
    return shapes


def write_checkpoint(directory: Path) -> Path:
    """Meta layout, bfloat16; each tensor its own storage (as in a real checkpoint), values cheap to make."""
    if (directory / "consolidated.00.pth").is_file():
        return directory
    import torch

    from llmgen import assets

    directory.mkdir(parents=True, exist_ok=True)
    pattern = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
    state = {}
    for name, shape in meta_shapes().items():
        if len(shape) == 1:
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
            continue
        tensor = torch.empty(shape, dtype=torch.bfloat16)
        flat = tensor.view(-1)
        for start in range(0, flat.numel(), pattern.numel()):
            chunk = flat[start:start + pattern.numel()]
            chunk.copy_(pattern[:chunk.numel()])
        state[name] = tensor
    partial = directory / "consolidated.00.pth.partial"
    torch.save(state, partial)
    del state
    partial.rename(directory / "consolidated.00.pth")
    (directory / "params.json").write_text(json.dumps(PARAMS))
    shutil.copy(assets.locate("llama3"), directory / "tokenizer.model")
    return directory


def run_measured(command: list[str]) -> dict:
    """Run a command; wall time and peak RSS of that process (wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    return {"returncode": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - started,
            "peak_rss_gb": usage.ru_maxrss / 1024 ** 2, "stdout": stdout, "stderr": stderr}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=OUT / "llama-3-8b-shaped")
    args = parser.parse_args()
    directory = write_checkpoint(args.dir)
    size_gb = (directory / "consolidated.00.pth").stat().st_size / 1e9
    command = [sys.executable, "-m", "llmgen", "generate", PROMPT, "--max-new-tokens", str(NEW_TOKENS),
               "--model", str(directory), "--temperature", "0", "--stats"]
    result = run_measured(command)
    if result["returncode"] != 0:
        sys.exit(f"llmgen failed: {result['stderr'].strip()}")
    stats = " ".join(line.strip() for line in result["stderr"].splitlines())
    print(f"Llama-3-8B-shaped bfloat16, Meta layout ({size_gb:.2f} GB), `llmgen generate {PROMPT} "
          f"--max-new-tokens {NEW_TOKENS}`\n")
    print("| engine | wall s | peak RSS GB | llmgen --stats |")
    print("|---|---|---|---|")
    print(f"| llmgen | {result['seconds']:.1f} | {result['peak_rss_gb']:.2f} | {stats} |")


if __name__ == "__main__":
    main()
