// The one place that picks a kernel for a validated problem.
#pragma once

#include "api/problem.h"

namespace qkv::internal {

// kReference: the oracle; kFlash / kDecode: that kernel (kFlash on AMX tiles
// for bfloat16 on AMX-BF16 or AVX512-BF16, kernels/bf16_forward.h); kAuto: decode for
// few rows per (batch, kv head), flash otherwise. num_splits: decode chunks.
void run_attention(const AttentionProblem& problem, Backend backend, int num_splits = 0);

}  // namespace qkv::internal
