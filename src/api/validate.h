// Validation of the public attention arguments into an AttentionProblem.
#pragma once

#include "api/problem.h"
#include "qkv/attention.h"

namespace qkv::internal {

// Checks of one view, shared by the entry points (each throws qkv::Error
// naming the argument): a view of `rank` dimensions with non-negative sizes
// and strides; a rank-4 [batch, seq, heads, dim] view with a contiguous
// innermost dimension; a float32 element type.
void check_view(const Tensor& t, const char* name, int rank);
void check_bshd(const Tensor& t, const char* name);
void check_float32_vector(const Tensor& t, const char* name);
Bshd bshd_strides(const Tensor& t);

// Checks every argument; throws qkv::Error naming the argument and values.
AttentionProblem make_problem(const AttentionParams& params);

}  // namespace qkv::internal
