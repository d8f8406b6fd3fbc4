// The oracle: attention computed with plain loops in double precision.
#pragma once

#include "api/problem.h"

namespace qkv::internal {

// Writes o (and lse if requested) for a validated problem. Extra memory is one
// row of seq_kv doubles; time is O(batch * heads * seq_q * seq_kv * head_dim).
void attention_reference(const AttentionProblem& problem);

}  // namespace qkv::internal
