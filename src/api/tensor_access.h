// Scalar element access to [batch, seq, heads, dim] views of any float
// storage type, for the cache and RoPE paths (not for kernels' hot loops).
#pragma once

#include <cstdint>

#include "qkv/tensor.h"

namespace qkv::internal {

// Throws qkv::Error unless t is a rank-4 float32/float16/bfloat16 view with a
// contiguous innermost dimension and non-negative sizes and strides.
void check_bshd_float(const Tensor& t, const char* name);

// out[0, dim) = t[b, s, h, :] widened to float; and the reverse (rounded).
void read_row(const Tensor& t, int64_t b, int64_t s, int64_t h, float* out);
void write_row(const Tensor& t, int64_t b, int64_t s, int64_t h, const float* in);

}  // namespace qkv::internal
