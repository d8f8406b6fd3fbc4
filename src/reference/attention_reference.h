// The oracles: attention and its gradients computed with plain loops in
// double precision.
#pragma once

#include <cstdint>

#include "api/problem.h"

namespace qkv::internal {

// Writes o (and lse if requested) for a validated problem. Extra memory is one
// row of seq_kv doubles; time is O(batch * heads * seq_q * seq_kv * head_dim).
void attention_reference(const AttentionProblem& problem);

// Pieces shared by the oracles.
// Element `offset` of a tensor of storage type `dtype`, widened to double;
// and value rounded once to `dtype` and stored there.
double reference_load(const void* base, DType dtype, int64_t offset);
void reference_store(void* base, DType dtype, int64_t offset, double value);
// The scores of query row i of head h (batch b) against keys [0, seq_kv):
// s[j] after every option in the order of the semantics table, -inf where
// key j is not visible; u[j] (when u is not null) = scale * q_i . k_j before
// the softcap (0 where invisible). Returns the largest s (-inf if none).
double reference_scores(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, double* s,
                        double* u);

}  // namespace qkv::internal
