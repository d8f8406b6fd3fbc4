// AttentionProblem: a validated, normalized description of one attention call.
// Built once at the API boundary (validate.cpp); kernels trust it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "qkv/attention.h"
#include "qkv/kv_cache.h"

namespace qkv::internal {

// Strides in elements of a [batch, seq, heads, dim] tensor whose innermost
// dimension is contiguous.
struct Bshd {
  int64_t batch = 0, seq = 0, head = 0;
  int64_t offset(int64_t b, int64_t s, int64_t h) const {
    return b * batch + s * seq + h * head;
  }
};

struct AttentionProblem {
  // Sizes (see include/qkv/attention.h for the glossary).
  int64_t batch = 0, seq_q = 0, seq_kv = 0, heads = 0, kv_heads = 0;
  int64_t head_dim = 0, head_dim_v = 0, group = 0;  // group = heads / kv_heads

  DType dtype = DType::kFloat32;  // of q and o (and of k, v unless kv_dtype differs)
  DType kv_dtype = DType::kFloat32;  // of k and v: also int8 when they come from a cache
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  Bshd q_stride, k_stride, v_stride, o_stride;

  // K/V from a (paged) cache instead of k/v tensors: token j of batch b is
  // entry cache->token_index(b, j) of the pools; int8 rows carry a scale.
  const KVCache* cache = nullptr;
  // Keys of batch b: [0, kv_len[b]) (cache lengths); nullptr = seq_kv for all.
  const int64_t* kv_len = nullptr;

  float* lse = nullptr;  // optional [batch, heads, seq_q]
  int64_t lse_stride_b = 0, lse_stride_h = 0, lse_stride_s = 0;

  float scale = 1.0f;
  float softcap = 0.0f;  // 0 = off

  // Visibility, as an inclusive interval of keys per query row, from the
  // causal and window options (the explicit mask comes on top).
  bool causal = false;
  CausalAlign causal_align = CausalAlign::kBottomRight;
  int64_t window_left = -1, window_right = -1;

  const float* alibi = nullptr;  // slope of (b, h) = alibi[b * alibi_stride_b + h * alibi_stride_h]
  int64_t alibi_stride_b = 0, alibi_stride_h = 0;
  const float* sinks = nullptr;  // sinks[h * sinks_stride]
  int64_t sinks_stride = 0;

  // Mask broadcast to [batch, heads, seq_q, seq_kv]: stride 0 on broadcast dims.
  const void* mask = nullptr;
  DType mask_dtype = DType::kBool;
  int64_t mask_stride[4] = {0, 0, 0, 0};

  int num_threads = 1;  // resolved: >= 1
  Tiling tiling;
  bool exact_bf16_probs = false;  // AttentionParams::exact_bf16_probs

  // Keys of batch b.
  int64_t keys(int64_t b) const { return kv_len ? kv_len[b] : seq_kv; }
  // Bytes of o's elements: [batch, seq_q, heads, head_dim_v] in dtype.
  int64_t o_bytes() const {
    return batch * seq_q * heads * head_dim_v * static_cast<int64_t>(dtype_size(dtype));
  }
  // Offset that aligns query i with key i + diag (bottom-right alignment).
  int64_t diag(int64_t b) const { return keys(b) - seq_q; }

  // First visible key for query row i of batch b (may exceed key_hi: row empty).
  int64_t key_lo(int64_t b, int64_t i) const {
    int64_t lo = 0;
    if (window_left >= 0) lo = std::max(lo, i + diag(b) - window_left);
    return lo;
  }
  // Last visible key for query row i of batch b (may be < 0: row empty).
  int64_t key_hi(int64_t b, int64_t i) const {
    int64_t hi = keys(b) - 1;
    if (window_right >= 0) hi = std::min(hi, i + diag(b) + window_right);
    if (causal) {
      hi = std::min(hi, causal_align == CausalAlign::kBottomRight ? i + diag(b) : i);
    }
    return hi;
  }

