// Decode attention: a few query rows per (batch, kv head) against a long K/V
// stream, split along the sequence with a log-sum-exp merge (Flash-Decoding).
#pragma once

#include <cstdint>

#include "api/problem.h"

namespace qkv::internal {

// Rows per (batch, kv head) up to which decode_forward is the faster kernel.
inline constexpr int64_t kDecodeMaxRows = 16;

// Writes o (and lse) for a validated problem with seq_q * group <=
// kDecodeMaxRows. Reads every K/V byte once per call, converting float16,
// bfloat16 and int8 in registers. num_splits = chunks per (batch, kv head),
// 0 = enough for every thread. Extra memory: the partial results,
// batch * kv_heads * splits * rows * (head_dim_v + 2) floats.
void decode_forward(const AttentionProblem& problem, int num_splits) noexcept;

// int8 caches on CPUs with AVX512-VNNI: the scores in integer arithmetic,
// q as 16-bit fixed point per row (its error at most 2^-16 of the row's
// largest element, ~250x below the int8 rounding of the keys; docs/design.md).
// Used where the CPU has it, head_dim is a multiple of 32 and at most 256,
// unless switched off (tests compare both paths).
bool decode_vnni_available();
void set_decode_vnni_enabled(bool enabled);

}  // namespace qkv::internal
