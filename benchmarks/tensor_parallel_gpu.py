"""Tensor parallelism on a GPU: the CPU test's parity check (tests/parallel/test_tensor_parallel.py) with CUDA tensors.

    python benchmarks/tensor_parallel_gpu.py OUT_DIR [DEVICE]    (DEVICE: cuda, or cpu to try it without one)

Makes the test's LLaMA-3-shaped (GQA, the real LLaMA-3 tokenizer) and GPT-2-shaped checkpoints, runs
tests/support/tp_worker.py as one process on cuda and as 2 ranks under torch.distributed.run, and prints the largest
logit difference, whether the 32 greedy ids agree and each rank's parameter bytes; then `llmgen generate
--device cuda --tp 2` against one process. With one GPU both ranks share it, so the ranks talk through gloo
(LLMGEN_TP_BACKEND=gloo: nccl refuses two ranks on one device); nccl itself needs 2 GPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))


def main(out: Path, device: str) -> None:
    import torch
    from checkpoints import hf_gpt2, hf_llama, save_hf, save_meta

    from llmgen import assets

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "no GPU"
    print(f"torch {torch.__version__}, {gpu}, {torch.cuda.device_count()} GPU(s)")
    llama = save_meta(hf_llama(vocab_size=128256, hidden_size=64, intermediate_size=192, num_attention_heads=4,
                               num_key_value_heads=2), out / "llama3")
    shutil.copy(assets.locate("llama3"), llama / "tokenizer.model")
    gpt2 = save_hf(hf_gpt2(vocab_size=50257, n_positions=128), out / "gpt2")
    models = [str(llama), str(gpt2)]
    env = {**os.environ, "LLMGEN_TP_BACKEND": "gloo", "OMP_NUM_THREADS": "4"}
    worker = str(ROOT / "tests" / "support" / "tp_worker.py")
    (out / "one").mkdir()
    (out / "two").mkdir()
    subprocess.run([sys.executable, worker, str(out / "one"), device, *models], check=True, env=env)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           worker, str(out / "two"), device, *models], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"2 ranks failed: {done.stderr[-3000:]}")
    single = json.loads((out / "one" / "rank0.json").read_text())
    ranks = [json.loads((out / "two" / f"rank{r}.json").read_text()) for r in range(2)]
    print("| model | largest logit difference | 32 greedy ids | parameter bytes: one process, each rank |")
    print("|---|---|---|---|")
    for path in models:
        one = single[path]
        difference = max((torch.tensor(r[path]["logits"]) - torch.tensor(one["logits"])).abs().max().item()
                         for r in ranks)
        same = all(r[path]["greedy"] == one["greedy"] for r in ranks)
        per_rank = ", ".join(f"{r[path]['parameter_bytes']:,}" for r in ranks)
        print(f"| {Path(path).name} | {difference:.2e} | {'same' if same else 'DIFFERENT'} | "
              f"{one['parameter_bytes']:,}; {per_rank} |")
    command = [sys.executable, "-m", "llmgen", "generate", "The year 2024 in 北京 had 366 days, and", "--model",
               str(llama), "--raw", "--temperature", "0", "-n", "32", "--json", "--device", device]
    one = subprocess.run(command, env=env, capture_output=True, text=True)
    two = subprocess.run(command + ["--tp", "2"], env=env, capture_output=True, text=True)
    if one.returncode or two.returncode:
        sys.exit(f"llmgen generate failed: {one.stderr[-1500:]} {two.stderr[-1500:]}")
    same = json.loads(one.stdout)["ids"] == json.loads(two.stdout)["ids"]
    print(f"\nllmgen generate --device {device} --tp 2: ids {'same as' if same else 'DIFFERENT from'} one process; "
          f"stdout lines {len(two.stdout.splitlines())}, stderr {two.stderr.strip() or 'empty'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cuda")
