"""Peak RSS and time of `llmgen inspect-weights` on >= 2 GB checkpoints (issue #4: under 300 MB).

    python benchmarks/inspect_rss.py [--gb 2.2]

Writes a .pth and a .safetensors of the given size (64 tensors of random bf16 data) under
benchmarks/out/, then runs the real console script on each in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out" / "inspect"


def write_checkpoints(gb: float) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    OUT.mkdir(parents=True, exist_ok=True)
    paths = [OUT / "big.pth", OUT / "big.safetensors"]
    if all(p.is_file() and p.stat().st_size >= gb * 1e9 * 0.99 for p in paths):
        return paths
    per_tensor = int(gb * 1e9 / 64 / 2)  # bf16 elements per tensor
    state = {f"layers.{i}.weight": torch.empty(per_tensor, dtype=torch.bfloat16).normal_() for i in range(64)}
    torch.save(state, paths[0])
    save_file(state, paths[1])
    return paths


def main() -> None:
    from common import machine

    print(machine())
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.2)
    parser.add_argument("--write-only", action="store_true")
    args = parser.parse_args()
    if args.write_only:
        write_checkpoints(args.gb)
        return
    # Written by another process, so this one stays small: a forked child starts with its parent's RSS.
    subprocess.run([sys.executable, __file__, "--write-only", "--gb", str(args.gb)], check=True)
    llmgen = shutil.which("llmgen") or "llmgen"
    print("| file | size GB | seconds | peak RSS MB |\n|---|---|---|---|")
    for path in (OUT / "big.pth", OUT / "big.safetensors"):
        start = time.perf_counter()
        child = subprocess.Popen([llmgen, "inspect-weights", str(path), "--no-tensors"], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        assert os.waitstatus_to_exitcode(status) == 0
        print(f"| {path.name} | {os.path.getsize(path) / 1e9:.2f} | {seconds:.2f} | {usage.ru_maxrss / 1024:.0f} |")


if __name__ == "__main__":
    main()
