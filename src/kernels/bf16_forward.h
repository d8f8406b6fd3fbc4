// Flash forward for bfloat16 storage on the CPU's bfloat16 units: AMX tiles
// (Intel AMX-BF16) or AVX512-BF16 dot products, whichever this CPU has.
#pragma once

#include <vector>

#include "api/problem.h"

namespace qkv::internal {

// The units bf16_flash_forward runs on now: AMX tiles where this build has
// them and this process may use them (runtime/amx.h), else AVX512-BF16 dot
// products, else none; kNone too while set_dot_units_enabled(false).
enum class Bf16Engine { kNone, kAmx, kDot };
Bf16Engine bf16_flash_engine();

// The engines this build and CPU can run, preferred first (empty while
// set_dot_units_enabled(false)).
std::vector<Bf16Engine> bf16_flash_engines();

// For tests: run `engine` (one of bf16_flash_engines()) instead of the
// preferred one; kNone goes back to the preferred one. Not meant to change
// while a call runs.
void bf16_flash_force_engine(Bf16Engine engine);

// "amx", "avx512-bf16" or "none".
const char* bf16_engine_name(Bf16Engine engine);

// True when bf16_flash_forward runs `problem`: an engine is there and q, k,
// v, o are all bfloat16 (float16 and float32 keep the float32 kernel:
// converting them to bfloat16 would lose bits); with exact_bf16_probs, only
// on tiles (the float32 kernel keeps P in float32 elsewhere).
bool bf16_flash_supports(const AttentionProblem& problem);

// Same contract as flash_forward (flash_forward.h), same results up to
// rounding (P is rounded to bfloat16 for P.V, see bf16_forward.cpp);
// requires bf16_flash_supports(problem). Throws std::bad_alloc when the pack
// buffer cannot be allocated.
void bf16_flash_forward(const AttentionProblem& problem);

}  // namespace qkv::internal
