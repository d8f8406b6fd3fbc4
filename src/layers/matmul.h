// Dense matrix product for the layers: C = A.B (+ bias), float32 accumulation.
//
//   a    [m, k] float32, row stride lda (elements)
//   b    [k, n] float32 or bfloat16, row stride ldb; bfloat16 is widened to
//        float32 as it is packed (exact), so it costs no extra rounding
//   bias [n] float32, optional (nullptr = none)
//   c    [m, n] float32, row stride ldc (written; must not overlap a or b)
//
// Internal: callers validate; the kernel trusts its input.
#pragma once

#include <cstdint>
#include <vector>

#include "qkv/tensor.h"

namespace qkv::internal {

// Cache blocking (elements); 0 = chosen from the SIMD width. Tests set small
// blocks so that every block edge is crossed on small matrices.
struct MatmulBlocking {
  int64_t m = 0;  // rows of C per task (rounded up to the micro-kernel's rows)
  int64_t n = 0;  // columns of C per task (rounded up to 2 vectors)
  int64_t k = 0;  // depth of one packed block
};

struct MatmulParams {
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  DType b_dtype = DType::kFloat32;  // kFloat32 or kBFloat16
  int64_t ldb = 0;
  const float* bias = nullptr;
  float* c = nullptr;
  int64_t ldc = 0;
  int num_threads = 0;  // 0 = all the process may use; 1 inside a parallel region
  MatmulBlocking blocking;
};

// Computes c as above. Dispatches once to the best SIMD target of this CPU
// (flash_force_target restricts it, for tests).
void matmul(const MatmulParams& params) noexcept;

}  // namespace qkv::internal
