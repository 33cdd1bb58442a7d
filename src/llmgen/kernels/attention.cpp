// One decode step's attention for one layer (float32 caches): RoPE on the new token's q and k, its k and
// v written into the caches, and the new query's attention over positions 0 .. pos. In PyTorch that is
// ~12 small tensor ops a layer (matmuls of a 64-wide head over a few hundred positions), each costing
// more in dispatch than in arithmetic; here it is one call (kernels/__init__.py).

#include <stdint.h>

#include <vector>

#include "fast_exp.h"
#include "kernels.h"

// heads: (n_heads + 2 n_kv_heads, head_dim), the new token's q, k and v heads, q and k turned in place.
// rope: (max_len, 2, head_dim / 2), each position's cos and sin for pairs (x[2j], x[2j + 1]); null for none.
// keys_t: (n_kv_heads, head_dim, max_len) and values: (n_kv_heads, max_len, head_dim), the caches.
// position: the new token's position (the step's position tensor, read here: no host round trip).
// window: attend to the last `window` positions only (Gemma's local layers); 0 for all of them.
// out: (n_heads, head_dim). Query head h uses KV head h / (n_heads / n_kv_heads) (grouped-query attention).
int32_t attention_step(float* heads, const float* rope, float* keys_t, float* values, const int64_t* position,
                       int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t max_len, int64_t window,
                       float scale, float* out, int32_t threads) {
  const int64_t pos = *position, half = head_dim / 2, group = n_heads / n_kv_heads;
  const int64_t first = window > 0 && pos >= window ? pos - window + 1 : 0, length = pos + 1 - first;
  if (pos < 0 || pos >= max_len) return -1;  // a write past the caches would corrupt memory
  if (rope) {
    const float *cos = rope + pos * head_dim, *sin = cos + half;
    for (int64_t h = 0; h < n_heads + n_kv_heads; h++) {
      float* x = heads + h * head_dim;
      for (int64_t j = 0; j < half; j++) {
        const float a = x[2 * j], b = x[2 * j + 1];
        x[2 * j] = a * cos[j] - b * sin[j];
        x[2 * j + 1] = a * sin[j] + b * cos[j];
      }
    }
  }
  for (int64_t kv = 0; kv < n_kv_heads; kv++) {
    const float* k = heads + (n_heads + kv) * head_dim;
    const float* v = heads + (n_heads + n_kv_heads + kv) * head_dim;
    for (int64_t d = 0; d < head_dim; d++) keys_t[(kv * head_dim + d) * max_len + pos] = k[d];
    for (int64_t d = 0; d < head_dim; d++) values[(kv * max_len + pos) * head_dim + d] = v[d];
  }

#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && n_heads * length * head_dim > 16384)
  for (int64_t h = 0; h < n_heads; h++) {
    static thread_local std::vector<float> scores;
    scores.assign(length, 0.f);
    float* s = scores.data();
    const float* q = heads + h * head_dim;
    const float* k_t = keys_t + (h / group) * head_dim * max_len + first;  // positions first .. pos
    for (int64_t d = 0; d < head_dim; d++) {  // s[t] = q . k[t], a row of k_t at a time (contiguous in t)
      const float qd = q[d] * scale;
      const float* k_row = k_t + d * max_len;
      for (int64_t t = 0; t < length; t++) s[t] += qd * k_row[t];
    }
    float top = s[0];
#pragma omp simd reduction(max : top)
    for (int64_t t = 1; t < length; t++) top = s[t] > top ? s[t] : top;
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < length; t++) {
      s[t] = fast_exp(s[t] - top);
      total += s[t];
    }
    float* y = out + h * head_dim;
    for (int64_t d = 0; d < head_dim; d++) y[d] = 0.f;
    const float* v = values + ((h / group) * max_len + first) * head_dim;
    for (int64_t t = 0; t < length; t++) {
      const float p = s[t] / total;
      for (int64_t d = 0; d < head_dim; d++) y[d] += p * v[t * head_dim + d];
    }
  }
  return 0;
}
