// What llmgen's kernel files share: the C interface that kernels/__init__.py calls through ctypes.
#pragma once

#include <stdint.h>

// One 4-bit linear layer: everything int4_linear needs that does not change from call to call
// (kernels.Int4Layer mirrors it for ctypes; int4_matmul.cpp describes the packed layout).
struct Int4Layer {
  const uint8_t* packed;      // (out_features, padded_in / 2)
  const uint16_t* scales;     // (out_features, groups) fp16
  const uint16_t* minimums;   // (out_features, groups) fp16, or null: GGUF's Q4_0 form, minimum = -8 * scale
  int64_t groups;             // padded_in / 32: even
  int64_t in_features, out_features;
  const float* bias;          // (out_features,) or null
  const float* norm_weight;   // (in_features,): RMS-normalise each row of x and scale by this first; or null
  float norm_eps;
  int32_t gated;              // rows of x are [gate, up], 2 in_features wide: the input is silu(gate) * up
};

extern "C" {

// Which build of int4_matmul.cpp this library is: "avx512", "avx2" or "portable".
const char* kernel_level();

// out (rows, out_features) = prepare(x) W^T [+ bias] [+ out, when accumulate], float32 throughout.
void int4_linear(const Int4Layer* layer, const float* x, int64_t rows, float* out, int32_t accumulate,
                 int32_t threads);

// One decode step's attention for one layer; attention.cpp describes the arguments.
// Returns 0, or -1 (and does nothing) when the position is outside the caches.
int32_t attention_step(float* heads, const float* rope, float* keys_t, float* values, const int64_t* position,
                    int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t max_len, float scale,
                    float* out, int32_t threads);

}  // extern "C"
