// y = x W^T for 4-bit weights: llmgen's decode-time matmul (see kernels/__init__.py), in three builds of
// this one file, chosen by the compiler flags kernels/__init__.py passes for a level:
// - avx512: VPDPBUSD (AVX-512 VNNI), 64 byte products per instruction;
// - avx2: VPMADDUBSW + VPMADDWD, the same integer sums 32 bytes and two instructions at a time, as
//   llama.cpp does on AVX2;
// - portable: plain C++ the compiler vectorises for whatever it targets (older x86, ARM).
// All three compute the same integer dot products; only the order of the float sums differs.
//
// W is stored in GGUF's Q4_1 form: groups of 32 weights along the input, w = q * scale + minimum with
// q in 0..15 and an fp16 scale and minimum per group. Each row of x is rounded to int8 in groups of 32
// (x ~ xq * xscale, xq in -127..127), as llama.cpp does for its Q4 matmuls, so a group's dot product is
// an integer one:
//     sum(w * x) = scale * xscale * sum(q * xq) + minimum * xscale * sum(xq)
// Q4_K keeps its scales as it stores them (kernels.h): 6-bit integers per group under fp16 factors per
// 8 groups, 0.625 bits a weight where fp16 pairs take 1; the factors are multiplied in as they load.
// VPDPBUSD multiplies 64 unsigned bytes (q) by 64 signed bytes (xq) and adds each run of 4 products into
// one of 16 int32 lanes: 64 multiply-adds in one instruction, where PyTorch's int4 kernel converts every
// weight to float first.
//
// Byte layout of one packed row (pack_int4 in kernels/__init__.py writes it):
// - Whole chunks of 16 groups (512 weights, 256 bytes): lane j of every VPDPBUSD sums group j, so after
//   the chunk's 8 VPDPBUSDs lane j holds group j's whole integer dot product, and one multiply-add by the
//   16 groups' scales finishes the chunk. The chunk is 4 vectors of 64 bytes; byte 4j+i of vector u
//   holds q[group j][8u + i] in its low nibble and q[group j][8u + 4 + i] in its high nibble.
// - The groups after the last whole chunk, in pairs (an odd count gets an empty group): 32 bytes per
//   pair, byte i holding q[i] (low nibble) and q[32 + i] (high). One VPDPBUSD gives the pair's first
//   group in lanes 0-7 and its second in lanes 8-15.
// Each row of x is rounded into the same order once per call (round_input).

#include <math.h>
#include <string.h>

#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

constexpr int kGroup = 32;                     // weights per scale and minimum
constexpr int kChunkGroups = 16;               // groups per whole chunk: one per int32 lane
constexpr int kChunk = kGroup * kChunkGroups;  // 512 weights

struct RoundedInput {
  const int8_t* q;      // (rows, padded_in) in the packed weights' order
  const float* scales;  // (rows, groups): xscale
  const float* sums;    // (rows, groups): xscale * sum(xq)
};

// One group of 32 floats -> int8 steps of amax / 127 (round to nearest even), its scale and scale * sum(q).
inline void round_group(const float* x, int8_t* rounded, float* scale, float* sum) {
#if defined(LLMGEN_AVX512)
  __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
  float inverse = amax > 0.f ? 127.f / amax : 0.f;
  __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(inverse)));  // round to nearest even
  __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, _mm512_set1_ps(inverse)));
  _mm_storeu_si128((__m128i*)rounded, _mm512_cvtsepi32_epi8(qa));
  _mm_storeu_si128((__m128i*)(rounded + 16), _mm512_cvtsepi32_epi8(qb));
  *scale = amax / 127.f;
  *sum = *scale * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
#else
  round_group_int8(x, kGroup, rounded, scale, sum);
#endif
}

