// Validation of the public attention arguments into an AttentionProblem.
#pragma once

#include "api/problem.h"
#include "qkv/attention.h"

namespace qkv::internal {

// Checks every argument; throws qkv::Error naming the argument and values.
AttentionProblem make_problem(const AttentionParams& params);

}  // namespace qkv::internal
