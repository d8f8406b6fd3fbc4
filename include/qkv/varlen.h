// Variable-length batches: sequences of different lengths packed end to end,
// as FlashAttention's varlen API, so a batch needs no padding.
#pragma once

#include <cstdint>
#include <span>

#include "qkv/attention.h"

namespace qkv {

// Sequence s owns query rows [cu_seqlens_q[s], cu_seqlens_q[s + 1]) and key
// rows [cu_seqlens_k[s], cu_seqlens_k[s + 1]); each sequence is attended on
// its own with the semantics of qkv::attention (causal is per sequence,
// bottom-right aligned by default).
struct VarlenAttentionParams {
  Tensor q;    // [total_q, heads, head_dim]
  Tensor k;    // [total_kv, kv_heads, head_dim]
  Tensor v;    // [total_kv, kv_heads, head_dim_v]
  Tensor o;    // [total_q, heads, head_dim_v]    (written)
  Tensor lse;  // optional float32 [heads, total_q] (written)
  std::span<const int32_t> cu_seqlens_q;  // [batch + 1], 0 first, non-decreasing, total_q last
  std::span<const int32_t> cu_seqlens_k;  // [batch + 1], 0 first, non-decreasing, total_kv last

  // Every other option, as in AttentionParams: scale, causal, causal_align,
  // window, softcap, alibi_slopes ([heads] or [batch, heads]), sinks,
  // num_threads, backend, tiling. Its q/k/v/o/lse must be empty, and masks
  // are not supported with varlen.
  AttentionParams options;
};

// Validates every sequence before writing anything; throws qkv::Error.
void attention_varlen(const VarlenAttentionParams& params);

}  // namespace qkv
