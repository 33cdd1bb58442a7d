"""`llmgen quantize` on a Llama-3-8B-shaped checkpoint in Meta's layout (what `llmgen download llama-3-8B`
fetches: one 16 GB bfloat16 consolidated.00.pth), then the written Q4_0 file in llmgen and llama.cpp.

    python benchmarks/quantize_8b.py [--type q4_0] [--rounds 1]

1. `llmgen quantize DIR OUT.gguf --type q4_0` in a fresh process: wall time and peak RSS (wait4). The
   checkpoint is memory-mapped and each tensor's pages are released once written, so the peak is about the
   largest tensor's output plus the runtime, not the 16 GB.
2. The file in llmgen (`generate`, its blocks kept on llmgen's kernels) and in llama.cpp (llama-cpp-python),
   side by side: kquant_engines.py --file OUT.gguf (load, decode tok/s, peak RSS; medians of the rounds).
The checkpoint (random values in real shapes, the real LLaMA-3 tokenizer) is llama8b_memory.py's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from llama8b_memory import OUT, run_measured, write_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--type", default="q4_0")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=OUT / "llama-3-8b-shaped")
    args = parser.parse_args()
    directory = write_checkpoint(args.dir)
    out = directory.with_name(f"{directory.name}-{args.type}.gguf")
    result = run_measured([sys.executable, "-m", "llmgen", "quantize", str(directory), str(out), "--type", args.type])
    if result["returncode"] != 0:
        raise SystemExit(f"llmgen quantize failed: {result['stderr'].strip()[-500:]}")
    size = (directory / "consolidated.00.pth").stat().st_size / 1e9
    print(f"llmgen quantize: {directory.name} ({size:.2f} GB bfloat16) -> {out.name} ({out.stat().st_size / 1e9:.2f} GB "
          f"{args.type}) in {result['seconds']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB\n")
    sys.stdout.flush()
    engines = subprocess.run([sys.executable, str(Path(__file__).with_name("kquant_engines.py")), "--file", str(out),
                              "--rounds", str(args.rounds), "--engines", "llmgen,llama.cpp"])
    sys.exit(engines.returncode)


if __name__ == "__main__":
    main()