// One row of x (in_features floats) -> int8 in the weights' order, with its groups' scales and sums.
void round_input(const float* x, int64_t in_features, int64_t groups, int8_t* q, float* scales, float* sums) {
  const int64_t whole_chunks = groups / kChunkGroups;
  for (int64_t g = 0; g < groups; g++) {
    alignas(64) int8_t rounded[kGroup] = {0};
    float scale = 0.f, sum = 0.f;
    if (g * kGroup < in_features) round_group(x + g * kGroup, rounded, &scale, &sum);  // else: the pad group
    scales[g] = scale;
    sums[g] = sum;
    if (g < whole_chunks * kChunkGroups) {  // step t of the chunk, lane j: xq[group j][4t .. 4t + 3]
      int8_t* chunk = q + (g / kChunkGroups) * kChunk;
      const int64_t j = g % kChunkGroups;
      for (int t = 0; t < 8; t++) memcpy(chunk + t * 64 + 4 * j, rounded + 4 * t, 4);
    } else {  // pairs: natural order
      memcpy(q + g * kGroup, rounded, kGroup);
    }
  }
}

// Group s's scale and minimum (s counts groups over the whole matrix): fp16 as stored, Q4_0's implicit
// minimum -8 * scale, or Q4_K's two levels, an 8-bit value times its super-block's fp16 factor.
inline float scale_of(const QuantLayer& w, int64_t s) {
  if (w.super_scales) return half_to_float(w.super_scales[s / 8]) * (float)((const uint8_t*)w.scales)[s];
  return half_to_float(w.scales[s]);
}
inline float minimum_of(const QuantLayer& w, int64_t s) {
  if (w.super_scales) return half_to_float(w.super_minimums[s / 8]) * (float)((const uint8_t*)w.minimums)[s];
  return w.minimums ? half_to_float(w.minimums[s]) : -8.f * half_to_float(w.scales[s]);
}

#if defined(LLMGEN_AVX512)
// The scales and minimums of the 16 groups from s (a whole chunk: two super-blocks when two-level).
inline void chunk_scales(const QuantLayer& w, int64_t s, __m512* scales, __m512* minimums) {
  if (w.super_scales) {
    const __m512 d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(half_to_float(w.super_scales[s / 8])),
                                          _mm512_set1_ps(half_to_float(w.super_scales[s / 8 + 1])));
    const __m512 dmin = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(half_to_float(w.super_minimums[s / 8])),
                                             _mm512_set1_ps(half_to_float(w.super_minimums[s / 8 + 1])));
    const __m128i sc = _mm_loadu_si128((const __m128i*)((const uint8_t*)w.scales + s));
    const __m128i m = _mm_loadu_si128((const __m128i*)((const uint8_t*)w.minimums + s));
    *scales = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
    *minimums = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(m)));
    return;
  }
  *scales = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(w.scales + s)));
  *minimums = w.minimums ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(w.minimums + s)))
                         : _mm512_mul_ps(*scales, _mm512_set1_ps(-8.f));
}
#elif defined(LLMGEN_AVX2)
// The scales and minimums of the 8 groups from s (half a chunk: one super-block when two-level).
inline void half_chunk_scales(const QuantLayer& w, int64_t s, __m256* scales, __m256* minimums) {
  if (w.super_scales) {
    const __m128i sc = _mm_loadl_epi64((const __m128i*)((const uint8_t*)w.scales + s));
    const __m128i m = _mm_loadl_epi64((const __m128i*)((const uint8_t*)w.minimums + s));
    *scales = _mm256_mul_ps(_mm256_set1_ps(half_to_float(w.super_scales[s / 8])),
                            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc)));
    *minimums = _mm256_mul_ps(_mm256_set1_ps(half_to_float(w.super_minimums[s / 8])),
                              _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m)));
    return;
  }
  *scales = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w.scales + s)));
  *minimums = w.minimums ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w.minimums + s)))
                         : _mm256_mul_ps(*scales, _mm256_set1_ps(-8.f));
}
#endif

