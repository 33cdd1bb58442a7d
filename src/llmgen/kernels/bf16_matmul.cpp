// y = x W^T for bfloat16 weights as a checkpoint stores them (kernels.h's QuantLayer with bits = 16):
// packed is W itself, (out_features, in_features) bf16 row-major, read in place from the memory-mapped
// file. Decoding a bf16 model is reading its weights once per token, so the kernel streams each row
// once and widens it to float32 in registers (a bf16 is a float32's upper 16 bits: a 16-bit shift), then
// multiplies by x in float32 with FMA. x is not rounded: each product is exact in float32 (8-bit by
// 24-bit mantissas), only the order of the sums differs between levels.
//   avx512: 16 weights a step (VPMOVZXWD + VPSLLD)
//   avx2:   8 weights a step
//   portable: one at a time
// Rows of W go four at a time (dot_rows_bf16); for several rows of x (a prompt), each block of W is read
// once and applied to every row of x.

#include <string.h>

#include "kernels.h"
#include "simd.h"

namespace {

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

// R rows of W against one x: R streams in flight, each load of x serving R rows. The kernel runs whole
// blocks of ROWS rows, and a matrix's last rows one at a time (R = 1).
constexpr int ROWS = 4;

template <int R>
void dot_rows_bf16(const uint16_t* w, int64_t stride, const float* x, int64_t n, float* totals) {
  int64_t i = 0;
#if defined(LLMGEN_AVX512)
  __m512 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
    for (int r = 0; r < R; r++) {
      const __m256i wv = _mm256_loadu_si256((const __m256i*)(w + r * stride + i));
      acc[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(wv), 16)), xv, acc[r]);
    }
  }
  for (int r = 0; r < R; r++) totals[r] = _mm512_reduce_add_ps(acc[r]);
#elif defined(LLMGEN_AVX2)
  __m256 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    for (int r = 0; r < R; r++) {
      const __m128i wv = _mm_loadu_si128((const __m128i*)(w + r * stride + i));
      acc[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(wv), 16)), xv, acc[r]);
    }
  }
  for (int r = 0; r < R; r++) totals[r] = sum8(acc[r]);
#else
  for (int r = 0; r < R; r++) totals[r] = 0.f;
#endif
  for (; i < n; i++)
    for (int r = 0; r < R; r++) totals[r] += bf16_to_float(w[r * stride + i]) * x[i];
}

}  // namespace

void bf16_matmul(const QuantLayer& layer, const float* x, int64_t rows, float* out, int64_t out_stride,
                 int32_t accumulate, int32_t threads) {
  const uint16_t* weights = (const uint16_t*)layer.packed;
  const int64_t in_features = layer.in_features, out_features = layer.out_features;
  const float* bias = layer.bias;
  const int64_t blocks = (out_features + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t first = ROWS * b, count = out_features - first < ROWS ? out_features - first : ROWS;
    const uint16_t* w = weights + first * in_features;
    for (int64_t m = 0; m < rows; m++) {
      float totals[ROWS];
      if (count == ROWS) {
        dot_rows_bf16<ROWS>(w, in_features, x + m * in_features, in_features, totals);
      } else {
        for (int64_t r = 0; r < count; r++)
          dot_rows_bf16<1>(w + r * in_features, in_features, x + m * in_features, in_features, totals + r);
      }
      for (int64_t r = 0; r < count; r++) {
        float* y = out + m * out_stride + first + r;
        *y = (accumulate ? *y : 0.f) + (bias ? bias[first + r] : 0.f) + totals[r];
      }
    }
  }
}
