// What llmgen's kernel files share: the C interface that kernels/__init__.py calls through ctypes.
#pragma once

#include <stdint.h>

// One quantized linear layer, or one part of a fused one: everything quant_linear needs that does not
// change from call to call (kernels.QuantLayer mirrors it for ctypes).
// - 4 bits (int4_matmul.cpp): w = q * scale + minimum, q in 0..15, groups of 32 (GGUF's Q4_0, Q4_1 and
//   the sub-blocks of Q4_K), packed in int4_matmul.cpp's layout.
// - 8 bits (int8_matmul.cpp): w = q * scale [+ minimum], q int8, groups of 16 or 32 (Q8_0, Q5_0, Q5_1,
//   Q5_K, Q3_K, Q2_K, IQ4_NL: each holds its weights as small integers times a scale per group).
// - 6 bits (int8_matmul.cpp): GGUF Q6_K blocks as stored, in `packed`; groups = in_features / 16, group 16,
//   no scales or minimums here (each block carries its own).
// - 16 bits (bf16_matmul.cpp): bfloat16 weights as a checkpoint stores them, (out_features, in_features)
//   row-major in `packed`; no groups, scales or minimums.
enum { GATED_SILU = 1, GATED_GELU_TANH = 2 };

struct QuantLayer {
  const uint8_t* packed;      // 4 bits: (out_features, padded_in / 2); 8 bits: (out_features, padded_in) int8
  const uint16_t* scales;     // (out_features, groups) fp16; uint8 when super_scales is set
  const uint16_t* minimums;   // (out_features, groups) fp16, or null: 4 bits -8 * scale (Q4_0), 8 bits none;
                              // uint8 when super_scales is set
  // 4 bits only, or null: Q4_K's two levels. A group's scale is scales[g] * super_scales[g / 8] and its
  // minimum minimums[g] * super_minimums[g / 8], with scales and minimums 6-bit integers (uint8) and
  // groups a multiple of 8 (one super-block of 256 weights per pair of factors).
  const uint16_t* super_scales;    // (out_features, groups / 8) fp16
  const uint16_t* super_minimums;  // (out_features, groups / 8) fp16
  int64_t groups;             // padded_in / group
  int64_t in_features, out_features;
  const float* bias;          // (out_features,) or null
  const float* norm_weight;   // (in_features,): RMS-normalise each row of x and scale by this first; or null
  float norm_eps;
  int32_t gated;              // GATED_*: rows of x are [gate, up], 2 in_features wide: the input is
                              // silu(gate) * up, or gelu(gate) * up (tanh approximation); 0: not gated
  int32_t bits;               // 4, 8, 6 or 16
  int32_t group;              // weights per scale: 32, or 16 (8 bits only)
  const QuantLayer* next;     // a fused layer's next part, its outputs after this one's (same input); or null
};

// The matmul of one part: out (rows, out_stride), columns 0 .. out_features, = x W^T [+ bias] [+ out],
// x (rows, in_features) already prepared (normalised or gated by quant_linear).
void int4_matmul(const QuantLayer& layer, const float* x, int64_t rows, float* out, int64_t out_stride,
                 int32_t accumulate, int32_t threads);
void int8_matmul(const QuantLayer& layer, const float* x, int64_t rows, float* out, int64_t out_stride,
                 int32_t accumulate, int32_t threads);
void bf16_matmul(const QuantLayer& layer, const float* x, int64_t rows, float* out, int64_t out_stride,
                 int32_t accumulate, int32_t threads);

extern "C" {

// Which build of the kernels this library is: "avx512", "avx2" or "portable".
const char* kernel_level();

// Whether this build has the 4-bit GEMM path for inputs of several rows (int4_matmul.cpp: avx512, avx2), and
// turning it off (0) or on: off, every row of x runs the one-row GEMV path, the reference it is tested against.
int32_t has_gemm();
void set_gemm(int32_t enabled);

// out (rows, sum of the parts' out_features) = prepare(x) W^T [+ bias] [+ out, when accumulate], float32
// throughout, over a layer and the parts chained to it (linear.cpp).
void quant_linear(const QuantLayer* layer, const float* x, int64_t rows, float* out, int32_t accumulate,
                  int32_t threads);

// One decode step's attention for one layer; attention.cpp describes the arguments.
// Returns 0, or -1 (and does nothing) when the position is outside the caches.
int32_t attention_step(float* heads, const float* rope, float* keys_t, float* values, const int64_t* position,
                       int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t max_len, int64_t window,
                       float scale, float* out, int32_t threads);

}  // extern "C"