// R rows of W (starting at `row`) times one rounded row of x -> R floats.
#if defined(LLMGEN_AVX512)
template <int R>
inline void dot_rows(const QuantLayer& w, int64_t row, const RoundedInput& x, float* out) {
  const int64_t groups = w.groups, row_bytes = groups * kGroup / 2;
  const int64_t whole_chunks = groups / kChunkGroups;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();

  for (int64_t c = 0; c < whole_chunks; c++) {
    const int8_t* xq = x.q + c * kChunk;
    const __m512 x_scales = _mm512_loadu_ps(x.scales + c * kChunkGroups);
    const __m512 x_sums = _mm512_loadu_ps(x.sums + c * kChunkGroups);
    for (int r = 0; r < R; r++) {
      const uint8_t* packed = w.packed + (row + r) * row_bytes + c * (kChunk / 2);
      __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();  // two chains, for latency
      for (int u = 0; u < 4; u++) {
        const __m512i v = _mm512_loadu_si512(packed + 64 * u);
        even = _mm512_dpbusd_epi32(even, _mm512_and_si512(v, low), _mm512_loadu_si512(xq + 128 * u));
        odd = _mm512_dpbusd_epi32(odd, _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
                                  _mm512_loadu_si512(xq + 128 * u + 64));
      }
      __m512 scales, minimums;
      chunk_scales(w, (row + r) * groups + c * kChunkGroups, &scales, &minimums);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)), _mm512_mul_ps(scales, x_scales), acc[r]);
      acc[r] = _mm512_fmadd_ps(minimums, x_sums, acc[r]);
    }
  }

  // The pairs after the whole chunks: lanes 0-7 belong to the pair's first group, 8-15 to its second.
  float minimum_terms[R] = {0};
  for (int64_t g = whole_chunks * kChunkGroups; g < groups; g += 2) {
    const __m512i xq = _mm512_loadu_si512(x.q + g * kGroup);
    for (int r = 0; r < R; r++) {
      const __m256i v = _mm256_loadu_si256((const __m256i*)(w.packed + (row + r) * row_bytes + g * kGroup / 2));
      const __m512i q = _mm512_and_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1), low);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xq);
      const int64_t s = (row + r) * groups + g;
      const __m512 scales = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(scale_of(w, s) * x.scales[g]),
                                                 _mm512_set1_ps(scale_of(w, s + 1) * x.scales[g + 1]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scales, acc[r]);
      minimum_terms[r] += minimum_of(w, s) * x.sums[g] + minimum_of(w, s + 1) * x.sums[g + 1];
    }
  }
  for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(acc[r]) + minimum_terms[r];
}

// One row of W times M rounded rows of x -> M floats (out[m]): the GEMM step. Each chunk of the weight row
// is loaded, split into nibbles and its scales converted once, then used for all M rows of x; every
// (row of x, row of W) pair sums exactly what dot_rows<1> sums, in the same order, so a tile's results are
// bit-identical to M calls of it.
template <int M>
inline void dot_tile(const QuantLayer& w, int64_t row, const RoundedInput* x, float* out) {
  const int64_t groups = w.groups, row_bytes = groups * kGroup / 2;
  const int64_t whole_chunks = groups / kChunkGroups;
  const __m512i low = _mm512_set1_epi8(0x0F);
  const uint8_t* weights = w.packed + row * row_bytes;
  __m512 acc[M];
  for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();

  for (int64_t c = 0; c < whole_chunks; c++) {
    __m512i q_low[4], q_high[4];
    for (int u = 0; u < 4; u++) {
      const __m512i v = _mm512_loadu_si512(weights + c * (kChunk / 2) + 64 * u);
      q_low[u] = _mm512_and_si512(v, low);
      q_high[u] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
    __m512 scales, minimums;
    chunk_scales(w, row * groups + c * kChunkGroups, &scales, &minimums);
    for (int m = 0; m < M; m++) {
      const int8_t* xq = x[m].q + c * kChunk;
      __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
      for (int u = 0; u < 4; u++) {
        even = _mm512_dpbusd_epi32(even, q_low[u], _mm512_loadu_si512(xq + 128 * u));
        odd = _mm512_dpbusd_epi32(odd, q_high[u], _mm512_loadu_si512(xq + 128 * u + 64));
      }
      const __m512 x_scales = _mm512_loadu_ps(x[m].scales + c * kChunkGroups);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)), _mm512_mul_ps(scales, x_scales), acc[m]);
      acc[m] = _mm512_fmadd_ps(minimums, _mm512_loadu_ps(x[m].sums + c * kChunkGroups), acc[m]);
    }
  }

  float minimum_terms[M] = {0};
  for (int64_t g = whole_chunks * kChunkGroups; g < groups; g += 2) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(weights + g * kGroup / 2));
    const __m512i q = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1), low);
    const int64_t s = row * groups + g;
    const float scale0 = scale_of(w, s), scale1 = scale_of(w, s + 1);
    const float minimum0 = minimum_of(w, s), minimum1 = minimum_of(w, s + 1);
    for (int m = 0; m < M; m++) {
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(x[m].q + g * kGroup));
      const __m512 scales = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(scale0 * x[m].scales[g]),
                                                 _mm512_set1_ps(scale1 * x[m].scales[g + 1]));
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scales, acc[m]);
      minimum_terms[m] += fmaf(minimum1, x[m].sums[g + 1], minimum0 * x[m].sums[g]);
    }
  }
  for (int m = 0; m < M; m++) out[m] = _mm512_reduce_add_ps(acc[m]) + minimum_terms[m];
}
#define LLMGEN_INT4_TILE 1

