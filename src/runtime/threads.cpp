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
  _mm_setcsr(saved_ | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
#endif
}

ScopedFlushDenormals::~ScopedFlushDenormals() {
#ifdef QKV_HAVE_MXCSR
  _mm_setcsr(saved_);
#endif
}

}  // namespace qkv::internal
