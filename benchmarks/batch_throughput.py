"""Eight prompts through `llmgen generate --batch` (one process, the model loaded once) against eight
`llmgen generate --json` processes, on the embedded model.

    python benchmarks/batch_throughput.py [--rounds 3] [--new-tokens 32]

Greedy, the same prompts and lengths both ways (the outputs are checked equal). Wall time of the whole job
and generated tokens per second of wall time; medians of the rounds, the two ways interleaved.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

PROMPTS = ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):", "武汉是一座",
           "List three colours:", "Once upon a time", "The best way to learn Python is", "2 + 2 ="]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    llmgen = shutil.which("llmgen", path=str(Path(sys.executable).parent)) or "llmgen"
    common = ["--raw", "-t", "0", "-n", str(args.new_tokens)]
    with tempfile.TemporaryDirectory() as scratch:
        batch_file = Path(scratch) / "prompts.jsonl"
        batch_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
        times: dict[str, list[float]] = {"--batch (1 process)": [], "one process per prompt": []}
        tokens = 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            done = subprocess.run([llmgen, "generate", "--batch", str(batch_file), *common], capture_output=True,
                                  text=True, check=True)
            times["--batch (1 process)"].append(time.perf_counter() - started)
            batched = [json.loads(line)["ids"] for line in done.stdout.splitlines()]
            started = time.perf_counter()
            single = [json.loads(subprocess.run([llmgen, "generate", p, "--json", *common], capture_output=True,
                                                text=True, check=True).stdout)["ids"] for p in PROMPTS]
            times["one process per prompt"].append(time.perf_counter() - started)
            assert batched == single, "--batch must give what the prompts give one by one"
            tokens = sum(map(len, batched))
    print(machine())
    print(f"{len(PROMPTS)} prompts, greedy, {args.new_tokens} new tokens each ({tokens} generated), embedded "
          f"SmolLM2-135M-Instruct, median of {args.rounds} rounds\n")
    print("| how | wall s | generated tok/s of wall time |\n|---|---|---|")
    for how, runs in times.items():
        wall = statistics.median(runs)
        print(f"| {how} | {wall:.2f} | {tokens / wall:.1f} |")


if __name__ == "__main__":
    main()
