// KVCache: the keys and values of one attention layer, kept across decode steps.
//
// Storage is a pool of pages of `page_size` tokens:
//   k pages [num_pages, page_size, kv_heads, head_dim]    (dtype)
//   v pages [num_pages, page_size, kv_heads, head_dim_v]  (dtype)
//   int8 only: k/v scales [num_pages, page_size, kv_heads] float32, one per
//   (token, kv head): value = scale * int8. On x86 CPUs with AVX2 or
//   AVX512-VNNI (the scores on AMX-INT8 tiles where present: the same
//   integers) the decode kernel computes with int8 caches in integer
//   arithmetic, q and the
//   probabilities as 16-bit fixed point: results within a stated bound of the
//   float computation, far below the int8 rounding itself (docs/design.md).
// Token j of sequence b lives in page block_table[b][j / page_size], slot
// j % page_size. A contiguous cache is the special case page_size = capacity
// with page b for sequence b ([batch, capacity, kv_heads, head_dim]).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "qkv/attention.h"
#include "qkv/detail/pool_buffer.h"
#include "qkv/rope.h"
#include "qkv/tensor.h"

namespace qkv {

struct KVCacheConfig {
  int64_t batch = 1;
  int64_t capacity = 0;    // max tokens per sequence
  int64_t kv_heads = 1;
  int64_t head_dim = 0;
  int64_t head_dim_v = 0;  // 0 = head_dim
  DType dtype = DType::kFloat16;  // float32, float16, bfloat16 or int8
  int64_t page_size = 0;   // 0 = contiguous; > 0 = paged
  int64_t num_pages = 0;   // paged: pages in the pool; 0 = batch * ceil(capacity / page_size)
};

class KVCache {
 public:
  // Allocates the pool (zeroed). Throws qkv::Error on a bad config.
  explicit KVCache(const KVCacheConfig& config);

  const KVCacheConfig& config() const { return config_; }
  bool paged() const { return config_.page_size > 0; }
  int64_t page_size() const { return page_size_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t pages_per_sequence() const { return pages_per_seq_; }

  // Tokens held by each sequence, [batch].
  const std::vector<int64_t>& lengths() const { return lengths_; }
  // Sets the lengths (e.g. to reuse or truncate a cache); each in [0, capacity].
  void set_lengths(const std::vector<int64_t>& lengths);

  // Paged caches: the page of each (sequence, page index), int32
  // [batch, pages_per_sequence], each entry in [0, num_pages). The default
  // maps sequence b to pages b * pages_per_sequence + i.
  void set_block_table(const std::vector<int32_t>& table);
  const std::vector<int32_t>& block_table() const { return block_table_; }

  // Appends k_new [batch, n, kv_heads, head_dim] and v_new [batch, n,
  // kv_heads, head_dim_v] (float32, float16 or bfloat16, any strides with a
  // contiguous innermost dimension) at each sequence's length, rotating the
  // keys by `rope` at positions length + t first when given; lengths grow by
  // n. Validates everything before writing: on error (past capacity,
  // mismatched shapes, ...) throws qkv::Error and the cache is unchanged.
  void append(const Tensor& k_new, const Tensor& v_new, const std::optional<Rope>& rope = {});

  // Token j of sequence b, widened to float: out [head_dim] / [head_dim_v].
  // For tests and tools; kernels read the pages directly.
  void read_key(int64_t b, int64_t j, int64_t kv_head, float* out) const;
  void read_value(int64_t b, int64_t j, int64_t kv_head, float* out) const;

  // Raw storage for kernels (internal layout above).
  const void* k_data() const { return k_.data(); }
  const void* v_data() const { return v_.data(); }
  const float* k_scales() const { return reinterpret_cast<const float*>(k_scale_.data()); }
  const float* v_scales() const { return reinterpret_cast<const float*>(v_scale_.data()); }
  // Element offset of token j of sequence b, kv head h, in the K (or V) pool.
  int64_t token_index(int64_t b, int64_t j) const {
    return static_cast<int64_t>(block_table_[b * pages_per_seq_ + j / page_size_]) * page_size_ +
           j % page_size_;
  }
  // Bytes of K and V storage (with scales) per token and kv head.
  int64_t bytes_per_token_head() const;

 private:
  KVCacheConfig config_;
  int64_t page_size_ = 0, num_pages_ = 0, pages_per_seq_ = 0;
  std::vector<int64_t> lengths_;
  std::vector<int32_t> block_table_;
  detail::PoolBuffer k_, v_;
  detail::PoolBuffer k_scale_, v_scale_;  // int8 only: float [slot]
};

// Attention against a cache, as FlashAttention's flash_attn_with_kvcache:
// append k_new/v_new (if given) at each sequence's length, rotating q and
// k_new by `rope` at positions length + t when given, then attend q over the
// cached tokens [0, length) of each sequence (after the append) with every
// option of AttentionParams (causal is bottom-right: the new queries are the
// last seq_q positions). On error nothing is written and the cache is unchanged.
struct KVCacheAttentionParams {
  Tensor q;                 // [batch, seq_q, heads, head_dim]; read only (rope rotates a copy)
  Tensor k_new, v_new;      // optional [batch, seq_q_new, kv_heads, head_dim(_v)]
  Tensor o;                 // [batch, seq_q, heads, head_dim_v]
  Tensor lse;               // optional [batch, heads, seq_q] float32
  KVCache* cache = nullptr;
  std::optional<Rope> rope;

  std::optional<float> scale;
  bool causal = false;
  Window window;
  float softcap = 0.0f;
  Tensor alibi_slopes;  // [heads] or [batch, heads]
  Tensor sinks;         // [heads]
  int num_threads = 0;
  Backend backend = Backend::kAuto;  // kReference, or the fastest kernel for the shape
  int num_splits = 0;   // decode: chunks of the sequence per (batch, kv head); 0 = auto
  bool exact_bf16_probs = false;  // as AttentionParams' (bfloat16 q over a bfloat16 cache)
};

void attention_with_kvcache(const KVCacheAttentionParams& params);

}  // namespace qkv
