// y = x W^T for 8-bit weights in groups (kernels.h's QuantLayer with bits = 8): the kernel for the GGUF
// block types that are not 4-bit. Each of them stores a weight as a small integer times a scale per group
// (plus a minimum for Q5_1, Q5_K, Q2_K), so each is held here losslessly as int8 q, an fp16 scale and
// minimum per group of 16 or 32:
//     Q8_0  q in -128..127, groups of 32        Q5_1, Q5_K  q in 0..31 with a minimum, 32
//     Q5_0  q - 16 in -16..15, 32               Q3_K  q - 4 in -4..3, 16
//     Q2_K  q in 0..3 with a minimum, 16        IQ4_NL  its 16-entry table's values in -127..113, 32
// A byte per weight reads more than the file's 5.5-8.5 bits, but those types cover the minority of a
// "Q4_K_M" model, and one kernel serves all of them. Q6_K, which a "Q4_K_M" uses for attn_v, half of
// ffn_down and the head, has a path of its own at the end of this file (bits = 6) that reads its blocks
// at their own 6.56 bits a weight.
//
// Each row of x is rounded to int8 in the weights' groups (x ~ xq * xscale), so a group's dot product
// is an integer one:  sum(w * x) = scale * xscale * sum(q * xq) + minimum * xscale * sum(xq).
// Layout: row n of W is padded_in bytes (in_features rounded up to 64, the pad weights 0), groups in
// order. Both vector builds multiply 4 adjacent bytes into each int32 lane, so lane l of a 64-byte
// (AVX-512) or 32-byte (AVX2) step belongs to group 4l / group: a group of 16 fills 4 lanes, of 32 eight.
// The lanes are then scaled by their group's scale * xscale and summed in float.
//   avx512: VPDPBUSD multiplies unsigned by signed bytes: |q| times xq with q's sign, both exact.
//   avx2:   VPSIGNB + VPMADDUBSW + VPMADDWD, llama.cpp's AVX2 int8 dot product: |q| <= 128 and
//           |xq| <= 127, so a pair of products (<= 32512) cannot saturate int16.
//   portable: one group's products at a time.
// All three compute the same integer dot products; only the order of the float sums differs.

#include <string.h>

#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

struct RoundedRow {
  const int8_t* q;            // (padded_in,)
  const float* lane_scales;   // (padded_in / 4,): the xscale of each 4-byte lane's group
  const float* sums;          // (groups,): xscale * sum(xq)
};

void round_row(const float* x, int64_t in_features, const QuantLayer& w, int8_t* q, float* lane_scales,
               float* sums) {
  const int group = w.group;
  for (int64_t g = 0; g < w.groups; g++) {
    alignas(64) float padded[32] = {0};
    const int64_t first = g * group, count = in_features - first < group ? in_features - first : group;
    if (count > 0) memcpy(padded, x + first, count * sizeof(float));
    float scale;
    round_group_int8(padded, group, q + first, &scale, sums + g);
    for (int l = 0; l < group / 4; l++) lane_scales[first / 4 + l] = scale;
  }
}

// sum over groups of minimum[g] * xscale[g] * sum(xq[g])
inline float minimum_terms(const uint16_t* minimums, const float* sums, int64_t groups) {
  float total = 0.f;
  int64_t g = 0;
#if defined(LLMGEN_AVX512)
  __m512 acc = _mm512_setzero_ps();
  for (; g + 16 <= groups; g += 16)
    acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(minimums + g))),
                          _mm512_loadu_ps(sums + g), acc);
  total = _mm512_reduce_add_ps(acc);
#elif defined(LLMGEN_AVX2)
  __m256 acc = _mm256_setzero_ps();
  for (; g + 8 <= groups; g += 8)
    acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(minimums + g))),
                          _mm256_loadu_ps(sums + g), acc);
  total = sum8(acc);
#endif
  for (; g < groups; g++) total += half_to_float(minimums[g]) * sums[g];
  return total;
}

