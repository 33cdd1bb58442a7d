// quant_linear: a quantized linear layer, or a fused one made of parts in different formats (a "Q4_K_M"
// block's q and k are 4-bit and its v 8-bit: one call computes [q, k, v] side by side). The input's
// per-row work (RMSNorm or SwiGLU, see kernels.h) is done once here, then each part's matmul
// (int4_matmul.cpp, int8_matmul.cpp) writes its columns of the output.

#include <math.h>
#include <stdint.h>

#include <vector>

#include "fast_exp.h"
#include "kernels.h"

namespace {

// The per-row work before rounding that a decode step would otherwise spend separate tensor ops on:
// RMSNorm (x / sqrt(mean(x^2) + eps) * weight), SwiGLU's silu(gate) * up or GeGLU's gelu(gate) * up.
void prepare_input(const QuantLayer& layer, const float* x, float* prepared) {
  const int64_t n = layer.in_features;
  if (layer.gated == GATED_SILU) {  // x is [gate (n), up (n)]
    const float *gate = x, *up = x + n;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) prepared[i] = gate[i] / (1.f + fast_exp(-gate[i])) * up[i];
  } else if (layer.gated == GATED_GELU_TANH) {  // Gemma: GELU's tanh approximation, as PyTorch computes it
    const float *gate = x, *up = x + n;
    for (int64_t i = 0; i < n; i++) {
      const float g = gate[i];
      prepared[i] = 0.5f * g * (1.f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g))) * up[i];
    }
  } else if (layer.norm_weight) {
    float squares = 0.f;
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < n; i++) squares += x[i] * x[i];
    const float inverse_rms = 1.f / sqrtf(squares / n + layer.norm_eps);
    for (int64_t i = 0; i < n; i++) prepared[i] = x[i] * inverse_rms * layer.norm_weight[i];
  }
}

}  // namespace

// x is (rows, in_features), or (rows, 2 in_features) for a gated layer. The parts share in_features; the
// first part's norm_weight / gated say how to prepare x.
void quant_linear(const QuantLayer* layer, const float* x, int64_t rows, float* out, int32_t accumulate,
                  int32_t threads) {
  static thread_local std::vector<float> prepared;
  const int64_t in_features = layer->in_features;
  if (layer->gated || layer->norm_weight) {
    const int64_t x_stride = layer->gated ? 2 * in_features : in_features;
    prepared.resize(rows * in_features);
    for (int64_t m = 0; m < rows; m++) prepare_input(*layer, x + m * x_stride, prepared.data() + m * in_features);
    x = prepared.data();
  }
  int64_t out_stride = 0;
  for (const QuantLayer* part = layer; part; part = part->next) out_stride += part->out_features;
  for (const QuantLayer* part = layer; part; part = part->next) {
    if (part->bits == 4) {
      int4_matmul(*part, x, rows, out, out_stride, accumulate, threads);
    } else if (part->bits == 16) {
      bf16_matmul(*part, x, rows, out, out_stride, accumulate, threads);
    } else {  // 8, or 6: Q6_K's blocks
      int8_matmul(*part, x, rows, out, out_stride, accumulate, threads);
    }
    out += part->out_features;
  }
}