#elif defined(LLMGEN_AVX2)
// Each 64-byte vector of a chunk is two 32-byte halves: groups 0-7 and 8-15. VPMADDUBSW multiplies the
// unsigned 4-bit q by the signed int8 xq and adds adjacent pairs into int16 (at most 2 * 15 * 127; a
// chunk's 8 steps sum to at most 30480, inside int16), VPMADDWD by ones adds pairs of those into the
// int32 lane of each group: the lanes VPDPBUSD fills on AVX-512.
template <int R>
inline void dot_rows(const QuantLayer& w, int64_t row, const RoundedInput& x, float* out) {
  const int64_t groups = w.groups, row_bytes = groups * kGroup / 2;
  const int64_t whole_chunks = groups / kChunkGroups;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();

  for (int64_t c = 0; c < whole_chunks; c++) {
    const int8_t* xq = x.q + c * kChunk;
    for (int half = 0; half < 2; half++) {  // groups 8 * half .. 8 * half + 7
      const __m256 x_scales = _mm256_loadu_ps(x.scales + c * kChunkGroups + 8 * half);
      const __m256 x_sums = _mm256_loadu_ps(x.sums + c * kChunkGroups + 8 * half);
      __m256i xs[8];
      for (int t = 0; t < 8; t++) xs[t] = _mm256_loadu_si256((const __m256i*)(xq + 64 * t + 32 * half));
      for (int r = 0; r < R; r++) {
        const uint8_t* packed = w.packed + (row + r) * row_bytes + c * (kChunk / 2) + 32 * half;
        __m256i pairs = _mm256_setzero_si256();  // int16
        for (int u = 0; u < 4; u++) {
          const __m256i v = _mm256_loadu_si256((const __m256i*)(packed + 64 * u));
          pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(_mm256_and_si256(v, low), xs[2 * u]));
          pairs = _mm256_add_epi16(
              pairs, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), xs[2 * u + 1]));
        }
        const __m256i dots = _mm256_madd_epi16(pairs, ones);  // int32: one group per lane
        __m256 scales, minimums;
        half_chunk_scales(w, (row + r) * groups + c * kChunkGroups + 8 * half, &scales, &minimums);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(scales, x_scales), acc[r]);
        acc[r] = _mm256_fmadd_ps(minimums, x_sums, acc[r]);
      }
    }
  }

  // The pairs after the whole chunks: low nibbles are the pair's first group, high nibbles its second.
  float minimum_terms[R] = {0};
  for (int64_t g = whole_chunks * kChunkGroups; g < groups; g += 2) {
    const __m256i xq0 = _mm256_loadu_si256((const __m256i*)(x.q + g * kGroup));
    const __m256i xq1 = _mm256_loadu_si256((const __m256i*)(x.q + g * kGroup + kGroup));
    for (int r = 0; r < R; r++) {
      const __m256i v = _mm256_loadu_si256((const __m256i*)(w.packed + (row + r) * row_bytes + g * kGroup / 2));
      const __m256i dot0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v, low), xq0), ones);
      const __m256i dot1 =
          _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), xq1), ones);
      const int64_t s = (row + r) * groups + g;
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot0), _mm256_set1_ps(scale_of(w, s) * x.scales[g]), acc[r]);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot1), _mm256_set1_ps(scale_of(w, s + 1) * x.scales[g + 1]), acc[r]);
      minimum_terms[r] += minimum_of(w, s) * x.sums[g] + minimum_of(w, s + 1) * x.sums[g + 1];
    }
  }
  for (int r = 0; r < R; r++) out[r] = sum8(acc[r]) + minimum_terms[r];
}

