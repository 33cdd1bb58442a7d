"""One-token bf16 matmuls at Llama-3-8B's largest shape: llmgen's bf16 kernel (kernels/bf16_matmul.cpp)
against PyTorch's bf16 F.linear, in GB/s of weights read.

    python benchmarks/bf16_gemv.py [--repeats 5]

Eight 14336 x 4096 bf16 matrices (940 MB, far beyond the caches), each multiplied by one float32 row in
turn, 2 threads; GB/s = weight bytes / seconds, best of the repeats. A decode step of a bf16 model is
these reads, so tok/s is about GB/s / 15 for the 8B.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from llmgen import kernels


def best_rate(run, weights: list[torch.Tensor], repeats: int) -> float:
    run()
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = max(best, sum(w.numel() * 2 for w in weights) / (time.perf_counter() - started) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    weights = [(torch.randn(14336, 4096, generator=generator) * 0.02).bfloat16() for _ in range(8)]
    x = torch.randn(1, 4096, generator=generator)
    print(f"level {kernels.level() or kernels.unavailable_reason()}, 2 threads, 8 x 14336 x 4096 bf16")
    if kernels.library() is not None:
        matmuls = [kernels.QuantMatmul([(kernels.PackedBf16(w), None)]) for w in weights]
        rate = best_rate(lambda: [m(x) for m in matmuls], weights, args.repeats)
        print(f"llmgen bf16 kernel: {rate:.1f} GB/s")
    x16 = x.bfloat16()
    rate = best_rate(lambda: [F.linear(x16, w) for w in weights], weights, args.repeats)
    print(f"PyTorch F.linear (bf16): {rate:.1f} GB/s")


if __name__ == "__main__":
    main()
