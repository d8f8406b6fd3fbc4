// The textbook attention that `qkv demo` compares qkv against.
//
// It computes what PyTorch's math path (scaled_dot_product_attention without
// a fused kernel) computes: the whole score matrix [batch, heads, seq_q,
// seq_kv] in float32 with sgemm, a -inf mask, a row softmax and a second
// sgemm. Its memory grows with seq_q * seq_kv, which is exactly what a fused
// kernel avoids, so it is both the speed and the memory baseline.
#pragma once

#include <cstdint>

#include "qkv/attention.h"

namespace qkv::tools {

// Bytes of the score matrix materialized_attention(params) allocates:
// batch * heads * seq_q * seq_kv * 4. Everything else it allocates is small.
// The shapes are read from params.q and params.k without validation.
int64_t materialized_attention_bytes(const AttentionParams& params);

// Writes params.o like qkv::attention(params) would, the textbook way:
//   1. S = scale * Q K^T            one cblas_sgemm per (batch, head)
//   2. S[i, j] = -inf if invisible   causal (either alignment) and window
//   3. P = softmax(S) per row        max-subtracted; a row with no visible key gives 0
//   4. O = P V                       one cblas_sgemm per (batch, head)
// Float32 only. Supports GQA/MQA, scale, causal and window; throws qkv::Error
// for softcap, ALiBi, sinks, masks and lse. Uses params.num_threads threads
// (0 = all, resolved like qkv does) for both OpenBLAS and the softmax.
void materialized_attention(const AttentionParams& params);

}  // namespace qkv::tools