// One row of W times M rounded rows of x (see the AVX-512 dot_tile): each half-chunk of the weight row is
// split into nibbles and its scales converted once for all M rows; each pair sums what dot_rows<1> sums,
// in its order, so the results are bit-identical to it.
template <int M>
inline void dot_tile(const QuantLayer& w, int64_t row, const RoundedInput* x, float* out) {
  const int64_t groups = w.groups, row_bytes = groups * kGroup / 2;
  const int64_t whole_chunks = groups / kChunkGroups;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const uint8_t* weights = w.packed + row * row_bytes;
  __m256 acc[M];
  for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();

  for (int64_t c = 0; c < whole_chunks; c++) {
    for (int half = 0; half < 2; half++) {
      __m256i q[8];  // q[2u]: low nibbles of vector u's half, q[2u + 1]: its high nibbles
      for (int u = 0; u < 4; u++) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(weights + c * (kChunk / 2) + 32 * half + 64 * u));
        q[2 * u] = _mm256_and_si256(v, low);
        q[2 * u + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      }
      __m256 scales, minimums;
      half_chunk_scales(w, row * groups + c * kChunkGroups + 8 * half, &scales, &minimums);
      for (int m = 0; m < M; m++) {
        const int8_t* xq = x[m].q + c * kChunk + 32 * half;
        __m256i pairs = _mm256_setzero_si256();
        for (int u = 0; u < 4; u++) {
          pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(q[2 * u], _mm256_loadu_si256((const __m256i*)(xq + 128 * u))));
          pairs = _mm256_add_epi16(pairs,
                                   _mm256_maddubs_epi16(q[2 * u + 1], _mm256_loadu_si256((const __m256i*)(xq + 128 * u + 64))));
        }
        const __m256i dots = _mm256_madd_epi16(pairs, ones);
        const __m256 x_scales = _mm256_loadu_ps(x[m].scales + c * kChunkGroups + 8 * half);
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(scales, x_scales), acc[m]);
        acc[m] = _mm256_fmadd_ps(minimums, _mm256_loadu_ps(x[m].sums + c * kChunkGroups + 8 * half), acc[m]);
      }
    }
  }

  float minimum_terms[M] = {0};
  for (int64_t g = whole_chunks * kChunkGroups; g < groups; g += 2) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(weights + g * kGroup / 2));
    const __m256i q0 = _mm256_and_si256(v, low), q1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    const int64_t s = row * groups + g;
    const float scale0 = scale_of(w, s), scale1 = scale_of(w, s + 1);
    const float minimum0 = minimum_of(w, s), minimum1 = minimum_of(w, s + 1);
    for (int m = 0; m < M; m++) {
      const __m256i dot0 = _mm256_madd_epi16(
          _mm256_maddubs_epi16(q0, _mm256_loadu_si256((const __m256i*)(x[m].q + g * kGroup))), ones);
      const __m256i dot1 = _mm256_madd_epi16(
          _mm256_maddubs_epi16(q1, _mm256_loadu_si256((const __m256i*)(x[m].q + g * kGroup + kGroup))), ones);
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot0), _mm256_set1_ps(scale0 * x[m].scales[g]), acc[m]);
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot1), _mm256_set1_ps(scale1 * x[m].scales[g + 1]), acc[m]);
      minimum_terms[m] += fmaf(minimum1, x[m].sums[g + 1], minimum0 * x[m].sums[g]);
    }
  }
  for (int m = 0; m < M; m++) out[m] = sum8(acc[m]) + minimum_terms[m];
}
#define LLMGEN_INT4_TILE 1

