#include "runtime/threads.h"

#include <omp.h>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define QKV_HAVE_MXCSR 1
#endif

namespace qkv::internal {

int resolve_threads(int requested) {
  if (omp_in_parallel()) return 1;
  const int available = omp_get_max_threads();
  if (requested <= 0) return available > 0 ? available : 1;
  return requested;
}

ScopedFlushDenormals::ScopedFlushDenormals() {
#ifdef QKV_HAVE_MXCSR
  saved_ = _mm_getcsr();
  _mm_setcsr(static_cast<unsigned>(saved_) | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
#elif defined(__aarch64__)
  asm volatile("mrs %0, fpcr" : "=r"(saved_));
  asm volatile("msr fpcr, %0" : : "r"(saved_ | (uint64_t{1} << 24)));  // FZ: inputs and results
#endif
}

ScopedFlushDenormals::~ScopedFlushDenormals() {
#ifdef QKV_HAVE_MXCSR
  _mm_setcsr(static_cast<unsigned>(saved_));
#elif defined(__aarch64__)
  asm volatile("msr fpcr, %0" : : "r"(saved_));
#endif
}

}  // namespace qkv::internal
