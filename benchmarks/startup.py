"""Start-up time of `llmgen tokenize "hi"` against bare `python -c "import tiktoken"`, as a ratio
(issue #7: within 1.3x).

    python benchmarks/startup.py [--runs 15]

Runs each command alternately (so drift in machine load hits both alike) and reports the median.
`llmgen` is the console script next to this Python (not a version manager's shim, which adds its own
start-up), and llmgen's modules are byte-compiled first, as a pip install leaves them.
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import time
from pathlib import Path

import llmgen

LLMGEN = str(Path(sys.executable).parent / "llmgen")
COMMANDS = {
    "import tiktoken": [sys.executable, "-c", "import tiktoken"],
    "import tiktoken, typer, rich": [sys.executable, "-c", "import tiktoken, typer, rich"],
    "bare + cl100k_base load": [sys.executable, "-c", "import tiktoken, typer, rich; tiktoken.get_encoding('cl100k_base')"],
    "llmgen --help": [LLMGEN, "--help"],
    'llmgen tokenize "hi"': [LLMGEN, "tokenize", "hi"],
    'llmgen tokenize -e gpt2 "hi"': [LLMGEN, "tokenize", "-e", "gpt2", "hi"],
}


def main() -> None:
    from common import machine

    print(machine())
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    compileall.compile_dir(Path(llmgen.__file__).parent, quiet=1)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["import tiktoken"])
    print("| command | median s | ratio to `python -c \"import tiktoken\"` |\n|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| `{name}` | {median:.3f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
