// Tiled attention backward (FlashAttention's algorithm): the scores and
// probabilities are recomputed block by block from the forward's lse, so the
// seq_q x seq_kv matrices never exist.
#pragma once

#include "api/backward_problem.h"

namespace qkv::internal {

// Writes dq, dk, dv (and dsinks) for a validated problem, reading o and lse.
// Dispatches once to the best SIMD target of this CPU (flash_force_target
// restricts it, as for the forward). Extra memory, per round of (batch, kv
// head) pairs: Q and dO of the pair's rows and its K and V, packed in float32
// (twice each for Q, dO and K), plus a float32 dQ accumulator per thread;
// O(block) per thread beside. Throws std::bad_alloc when that cannot be
// allocated.
void flash_backward(const BackwardProblem& problem);

}  // namespace qkv::internal
