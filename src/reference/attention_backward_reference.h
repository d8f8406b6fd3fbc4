// The oracle of the backward pass: the exact gradients, in double precision.
#pragma once

#include "api/backward_problem.h"

namespace qkv::internal {

// Writes dq, dk, dv (and dsinks) for a validated problem, recomputing o and
// lse from q, k and v in double (the problem's o and lse are not read).
// Extra memory: dk and dv in double plus two rows of seq_kv doubles; time
// O(batch * heads * seq_q * seq_kv * (head_dim + head_dim_v)).
void attention_backward_reference(const BackwardProblem& problem);

}  // namespace qkv::internal
