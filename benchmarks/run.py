"""Every side-by-side benchmark in one run, written to benchmarks/LATEST.md with the machine described.

    make bench                      # installs the peers (llama-cpp-python, transformers), then this
    python benchmarks/run.py [--rounds 3] [--only smollm2,gpt2,llama8b,startup]

- smollm2: the default model (SmolLM2-135M-Instruct Q4_1 GGUF) in llmgen, transformers and llama.cpp.
- gpt2: GPT-2-124M-shaped random weights in llmgen, transformers and llama.cpp (GGUF conversions).
- llama8b: a Llama-3-8B-shaped bfloat16 checkpoint (16 GB, written once) in llmgen and llama.cpp: peak RSS.
- startup: `llmgen tokenize` against bare `import tiktoken`.
Each engine runs in fresh processes, interleaved with the others; the tables give medians and ratios.
benchmarks/RESULTS.md discusses the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).parent
SUITES = {
    "smollm2": ["smollm2_engines.py"],
    "gpt2": ["generate_gpt2.py"],
    "llama8b": ["llama8b_memory.py"],
    "startup": ["startup.py"],
}


def describe_machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor())
    features = [f for f in ("avx2", "avx_vnni", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f" {f}" in cpuinfo]
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    versions = []
    for package in ("torch", "transformers", "llama_cpp_python", "tiktoken"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    from llmgen import kernels

    level = kernels.level() or f"not used ({kernels.unavailable_reason()})"
    return (f"{cpu}, {os.cpu_count()} cores ({', '.join(features)}), {memory_gb:.0f} GiB RAM, "
            f"Python {platform.python_version()}; {', '.join(versions)}; llmgen's kernels: {level}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(SUITES))
    parser.add_argument("--out", type=Path, default=HERE / "LATEST.md")
    args = parser.parse_args()
    sections = [f"# Latest benchmark run\n\n{datetime.date.today()}: {describe_machine()}\n"]
    for name in args.only.split(","):
        for script in SUITES[name]:
            command = [sys.executable, str(HERE / script)]
            if name in ("smollm2", "gpt2"):
                command += ["--rounds", str(args.rounds)]
            print(f"running {' '.join(command[1:])} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            body = done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr.strip()[-500:]}"
            sections.append(f"## {name}: `python benchmarks/{' '.join([script, *command[2:]])}`\n\n{body}\n")
            print(sections[-1], flush=True)
    args.out.write_text("\n".join(sections))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
