// BackwardProblem: a validated description of one attention_backward call.
// Built once at the API boundary (attention_backward.cpp); kernels trust it.
#pragma once

#include <cstdint>

#include "api/problem.h"

namespace qkv::internal {

struct BackwardProblem {
  // The forward call: sizes, q, k, v, options; o and lse are read, never written.
  AttentionProblem fwd;
  const void* dout = nullptr;  // [batch, seq_q, heads, head_dim_v], fwd.dtype
  void* dq = nullptr;          // [batch, seq_q, heads, head_dim], fwd.dtype
  void* dk = nullptr;          // [batch, seq_kv, kv_heads, head_dim], fwd.dtype
  void* dv = nullptr;          // [batch, seq_kv, kv_heads, head_dim_v], fwd.dtype
  Bshd dout_stride, dq_stride, dk_stride, dv_stride;
  float* dsinks = nullptr;     // optional [heads]: dsinks[h * dsinks_stride]
  int64_t dsinks_stride = 0;
};

}  // namespace qkv::internal