// One row of W times one rounded row of x, for groups of G (a constant, so that the scale loads are
// plain moves).
template <int G>
float dot_row(const QuantLayer& w, int64_t row, const RoundedRow& x) {
  const int64_t padded_in = w.groups * G;
  const int8_t* q = (const int8_t*)w.packed + row * padded_in;
  const uint16_t* scales = w.scales + row * w.groups;
  float total;
#if defined(LLMGEN_AVX512)
  // Lane l of a step takes scale l / 4 of its 4 groups (16) or l / 8 of its 2 (32).
  const __m512i expand = G == 16 ? _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0)
                                  : _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  constexpr int64_t per_step = 64 / G;
  const __m512i zero = _mm512_setzero_si512();
  __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};  // two chains, for latency
  for (int64_t b = 0; b < padded_in / 64; b++) {
    const __m512i wv = _mm512_loadu_si512(q + 64 * b), xv = _mm512_loadu_si512(x.q + 64 * b);
    const __m512i signed_x = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(wv), zero, xv);  // xq * sign(q)
    const __m512i dot = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(wv), signed_x);
    int64_t bits = 0;  // this step's 2 or 4 fp16 scales
    memcpy(&bits, scales + per_step * b, per_step * sizeof(uint16_t));  // a constant size: one load
    const __m512 w_scales = _mm512_permutexvar_ps(expand, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128(bits))));
    acc[b & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(w_scales, _mm512_loadu_ps(x.lane_scales + 16 * b)),
                                 acc[b & 1]);
  }
  total = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
#elif defined(LLMGEN_AVX2)
  const __m256i ones = _mm256_set1_epi16(1), expand = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t b = 0; b < padded_in / 32; b++) {
    const __m256i wv = _mm256_loadu_si256((const __m256i*)(q + 32 * b));
    const __m256i xv = _mm256_loadu_si256((const __m256i*)(x.q + 32 * b));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
    const __m256i dot = _mm256_madd_epi16(pairs, ones);
    __m256 w_scales;
    if (G == 16) {  // lanes 0-3: group 2b, 4-7: group 2b + 1
      int32_t bits;
      memcpy(&bits, scales + 2 * b, sizeof(bits));
      w_scales = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))), expand);
    } else {
      w_scales = _mm256_set1_ps(half_to_float(scales[b]));
    }
    acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(w_scales, _mm256_loadu_ps(x.lane_scales + 8 * b)),
                                 acc[b & 1]);
  }
  total = sum8(_mm256_add_ps(acc[0], acc[1]));
#else
  total = 0.f;
  for (int64_t g = 0; g < w.groups; g++) {
    int32_t dot = 0;
    for (int i = 0; i < G; i++) dot += (int32_t)q[g * G + i] * x.q[g * G + i];
    total += (float)dot * (half_to_float(scales[g]) * x.lane_scales[g * G / 4]);
  }
#endif
  if (w.minimums) total += minimum_terms(w.minimums + row * w.groups, x.sums, w.groups);
  return total;
}

// --- Q6_K, repacked (bits = 6) -------------------------------------------------------------------------
// Q6_K stores w = d * scale * (q - 32), q in 0..63, an int8 scale per group of 16 and an fp16 d per 256.
// kernels.pack_q6_k rearranges each 210-byte block (same size, nothing lost) so that the group sums come
// out in the lanes, as in the int4 layout: step t (0..3) of a block is 64 q values, byte 4j + i holding
// q[group j][4t + i], so lane j of VPDPBUSD sums group j and after 4 steps holds its whole dot product.
//   bytes   0..127: low nibbles; step t's in vector t / 2 (64 bytes), low nibble for even t, high for odd
//   bytes 128..191: high 2 bits; step t's in bits 2t, 2t + 1 of each byte
//   bytes 192..207: the 16 int8 scales; 208..209: d (fp16)
// x is rounded per group of 16 into the same order (round_row_q6_k). q is unsigned, so VPDPBUSD and
// VPMADDUBSW take it as it is, and the -32 becomes a minimum of -32 * scale per group:
//     sum(w * x) = sum over groups of d * scale * xscale * (sum(q * xq) - 32 * sum(xq)).
// A byte per weight as int8 would read 9 bits a weight; this reads the file's 6.56.
constexpr int64_t kQ6KBytes = 210, kQ6KWeights = 256, kQ6KGroups = 16;