  // Key (or value) j of batch b, kv head h: where its row starts and the
  // factor that turns stored values into real ones (1 unless int8).
  struct Row {
    const void* data;
    float scale;
  };
  Row key_row(int64_t b, int64_t j, int64_t h) const;
  Row value_row(int64_t b, int64_t j, int64_t h) const;
  // The rows of every kv head of token j of batch b: kv head h's row starts
  // at data + h * head_bytes and its scale is scales[h] (1 when scales is null).
  struct TokenRows {
    const char* data;
    const float* scales;
    int64_t head_bytes;
    Row row(int64_t h) const { return {data + h * head_bytes, scales ? scales[h] : 1.0f}; }
  };
  // The rows of keys j0 .. j0 + n - 1 of batch b (walks the pages: no
  // division per token); values may be null when only the keys are wanted.
  // Returns whether the n tokens lie back to back with their kv heads' rows
  // adjacent: the keys' rows (and the values', and an int8 cache's scales)
  // one contiguous run each, token by token and head by head.
  bool tokens(int64_t b, int64_t j0, int64_t n, TokenRows* keys, TokenRows* values) const;
  bool has_alibi() const { return alibi != nullptr; }
  bool has_mask() const { return mask != nullptr; }
  float alibi_slope(int64_t b, int64_t h) const {
    return alibi[b * alibi_stride_b + h * alibi_stride_h];
  }
  int64_t mask_offset(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * mask_stride[0] + h * mask_stride[1] + i * mask_stride[2] + j * mask_stride[3];
  }
};

inline AttentionProblem::Row AttentionProblem::key_row(int64_t b, int64_t j, int64_t h) const {
  const size_t elem = dtype_size(kv_dtype);
  if (cache == nullptr) {
    return {static_cast<const char*>(k) + k_stride.offset(b, j, h) * elem, 1.0f};
  }
  const int64_t slot = cache->token_index(b, j) * kv_heads + h;
  const float* scales = cache->k_scales();
  return {static_cast<const char*>(cache->k_data()) + slot * head_dim * elem,
          scales ? scales[slot] : 1.0f};
}

inline AttentionProblem::Row AttentionProblem::value_row(int64_t b, int64_t j, int64_t h) const {
  const size_t elem = dtype_size(kv_dtype);
  if (cache == nullptr) {
    return {static_cast<const char*>(v) + v_stride.offset(b, j, h) * elem, 1.0f};
  }
  const int64_t slot = cache->token_index(b, j) * kv_heads + h;
  const float* scales = cache->v_scales();
  return {static_cast<const char*>(cache->v_data()) + slot * head_dim_v * elem,
          scales ? scales[slot] : 1.0f};
}

// out[t] for t < n: rows from data + t * step, scales from scales + t *
// scale_step (null: none), each head_bytes per kv head. Not vectorized: GCC
// made the offsets 64-bit vector multiplies (vpmullq) and took each entry's
// fields back out of the vectors to store them, ~1.6% of an int8 step at 32K
// tokens.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-vectorize")))
#endif
inline void FillTokenRows(AttentionProblem::TokenRows* out, int64_t n, const char* data,
                          int64_t step, const float* scales, int64_t scale_step,
                          int64_t head_bytes) {
  for (int64_t t = 0; t < n; ++t) {
    out[t] = {data, scales, head_bytes};
    data += step;
    if (scales) scales += scale_step;
  }
}

inline bool AttentionProblem::tokens(int64_t b, int64_t j0, int64_t n, TokenRows* keys,
                                     TokenRows* values) const {
  const int64_t elem = static_cast<int64_t>(dtype_size(kv_dtype));
  if (cache == nullptr) {
    FillTokenRows(keys, n, static_cast<const char*>(k) + k_stride.offset(b, j0, 0) * elem,
                  k_stride.seq * elem, nullptr, 0, k_stride.head * elem);
    if (values) {
      FillTokenRows(values, n, static_cast<const char*>(v) + v_stride.offset(b, j0, 0) * elem,
                    v_stride.seq * elem, nullptr, 0, v_stride.head * elem);
    }
    const auto packed = [&](const Bshd& s, int64_t dim) {
      return (kv_heads == 1 || s.head == dim) && (n <= 1 || s.seq == kv_heads * dim);
    };
    return packed(k_stride, head_dim) && (values == nullptr || packed(v_stride, head_dim_v));
  }
  const int64_t page_size = cache->page_size();
  const int32_t* table = cache->block_table().data() + b * cache->pages_per_sequence();
  const char* k_pool = static_cast<const char*>(cache->k_data());
  const char* v_pool = static_cast<const char*>(cache->v_data());
  const float* k_scales = cache->k_scales();
  const float* v_scales = cache->v_scales();
  const int64_t k_bytes = head_dim * elem, v_bytes = head_dim_v * elem;
  int64_t page = j0 / page_size, at = j0 % page_size;
  bool adjacent = true;  // (heads are adjacent in the pools; pages may not be)
  // Page by page: within a page a token's rows lie kv_heads rows after the
  // previous token's, so each run is a strided fill (a walk that found each
  // token's slot anew made an int8 step at 32K tokens 3-5% slower, one thread).
  for (int64_t i = 0; i < n; ++page, at = 0) {
    const int64_t run = std::min(n - i, page_size - at);
    const int64_t slot = (static_cast<int64_t>(table[page]) * page_size + at) * kv_heads;
    if (i > 0) adjacent = adjacent && table[page] == table[page - 1] + 1;
    FillTokenRows(keys + i, run, k_pool + slot * k_bytes, kv_heads * k_bytes,
         k_scales ? k_scales + slot : nullptr, kv_heads, k_bytes);
    if (values) {
      FillTokenRows(values + i, run, v_pool + slot * v_bytes, kv_heads * v_bytes,
           v_scales ? v_scales + slot : nullptr, kv_heads, v_bytes);
    }
    i += run;
  }
  return adjacent;
}

}  // namespace qkv::internal
