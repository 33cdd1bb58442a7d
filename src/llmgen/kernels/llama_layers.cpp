// All of a LLaMA's transformer blocks for one decode step, or a block of tokens, in one call
// (decode/llama.py kernel_step and kernel_block).
// The same loop in Python costs five ctypes calls a layer, ~5 us each of Python, ctypes and tensor
// allocation: about a tenth of a SmolLM2 step. Per block (a pre-norm transformer block):
//     heads = wqkv(attention_norm(x))          quant_linear, the norm folded in (then Qwen3's/Gemma's q/k norms)
//     y = attention(RoPE(heads), caches, pos)   attention_step, which also writes the caches
//     x += wo(y)                               quant_linear, accumulating into x
//     gate_up = w13(ffn_norm(x))
//     x += w2(silu(gate) * up)                 quant_linear, SwiGLU (or Gemma's GeGLU) folded in
// Gemma 3 also normalises wo's and w2's outputs before adding them (post_attention_norm, post_ffn_norm), and
// its local layers attend within a window with their own RoPE table.

#include <math.h>
#include <stdint.h>

#include <vector>

#include "kernels.h"

// One TransformerBlock (kernels.LlamaLayer mirrors it for ctypes).
struct LlamaLayer {
  QuantLayer qkv, wo, gate_up, down;  // qkv and gate_up with their RMSNorm, down gated; each with its parts
  float* keys_t;                     // (n_kv_heads, head_dim, max_len)
  float* values;                     // (n_kv_heads, max_len, head_dim)
  const float* q_norm;               // (head_dim,): Qwen3's RMSNorm over each q head before RoPE; or null
  const float* k_norm;               // (head_dim,): the same for each k head (set when q_norm is)
  float norm_eps;                    // the q/k norms' and post-norms' epsilon
  const float* post_attention_norm;  // (dim,): Gemma's RMSNorm on wo's output before it is added; or null
  const float* post_ffn_norm;        // (dim,): the same for w2's output (set when post_attention_norm is)
  const float* rope;                 // (max_len, 2, head_dim / 2): this layer's RoPE cos and sin
  int64_t window;                    // attend to the last `window` positions; 0: all
  float attention_scale;             // q.k scale (1 / sqrt(head_dim) for LLaMA)
};

// RMSNorm over each of `count` heads of head_dim floats, in place, times weight.
static void norm_heads(float* heads, int64_t count, int64_t head_dim, const float* weight, float eps) {
  for (int64_t h = 0; h < count; h++) {
    float* x = heads + h * head_dim;
    float squares = 0.f;
    for (int64_t d = 0; d < head_dim; d++) squares += x[d] * x[d];
    const float inverse_rms = 1.f / sqrtf(squares / head_dim + eps);
    for (int64_t d = 0; d < head_dim; d++) x[d] = x[d] * inverse_rms * weight[d];
  }
}

// x += norm(h) * weight: a post-norm's residual add.
static void add_normalized(float* x, const float* h, int64_t n, const float* weight, float eps) {
  float squares = 0.f;
  for (int64_t i = 0; i < n; i++) squares += h[i] * h[i];
  const float inverse_rms = 1.f / sqrtf(squares / n + eps);
  for (int64_t i = 0; i < n; i++) x[i] += h[i] * inverse_rms * weight[i];
}

// A tensor-parallel rank's all-reduce: data (n floats) summed over the ranks, in place (parallel/).
typedef void (*AllReduce)(float* data, int64_t n);

// One sublayer's output h (wo's or down's, dim floats, already summed over the ranks of a tensor-parallel
// shard) into the residual x, normalised first where the block has a post-norm (Gemma 3).
static void add_sublayer(float* x, const float* h, int64_t dim, const float* post_norm, float eps) {
  if (post_norm) {
    add_normalized(x, h, dim, post_norm, eps);
  } else {
    for (int64_t i = 0; i < dim; i++) x[i] += h[i];
  }
}

