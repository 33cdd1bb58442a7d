"""llmgen's own CPU kernels, in C++ (this directory), built on first use: what a decode step spends
its time on.

- int4_matmul.cpp: y = x W^T for 4-bit weights (GGUF's Q4_1 form). Decoding a small model reads weights
  that mostly stay in the CPU's caches, so its speed is set by how fast the kernel turns 4-bit weights
  into dot products. PyTorch's CPU int4 kernel converts every weight to float; this one rounds the
  activations to int8 and multiplies bytes, 64 per instruction with AVX-512 VNNI, 32 per two
  instructions with AVX2, as llama.cpp does.
- int8_matmul.cpp: the same for 8-bit weights in groups of 16 or 32: the GGUF block types that are not
  4-bit (Q8_0, Q5_x, Q6_K, ...), held losslessly as int8 and a scale per group.
- linear.cpp: one layer's call: it can RMS-normalise its input or take SwiGLU's silu(gate) * up first,
  add its result into the residual stream, and run parts in different formats side by side.
- attention.cpp: one decode step's attention for one layer (RoPE, cache writes, softmax attention), one
  call instead of a dozen tensor ops that each cost more in dispatch than in arithmetic.
- llama_layers.cpp: all of a LLaMA's blocks for one token in one call (decode/llama.py's kernel_step).
The numbers are in benchmarks/RESULTS.md.

The package's modules: build.py (the level and its library: compiled, verified, loaded), abi.py (the C
structs and signatures), packing.py (weights into the kernels' layouts), calls.py (the calls, each
checking what C++ trusts). Callers use the names below, the one typed boundary to the C++ side.

Levels: the same sources are built for the best instruction set the CPU has (LEVELS: avx512 with VNNI,
avx2, or portable C++ for anything else, ARM included), and LLMGEN_KERNELS=avx512|avx2|portable forces
a level the CPU supports, so every level can be tested on any machine able to run it. Without a C++
compiler, or with LLMGEN_KERNELS=0, models use PyTorch's kernels and ops instead (same results, within
rounding; tests/kernels/test_kernels.py).

Each level's library is compiled once per machine (a few seconds) into llmgen's data directory, named by
a hash of the sources, the compiler, the level and the CPU, and called through ctypes: plain pointers,
no Python objects, so no torch headers to compile against. Its OpenMP threads are PyTorch's: torch
loads libgomp first, and the library links the same libgomp.so.1.
"""

from llmgen.kernels.build import (
                                    LEVELS,
                                    Level,
                                    level,
                                    library,
                                    matmul_path,
                                    missing_features,
                                    selected,
                                    supported_levels,
                                    unavailable_reason,
)
from llmgen.kernels.calls import AttentionStep, BlockKernels, Int4Matmul, LlamaLayers, QuantMatmul
from llmgen.kernels.packing import (
                                    GROUP,
                                    INT8_GROUPS,
                                    Packed,
                                    PackedBf16,
                                    PackedInt4,
                                    PackedInt8,
                                    PackedQ6K,
                                    pack_int4,
                                    pack_int8,
                                    pack_q4_blocks,
                                    pack_q6_k,
                                    unpack_q6_k,
)

__all__ = ["GROUP", "INT8_GROUPS", "LEVELS", "AttentionStep", "BlockKernels", "Int4Matmul", "Level", "LlamaLayers",
           "Packed", "PackedBf16", "PackedInt4", "PackedInt8", "PackedQ6K", "QuantMatmul", "level", "library",
           "matmul_path",           "missing_features", "pack_int4", "pack_int8", "pack_q4_blocks", "pack_q6_k", "selected", "supported_levels",
           "unavailable_reason", "unpack_q6_k"]
