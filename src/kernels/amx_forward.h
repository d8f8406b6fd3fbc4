// Flash forward on AMX tiles for bfloat16 storage (Intel AMX-BF16).
#pragma once

#include "api/problem.h"

namespace qkv::internal {

// True when this build has the AMX kernel and this process may run it
// (runtime/amx.h: CPU, OS, permission, and not switched off).
bool amx_flash_available();

// True when amx_flash_forward runs `problem`: amx_flash_available() and q, k,
// v, o all bfloat16 (float16 and float32 keep the float32 kernel: converting
// them to bfloat16 would lose bits).
bool amx_flash_supports(const AttentionProblem& problem);

// Same contract as flash_forward (flash_forward.h), same results up to
// rounding; requires amx_flash_supports(problem). Throws std::bad_alloc when
// the pack buffer cannot be allocated.
void amx_flash_forward(const AttentionProblem& problem);

}  // namespace qkv::internal
