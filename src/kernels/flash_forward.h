// Tiled attention forward with an online softmax (FlashAttention's algorithm).
#pragma once

#include <cstdint>
#include <vector>

#include "api/problem.h"

namespace qkv::internal {

// Writes o (and lse if requested) for a validated problem. Dispatches once to
// the best SIMD target of this CPU. Extra memory is O(seq_kv * head_dim) for
// the packed K/V of the heads in flight (up to 16 MiB of it kept by the calling
// thread for its next call) plus O(tile) per thread; the seq_q x seq_kv score matrix never
// exists. Throws std::bad_alloc when the pack buffer cannot be allocated.
void flash_forward(const AttentionProblem& problem);

// SIMD targets compiled into this build that this CPU can run (Highway target
// bits), best first, and a test hook that restricts dispatch to one of them
// (0 restores the default).
std::vector<int64_t> flash_targets();
void flash_force_target(int64_t target);
const char* flash_target_name(int64_t target);

}  // namespace qkv::internal