// x: (rows, dim), the residual streams of `rows` tokens, updated in place: one decode step when rows is 1, a
// prompt's chunk or a speculative check of one sequence, or the next tokens of several sequences at once
// (continuous batching, llmgen.batching). Row m is at positions[m] of cache slot slots[m] (slots null: all in
// slot 0); each layer's caches hold n_slots slots of (n_kv_heads, head_dim, max_len) keys and
// (n_kv_heads, max_len, head_dim) values, one after the other. Each matmul takes all the rows at once (the
// GEMM path, int4_matmul.cpp); row m's attention writes its keys and values at its position in its slot and
// reads that slot's positions up to it, rows in order, so a block of rows computes exactly, bit for bit, what
// as many one-row calls in order would (the matmuls are row by row the same arithmetic): a sequence's tokens
// do not depend on which others share its steps.
// Returns 0, or -1 (with x unchanged) when a position or slot is outside the caches. all_reduce: null but for
// a tensor-parallel shard's blocks.
extern "C" int32_t llama_decode_layers(const LlamaLayer* layers, int64_t n_layers, int64_t n_heads, int64_t n_kv_heads,
                                       int64_t head_dim, int64_t max_len, int64_t n_slots, float* x, int64_t rows,
                                       const int64_t* positions, const int64_t* slots, int32_t threads,
                                       AllReduce all_reduce) {
  if (rows < 1) return -1;
  for (int64_t m = 0; m < rows; m++) {
    if (positions[m] < 0 || positions[m] >= max_len) return -1;
    if (slots && (slots[m] < 0 || slots[m] >= n_slots)) return -1;
  }
  const int64_t slot_floats = n_kv_heads * head_dim * max_len;  // one slot of keys_t, or of values
  const int64_t heads_width = (n_heads + 2 * n_kv_heads) * head_dim, y_width = n_heads * head_dim;
  const int64_t dim = layers[0].wo.out_features;
  static thread_local std::vector<float> heads, y, gate_up, block_out;
  heads.resize(rows * heads_width);
  y.resize(rows * y_width);
  block_out.resize(rows * dim);
  for (int64_t i = 0; i < n_layers; i++) {
    const LlamaLayer& layer = layers[i];
    int64_t gate_up_width = 0;
    for (const QuantLayer* part = &layer.gate_up; part; part = part->next) gate_up_width += part->out_features;
    gate_up.resize(rows * gate_up_width);
    quant_linear(&layer.qkv, x, rows, heads.data(), 0, threads);
    for (int64_t m = 0; m < rows; m++) {
      float* row_heads = heads.data() + m * heads_width;
      if (layer.q_norm) {  // q heads, then k heads; v's are left as they are
        norm_heads(row_heads, n_heads, head_dim, layer.q_norm, layer.norm_eps);
        norm_heads(row_heads + n_heads * head_dim, n_kv_heads, head_dim, layer.k_norm, layer.norm_eps);
      }
      const int64_t slot_offset = slots ? slots[m] * slot_floats : 0;
      attention_step(row_heads, layer.rope, layer.keys_t + slot_offset, layer.values + slot_offset, positions + m,
                     n_heads, n_kv_heads, head_dim, max_len, layer.window, layer.attention_scale,
                     y.data() + m * y_width, threads);
    }
    if (layer.post_attention_norm || all_reduce) {
      quant_linear(&layer.wo, y.data(), rows, block_out.data(), 0, threads);
      if (all_reduce) all_reduce(block_out.data(), rows * dim);
      for (int64_t m = 0; m < rows; m++)
        add_sublayer(x + m * dim, block_out.data() + m * dim, dim, layer.post_attention_norm, layer.norm_eps);
    } else {
      quant_linear(&layer.wo, y.data(), rows, x, 1, threads);  // accumulated into x
    }
    quant_linear(&layer.gate_up, x, rows, gate_up.data(), 0, threads);
    if (layer.post_ffn_norm || all_reduce) {
      quant_linear(&layer.down, gate_up.data(), rows, block_out.data(), 0, threads);
      if (all_reduce) all_reduce(block_out.data(), rows * dim);
      for (int64_t m = 0; m < rows; m++)
        add_sublayer(x + m * dim, block_out.data() + m * dim, dim, layer.post_ffn_norm, layer.norm_eps);
    } else {
      quant_linear(&layer.down, gate_up.data(), rows, x, 1, threads);
    }
  }
  return 0;
}