inline float half_to_float_at(const uint8_t* p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return half_to_float(h);
}

// One row of x -> int8 in the repacked blocks' order, each group's scale (in `scales`) and scale * sum(q).
void round_row_q6_k(const float* x, int64_t in_features, int8_t* q, float* scales, float* sums) {
  for (int64_t g = 0; g < in_features / 16; g++) {
    alignas(64) int8_t rounded[16];
    round_group_int8(x + 16 * g, 16, rounded, scales + g, sums + g);
    int8_t* block = q + (g / kQ6KGroups) * kQ6KWeights;
    const int64_t j = g % kQ6KGroups;
    for (int t = 0; t < 4; t++) memcpy(block + 64 * t + 4 * j, rounded + 4 * t, 4);
  }
}

float dot_row_q6_k(const QuantLayer& w, int64_t row, const int8_t* xq, const float* x_scales, const float* x_sums) {
  const int64_t blocks = w.in_features / kQ6KWeights;
  const uint8_t* block = w.packed + row * blocks * kQ6KBytes;
#if defined(LLMGEN_AVX512)
  const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(0x30), zero = _mm512_setzero_si512();
  __m512 acc = _mm512_setzero_ps(), minimums = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; b++, block += kQ6KBytes, xq += kQ6KWeights) {
    const __m512i v0 = _mm512_loadu_si512(block), v1 = _mm512_loadu_si512(block + 64);
    const __m512i u = _mm512_loadu_si512(block + 128);
    const __m512i q0 = _mm512_or_si512(_mm512_and_si512(v0, low), _mm512_and_si512(_mm512_slli_epi16(u, 4), high));
    const __m512i q1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v0, 4), low),
                                       _mm512_and_si512(_mm512_slli_epi16(u, 2), high));
    const __m512i q2 = _mm512_or_si512(_mm512_and_si512(v1, low), _mm512_and_si512(u, high));
    const __m512i q3 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v1, 4), low),
                                       _mm512_and_si512(_mm512_srli_epi16(u, 2), high));
    __m512i even = _mm512_dpbusd_epi32(zero, q0, _mm512_loadu_si512(xq));
    __m512i odd = _mm512_dpbusd_epi32(zero, q1, _mm512_loadu_si512(xq + 64));
    even = _mm512_dpbusd_epi32(even, q2, _mm512_loadu_si512(xq + 128));
    odd = _mm512_dpbusd_epi32(odd, q3, _mm512_loadu_si512(xq + 192));
    const __m512 scales = _mm512_mul_ps(_mm512_set1_ps(half_to_float_at(block + 208)),
                                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(block + 192)))));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)),
                          _mm512_mul_ps(scales, _mm512_loadu_ps(x_scales + kQ6KGroups * b)), acc);
    minimums = _mm512_fmadd_ps(scales, _mm512_loadu_ps(x_sums + kQ6KGroups * b), minimums);
  }
  return _mm512_reduce_add_ps(acc) - 32.f * _mm512_reduce_add_ps(minimums);