#else
// Plain C++: the same sums, one group's 32 products at a time.
template <int R>
inline void dot_rows(const QuantLayer& w, int64_t row, const RoundedInput& x, float* out) {
  const int64_t groups = w.groups, row_bytes = groups * kGroup / 2;
  const int64_t whole_chunks = groups / kChunkGroups;
  for (int r = 0; r < R; r++) {
    const uint8_t* packed = w.packed + (row + r) * row_bytes;
    const int64_t s = (row + r) * groups;
    float total = 0.f;
    for (int64_t c = 0; c < whole_chunks; c++) {
      // 64 int16 lanes, byte b of each vector in lane b (group b / 4), as the vector builds do: an
      // element-wise loop the compiler vectorises. 8 products of at most 15 * 128 fit in int16.
      int16_t lanes[64] = {0};
      const uint8_t* p = packed + c * (kChunk / 2);
      const int8_t* xq = x.q + c * kChunk;
      for (int u = 0; u < 4; u++)
        for (int b = 0; b < 64; b++)
          lanes[b] += (int16_t)((p[64 * u + b] & 0x0F) * xq[128 * u + b] + (p[64 * u + b] >> 4) * xq[128 * u + 64 + b]);
      for (int j = 0; j < kChunkGroups; j++) {
        const int64_t g = c * kChunkGroups + j;
        const int32_t dot = lanes[4 * j] + lanes[4 * j + 1] + lanes[4 * j + 2] + lanes[4 * j + 3];
        total += (float)dot * (scale_of(w, s + g) * x.scales[g]) + minimum_of(w, s + g) * x.sums[g];
      }
    }
    for (int64_t g = whole_chunks * kChunkGroups; g < groups; g += 2) {
      const uint8_t* p = packed + g * kGroup / 2;
      const int8_t* xq = x.q + g * kGroup;
      int32_t dot0 = 0, dot1 = 0;
      for (int i = 0; i < kGroup; i++) {
        dot0 += (p[i] & 0x0F) * xq[i];
        dot1 += (p[i] >> 4) * xq[kGroup + i];
      }
      total += (float)dot0 * (scale_of(w, s + g) * x.scales[g]) + minimum_of(w, s + g) * x.sums[g];
      total += (float)dot1 * (scale_of(w, s + g + 1) * x.scales[g + 1]) + minimum_of(w, s + g + 1) * x.sums[g + 1];
    }
    out[r] = total;
  }
}
#endif

// out (rows, out_stride) = x W^T [+ bias] [+ out], R rows of W per step, the steps shared among threads.
template <int R>
void matmul_rows(const QuantLayer& layer, const RoundedInput& x, int64_t rows, float* out, int64_t out_stride,
                 int32_t accumulate, int32_t threads) {
  const int64_t out_features = layer.out_features, groups = layer.groups, padded_in = groups * kGroup;
  const float* bias = layer.bias;
  const int64_t tiles = (out_features + R - 1) / R;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t tile = 0; tile < tiles; tile++) {
    const int64_t n = tile * R;
    for (int64_t m = 0; m < rows; m++) {
      const RoundedInput xm{x.q + m * padded_in, x.scales + m * groups, x.sums + m * groups};
      float dots[R];
      const int count = out_features - n < R ? (int)(out_features - n) : R;
      if (count == R) {
        dot_rows<R>(layer, n, xm, dots);
      } else {
        for (int r = 0; r < count; r++) dot_rows<1>(layer, n + r, xm, dots + r);
      }
      float* y = out + m * out_stride + n;
      for (int r = 0; r < count; r++) y[r] = (accumulate ? y[r] : 0.f) + (bias ? bias[n + r] : 0.f) + dots[r];
    }
  }
}

#if defined(LLMGEN_INT4_TILE)
constexpr int kTileRows = 4;     // rows of x per dot_tile: each weight chunk unpacked once for them
constexpr int64_t kBlock = 16;   // rows of W a thread keeps hot (16 KB at 2048 inputs) while x streams past

