// What the matmul kernels (int4_matmul.cpp, int8_matmul.cpp) share: which instruction set this build
// targets, chosen by the compiler flags kernels/__init__.py passes for a level, and fp16 -> float.
#pragma once

// LLMGEN_PORTABLE (the portable level) keeps the intrinsics out even where the compiler targets a CPU
// that has them, so that level can be tested on any machine.
#if defined(LLMGEN_PORTABLE)
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define LLMGEN_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LLMGEN_AVX2 1
#endif

#if defined(LLMGEN_AVX512) || defined(LLMGEN_AVX2)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>

inline float half_to_float(uint16_t h) {
#if defined(LLMGEN_AVX512) || defined(LLMGEN_AVX2)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  if (exponent == 0) return (sign ? -1.f : 1.f) * ldexpf((float)mantissa, -24);  // zero and subnormals
  const uint32_t bits = exponent == 31 ? sign | 0x7F800000u | (mantissa << 13)      // inf and NaN
                                       : sign | ((exponent + 112) << 23) | (mantissa << 13);
  return __builtin_bit_cast(float, bits);
#endif
}

#if defined(LLMGEN_AVX2)
inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

// x rounded to int8 in groups of `group` (16 or 32) floats, each group in steps of its amax / 127 (round
// to nearest even), as llama.cpp rounds activations for its integer dot products: x ~ q * scale.
// Writes q, the scale and scale * sum(q) of each group. Plain C++: the matmuls' cost is in the weights.
inline void round_group_int8(const float* x, int group, int8_t* q, float* scale, float* sum) {
  float amax = 0.f;
  for (int i = 0; i < group; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
  const float inverse = amax > 0.f ? 127.f / amax : 0.f;
  int32_t total = 0;
  for (int i = 0; i < group; i++) {
    const int32_t v = (int32_t)nearbyintf(x[i] * inverse);  // the default rounding mode: nearest even
    q[i] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
    total += v;
  }
  *scale = amax / 127.f;
  *sum = *scale * (float)total;
}
