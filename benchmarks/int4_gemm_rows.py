"""The int4 kernel's cost per row of x as the rows grow (M = 1: the GEMV decode step; M > 1: the GEMM tile),
on random Q4_0-form weights of SmolLM2's and a 1B Llama's shapes: microseconds a row, GMAC/s, and M rows'
time against one row's. T=threads (default 1).

    T=1 python benchmarks/int4_gemm_rows.py
"""
import os
import time

import torch

from llmgen import kernels
from llmgen.kernels.calls import QuantMatmul
from llmgen.kernels.packing import pack_int4

torch.manual_seed(0)
threads = int(os.environ.get("T", "1"))
torch.set_num_threads(threads)
print("level", kernels.level())
def make(out, inp, sym=False):
    q = torch.randint(0, 16, (out, inp), dtype=torch.uint8)
    s = torch.rand(out, inp // 32) * 0.01 + 0.001
    m = -8 * s if sym else -torch.rand(out, inp // 32) * 0.1
    return QuantMatmul([(pack_int4(q, s.half(), m.half()), None)])
shapes = [(1536, 576), (2048, 2048), (8192, 2048)]
for out, inp in shapes:
    mm = make(out, inp, sym=True)
    line = f"{out}x{inp}:"
    base = None
    for M in (1, 4, 8, 16, 64):
        x = torch.randn(M, inp)
        mm(x)
        n = max(3, int(2e8 / (out * inp * M)))
        t = time.perf_counter()
        for _ in range(n):
            mm(x)
        dt = (time.perf_counter() - t) / n
        gmacs = out * inp * M / dt / 1e9
        per_row = dt / M * 1e6
        if base is None:
            base = dt
        line += f"  M={M}: {per_row:.0f}us/row {gmacs:.1f}GMAC/s ({dt/base:.2f}x)"
    print(line, flush=True)