#elif defined(LLMGEN_AVX2)
  // Each 64-byte vector is two halves: groups 0-7 in its first 32 bytes, 8-15 in the rest. VPMADDUBSW's
  // pairs (<= 2 * 63 * 127) fit int16; VPMADDWD by ones adds them into group j's int32 lane.
  const __m256i low = _mm256_set1_epi8(0x0F), high = _mm256_set1_epi8(0x30), ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps(), minimums = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; b++, block += kQ6KBytes, xq += kQ6KWeights) {
    const float d = half_to_float_at(block + 208);
    for (int half = 0; half < 2; half++) {
      const __m256i v0 = _mm256_loadu_si256((const __m256i*)(block + 32 * half));
      const __m256i v1 = _mm256_loadu_si256((const __m256i*)(block + 64 + 32 * half));
      const __m256i u = _mm256_loadu_si256((const __m256i*)(block + 128 + 32 * half));
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(v0, low), _mm256_and_si256(_mm256_slli_epi16(u, 4), high)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v0, 4), low), _mm256_and_si256(_mm256_slli_epi16(u, 2), high)),
          _mm256_or_si256(_mm256_and_si256(v1, low), _mm256_and_si256(u, high)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v1, 4), low), _mm256_and_si256(_mm256_srli_epi16(u, 2), high))};
      __m256i dot = _mm256_setzero_si256();
      for (int t = 0; t < 4; t++) {
        const __m256i x = _mm256_loadu_si256((const __m256i*)(xq + 64 * t + 32 * half));
        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(_mm256_maddubs_epi16(q[t], x), ones));
      }
      const __m128i sc = _mm_loadl_epi64((const __m128i*)(block + 192 + 8 * half));
      const __m256 scales = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
      const int64_t g = kQ6KGroups * b + 8 * half;
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(scales, _mm256_loadu_ps(x_scales + g)), acc);
      minimums = _mm256_fmadd_ps(scales, _mm256_loadu_ps(x_sums + g), minimums);
    }
  }
  return sum8(acc) - 32.f * sum8(minimums);
#else
  float total = 0.f;
  for (int64_t b = 0; b < blocks; b++, block += kQ6KBytes, xq += kQ6KWeights) {
    const float d = half_to_float_at(block + 208);
    const int8_t* sc = (const int8_t*)(block + 192);
    for (int j = 0; j < kQ6KGroups; j++) {
      int32_t dot = 0;
      for (int t = 0; t < 4; t++)
        for (int i = 0; i < 4; i++) {
          const int byte = 4 * j + i;
          const int q = ((block[64 * (t / 2) + byte] >> (4 * (t % 2))) & 0x0F) | (((block[128 + byte] >> (2 * t)) & 3) << 4);
          dot += (q - 32) * xq[64 * t + byte];
        }
      total += (float)dot * (d * (float)sc[j] * x_scales[kQ6KGroups * b + j]);
    }
  }
  return total;
#endif
}

}  // namespace

void int8_matmul(const QuantLayer& layer, const float* x, int64_t rows, float* out, int64_t out_stride,
                 int32_t accumulate, int32_t threads) {
  static thread_local std::vector<int8_t> q;
  static thread_local std::vector<float> lane_scales, sums;
  const int64_t padded_in = layer.groups * layer.group, groups = layer.groups, out_features = layer.out_features;
  q.resize(rows * padded_in);
  lane_scales.resize(rows * padded_in / 4);
  sums.resize(rows * groups);
  for (int64_t m = 0; m < rows; m++) {
    if (layer.bits == 6)  // the group scales go where the lane scales would (groups <= padded_in / 4)
      round_row_q6_k(x + m * layer.in_features, layer.in_features, q.data() + m * padded_in,
                     lane_scales.data() + m * padded_in / 4, sums.data() + m * groups);
    else
      round_row(x + m * layer.in_features, layer.in_features, layer, q.data() + m * padded_in,
                lane_scales.data() + m * padded_in / 4, sums.data() + m * groups);
  }
  // The buffers are this thread's (thread_local): the OpenMP threads get pointers into them.
  const int8_t* x_q = q.data();
  const float *x_lane_scales = lane_scales.data(), *x_sums = sums.data(), *bias = layer.bias;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t n = 0; n < out_features; n++) {
    for (int64_t m = 0; m < rows; m++) {
      const RoundedRow xm{x_q + m * padded_in, x_lane_scales + m * padded_in / 4, x_sums + m * groups};
      float* y = out + m * out_stride + n;
      const float dot = layer.bits == 6      ? dot_row_q6_k(layer, n, xm.q, xm.lane_scales, xm.sums)
                        : layer.group == 16 ? dot_row<16>(layer, n, xm)
                                            : dot_row<32>(layer, n, xm);
      *y = (accumulate ? *y : 0.f) + (bias ? bias[n] : 0.f) + dot;
    }
  }
}
