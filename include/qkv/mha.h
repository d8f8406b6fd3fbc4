// MultiHeadAttention: one attention layer (projections + attention), with
// grouped-query (GQA) and multi-query (MQA) attention by configuration.
//
// Shapes (glossary of include/qkv/attention.h; q_dim = heads * head_dim,
// kv_dim = kv_heads * head_dim, qkv_dim = q_dim + 2 * kv_dim):
//   x          [batch, seq, hidden]  float32 input
//   y          [batch, seq, hidden]  float32 output (may be x itself)
//   qkv_weight [hidden, qkv_dim]     fused projection; columns [0, q_dim) give q,
//                                    [q_dim, q_dim + kv_dim) k, the rest v; within
//                                    each, head h owns columns [h * head_dim, (h + 1) * head_dim)
//   qkv_bias   [qkv_dim]             optional
//   out_weight [q_dim, hidden]       output projection
//   out_bias   [hidden]              optional
// (torch.nn.MultiheadAttention: qkv_weight = in_proj_weight^T, out_weight =
// out_proj.weight^T.)
//
// forward(x):
//   qkv = x . qkv_weight + qkv_bias          [batch, seq, qkv_dim]
//   q, k, v = views of qkv                    [batch, seq, heads | kv_heads, head_dim]
//   no cache: RoPE (if configured) on q and k at positions 0 .. seq-1, then
//             o = attention(q, k, v)          (qkv::attention)
//   cache:    o = attention_with_kvcache(q, k_new = k, v_new = v, rope):
//             appends k, v to the cache at each sequence's length (RoPE at
//             positions length + t) and attends over all it holds. Prefill
//             into an empty cache and decode (seq = 1) are the same call.
//   y = o . out_weight + out_bias             o: [batch, seq, q_dim]
// Projections accumulate in float32; attention is qkv's exact attention.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "qkv/attention.h"
#include "qkv/kv_cache.h"
#include "qkv/rope.h"
#include "qkv/tensor.h"

namespace qkv {

struct MhaConfig {
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;  // 0 = heads (MHA); must divide heads; 1 = MQA
  int64_t head_dim = 0;  // 0 = hidden / heads
  // Storage of the projection weights: float32 or bfloat16. bfloat16 weights
  // are widened to float32 inside the matmul (products and sums in float32).
  // Biases are kept in float32 whatever this says.
  DType weight_dtype = DType::kFloat32;
  bool bias = false;  // qkv_bias and out_bias are given (and required)
  std::optional<Rope> rope;
  bool causal = true;  // bottom-right: with a cache, the new tokens are the last ones
  float softcap = 0.0f;
  Window window;
  std::optional<float> scale;  // default 1 / sqrt(head_dim)
};

// Views of the weights (float32, float16 or bfloat16, any non-negative
// strides); copied at construction, so they may be freed afterwards.
struct MhaWeights {
  Tensor qkv_weight;  // [hidden, qkv_dim]
  Tensor qkv_bias;    // [qkv_dim]; given iff config.bias
  Tensor out_weight;  // [heads * head_dim, hidden]
  Tensor out_bias;    // [hidden]; given iff config.bias
};

class MultiHeadAttention {
 public:
  // Validates the config and the weights' shapes; throws qkv::Error naming
  // the argument and the values. Weights are rounded to config.weight_dtype
  // (to nearest even) as they are copied.
  MultiHeadAttention(const MhaConfig& config, const MhaWeights& weights);

  // The config with the defaults resolved (kv_heads, head_dim).
  const MhaConfig& config() const { return config_; }
  int64_t qkv_dim() const { return (config_.heads + 2 * config_.kv_heads) * config_.head_dim; }

  // A KVCacheConfig that fits this layer (kv_heads, head_dim).
  KVCacheConfig cache_config(int64_t batch, int64_t capacity,
                             DType dtype = DType::kFloat16) const;

  // y = layer(x), see the top of this file. With a cache (batch and head
  // sizes matching the layer's), the new tokens are appended to it. Throws
  // qkv::Error naming the argument and shapes when the arguments are
  // inconsistent; then neither y nor the cache is changed. Thread-safe
  // (scratch is per call); num_threads: 0 = all the process may use.
  void forward(const Tensor& x, const Tensor& y, KVCache* cache = nullptr,
               int num_threads = 0) const;

 private:
  // A [rows, cols] row-major matrix in the layer's weight dtype.
  struct Matrix {
    int64_t rows = 0, cols = 0;
    DType dtype = DType::kFloat32;
    std::vector<float> f32;      // when dtype is float32
    std::vector<uint16_t> bf16;  // when dtype is bfloat16 (bits)
    const void* data() const;
  };
  static Matrix copy_matrix(const Tensor& t, const char* name, int64_t rows, int64_t cols,
                            DType dtype);
  static std::vector<float> copy_vector(const Tensor& t, const char* name, int64_t n);

  MhaConfig config_;
  Matrix qkv_weight_, out_weight_;
  std::vector<float> qkv_bias_, out_bias_;  // empty when !config.bias
};

}  // namespace qkv