template <int M>
inline void tile_into(const QuantLayer& layer, int64_t n, const RoundedInput* x, float* out, int64_t out_stride,
                      int32_t accumulate) {
  float dots[M];
  dot_tile<M>(layer, n, x, dots);
  const float bias = layer.bias ? layer.bias[n] : 0.f;
  for (int m = 0; m < M; m++) {
    float* y = out + m * out_stride + n;
    *y = (accumulate ? *y : 0.f) + bias + dots[m];  // as matmul_rows combines them
  }
}

// The GEMM path for rows > 1: blocks of kBlock rows of W, shared among threads; within a block, tiles of
// kTileRows rows of x, each row of W unpacked once per tile. The same sums as matmul_rows<1>, bit for bit.
void matmul_tiles(const QuantLayer& layer, const RoundedInput& x, int64_t rows, float* out, int64_t out_stride,
                  int32_t accumulate, int32_t threads) {
  const int64_t out_features = layer.out_features, groups = layer.groups, padded_in = groups * kGroup;
  const int64_t blocks = (out_features + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t block = 0; block < blocks; block++) {
    const int64_t first = block * kBlock, stop = first + kBlock < out_features ? first + kBlock : out_features;
    for (int64_t m0 = 0; m0 < rows; m0 += kTileRows) {
      const int count = rows - m0 < kTileRows ? (int)(rows - m0) : kTileRows;
      RoundedInput xs[kTileRows];
      for (int m = 0; m < count; m++)
        xs[m] = RoundedInput{x.q + (m0 + m) * padded_in, x.scales + (m0 + m) * groups, x.sums + (m0 + m) * groups};
      float* y = out + m0 * out_stride;
      for (int64_t n = first; n < stop; n++) {
        switch (count) {
          case 4: tile_into<4>(layer, n, xs, y, out_stride, accumulate); break;
          case 3: tile_into<3>(layer, n, xs, y, out_stride, accumulate); break;
          case 2: tile_into<2>(layer, n, xs, y, out_stride, accumulate); break;
          default: tile_into<1>(layer, n, xs, y, out_stride, accumulate); break;
        }
      }
    }
  }
}
#endif

int32_t gemm_enabled = 1;  // set_gemm: 0 keeps rows > 1 on the GEMV path (to compare the two)

}  // namespace

extern "C" void set_gemm(int32_t enabled) { gemm_enabled = enabled; }

extern "C" int32_t has_gemm() {
#if defined(LLMGEN_INT4_TILE)
  return 1;
#else
  return 0;
#endif
}

// x (rows, in_features), prepared by quant_linear (linear.cpp).
void int4_matmul(const QuantLayer& layer, const float* x, int64_t rows, float* out, int64_t out_stride,
                 int32_t accumulate, int32_t threads) {
  static thread_local std::vector<int8_t> q;
  static thread_local std::vector<float> x_scales, x_sums;
  const int64_t in_features = layer.in_features, groups = layer.groups, padded_in = groups * kGroup;
  q.resize(rows * padded_in);
  x_scales.resize(rows * groups);
  x_sums.resize(rows * groups);
  for (int64_t m = 0; m < rows; m++)
    round_input(x + m * in_features, in_features, groups, q.data() + m * padded_in, x_scales.data() + m * groups,
                x_sums.data() + m * groups);

  // One row of W per step: each thread then reads three streams (quants, scales, minimums), which the
  // hardware prefetchers follow at close to full bandwidth. Four rows per step (four independent chains,
  // each x vector loaded once for four rows) read twelve and lost a fifth of the bandwidth with AVX-512,
  // two fifths with AVX2, on matrices streaming from memory, and gained nothing on cached ones
  // (benchmarks/RESULTS.md).
  const RoundedInput rounded{q.data(), x_scales.data(), x_sums.data()};
#if defined(LLMGEN_INT4_TILE)
  if (rows > 1 && gemm_enabled) {
    matmul_tiles(layer, rounded, rows, out, out_stride, accumulate, threads);
    return;
  }
#endif
  matmul_rows<1>(layer, rounded, rows, out, out_stride, accumulate, threads);
}

const char* kernel_level() {
#if defined(LLMGEN_AVX512)
  return "avx512";
#elif defined(LLMGEN_AVX2)
  return "avx2";
#else
  return "portable";
#endif
}
