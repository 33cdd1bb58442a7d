"""CPU kernels for one-token matmuls, over the 120 matrices of a SmolLM2-135M decode step: PyTorch's
and llmgen's own int4 kernel (kernels/int4_matmul.cpp).

    python benchmarks/linear_kernels.py [--repeats 30]

Each line times all 120 matmuls of a step (30 layers of q/k/v 960x576, o 576x576, gate/up 3072x576,
down 576x1536; the head is left out), 2 threads, min and median over the repeats. It is why llmgen's
4-bit layers use its own kernel where it runs and `_weight_int4pack_mm_for_cpu` elsewhere
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from llmgen import kernels as kernels_module
from llmgen.quantization.linear import Int4Linear, Int8Linear
from llmgen.weights.stored import Int4Groups

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30  # (out, in)


def time_step(matmuls, inputs, repeats: int) -> tuple[float, float]:
    for _ in range(3):
        for matmul, x in zip(matmuls, inputs):
            matmul(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for matmul, x in zip(matmuls, inputs):
            matmul(x)
        times.append(time.perf_counter() - started)
    return min(times) * 1e3, statistics.median(times) * 1e3


def dynamic_int8(weight: torch.Tensor, engine: str):
    """fbgemm/x86/oneDNN dynamic quantization: int8 weights, activations quantized per call (VNNI)."""
    torch.backends.quantized.engine = engine
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated, still the way to reach these kernels
        quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear})[0]
    packed = quantized._packed_params._packed_params
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)


def main() -> None:
    from common import machine

    print(machine())
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    weights = [torch.randn(n, k) * 0.02 for n, k in SHAPES]
    float_inputs = [torch.randn(1, k) for _, k in SHAPES]
    bf16_inputs = [x.bfloat16() for x in float_inputs]
    kernels = {
        "float32 F.linear (MKL)": ([lambda x, w=w: F.linear(x, w) for w in weights], float_inputs),
        "int4 _weight_int4pack_mm_for_cpu": (
            [Int4Linear(Int4Groups.from_float(w), own_kernel=False).as_function() for w in weights], bf16_inputs),
        "int8 _weight_int8pack_mm": ([Int8Linear(w).as_function() for w in weights], bf16_inputs),
    }
    if kernels_module.library() is not None:
        kernels["int4 llmgen (int4_matmul.cpp)"] = (
            [Int4Linear(Int4Groups.from_float(w)).as_function() for w in weights], float_inputs)
    else:
        print(f"llmgen's kernel left out: {kernels_module.unavailable_reason()}")
    for engine in ("fbgemm", "x86", "onednn"):
        kernels[f"dynamic int8, {engine}"] = ([dynamic_int8(w, engine) for w in weights], float_inputs)
    print("| kernel | min ms | median ms |\n|---|---|---|")
    with torch.inference_mode():
        for name, (matmuls, inputs) in kernels.items():
            best, median = time_step(matmuls, inputs, args.repeats)
            print(f"| {name} | {best:.2f} | {median:.2f} |", flush=True)


if __name__ == "__main__":
    main()
