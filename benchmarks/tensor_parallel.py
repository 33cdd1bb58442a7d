"""Tensor parallelism's memory: `llmgen generate --tp 2` against one process, on Llama-3.2-1B-shaped float32
weights (4.9 GB), each rank's peak RSS and the tokens each run gives.

    python benchmarks/tensor_parallel.py [--dir benchmarks/out/llama-3.2-1b-shaped-f32] [--new-tokens 16]

Writes (once) a Meta-layout checkpoint of that shape (tied embedding, GQA 32/8 heads, random values) with
the real LLaMA-3 tokenizer. Each run is a fresh `llmgen generate --temperature 0 --json`; each process's
peak RSS is its VmHWM, read from /proc every 20 ms while it runs (the ranks are the launcher's children,
which wait4 does not report apart). It counts the checkpoint's memory-mapped pages the process touched.
The target (issue #20): each rank under 0.75x one process's peak, with the same ids.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
PARAMS = {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 256,
          "ffn_dim_multiplier": 1.5, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True}
FFN_DIM = 8192  # what multiple_of and ffn_dim_multiplier give for dim 2048
PROMPT = "The capital of France is"


def write_checkpoint(directory: Path) -> Path:
    """Meta layout, float32, tied embedding (no output.weight), as Llama 3.2 1B."""
    if (directory / "consolidated.00.pth").is_file():
        return directory
    import torch
    from common import meta_shapes, save_meta_checkpoint

    generator = torch.Generator().manual_seed(0)
    state = {name: torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=generator) * 0.02
             for name, shape in meta_shapes(PARAMS, FFN_DIM, tied=True).items()}
    return save_meta_checkpoint(directory, state, PARAMS)


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _high_water_mark_gb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        return None
    return None


def measure(command: list[str]) -> dict:
    """Run `llmgen generate ... --json`: its result, wall time, its own peak RSS (wait4) and each of its
    children's (the ranks, polled: wait4 does not see grandchildren)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    own, children = 0.0, {}
    while process.poll() is None:
        own = max(own, _high_water_mark_gb(process.pid) or 0.0)
        for child in _children(process.pid):
            if (peak := _high_water_mark_gb(child)) is not None:
                children[child] = max(children.get(child, 0.0), peak)
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command[2:])} failed: {stderr.strip()[-500:]}")
    return {"result": json.loads(stdout), "seconds": time.perf_counter() - started,
            "peak_gb": own, "children_gb": sorted(children.values(), reverse=True)}


def main() -> None:
    from common import machine

    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=OUT / "llama-3.2-1b-shaped-f32")
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    print(machine())
    directory = write_checkpoint(args.dir)
    size_gb = (directory / "consolidated.00.pth").stat().st_size / 1e9
    base = [sys.executable, "-m", "llmgen", "generate", PROMPT, "--model", str(directory), "--raw",
            "--temperature", "0", "--max-new-tokens", str(args.new_tokens), "--json"]
    print(f"Llama-3.2-1B-shaped float32 ({size_gb:.2f} GB), {args.new_tokens} new tokens, greedy; each run once "
          "unmeasured first (the file in the page cache), then measured\n")
    print("| run | wall s | decode tok/s | peak RSS GB | ids |")
    print("|---|---|---|---|---|")
    single = None
    for name, command in (("one process", base), ("--tp 2", base + ["--tp", "2"])):
        measure(command)
        run = measure(command)
        result = run["result"]
        if single is None:
            single, peaks = run, f"{run['peak_gb']:.2f}"
        else:
            ranks = run["children_gb"][:2]
            peaks = f"ranks {', '.join(f'{p:.2f}' for p in ranks)}; launcher {run['peak_gb']:.2f}"
        same = "same" if result["ids"] == single["result"]["ids"] else "DIFFERENT"
        print(f"| {name} | {run['seconds']:.1f} | {result['tokens_per_second']:.2f} | {peaks} | {same} |", flush=True)
    print(f"\nlargest rank / one process: {max(ranks) / single['peak_gb']:.2f}x (target < 0.75x)")


if __name__ == "__main__":
    main()
