// Thread-count policy shared by every parallel kernel.
#pragma once

#include <cstdint>

namespace qkv::internal {

// 0 = all the process may use. Inside an enclosing parallel region the answer
// is 1: qkv never oversubscribes a caller that is already threaded.
int resolve_threads(int requested);

// Sets flush-to-zero and denormals-are-zero for the calling thread and
// restores the previous state on destruction (x86: MXCSR's FTZ and DAZ;
// 64-bit Arm: FPCR's FZ, which does both).
class ScopedFlushDenormals {
 public:
  ScopedFlushDenormals();
  ~ScopedFlushDenormals();
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;

 private:
  uint64_t saved_ = 0;  // MXCSR or FPCR as it was
};

}  // namespace qkv::internal
