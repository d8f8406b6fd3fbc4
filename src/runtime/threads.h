// Thread-count policy shared by every parallel kernel.
#pragma once

namespace qkv::internal {

// 0 = all the process may use. Inside an enclosing parallel region the answer
// is 1: qkv never oversubscribes a caller that is already threaded.
int resolve_threads(int requested);

// Sets flush-to-zero and denormals-are-zero for the calling thread and
// restores the previous state on destruction.
class ScopedFlushDenormals {
 public:
  ScopedFlushDenormals();
  ~ScopedFlushDenormals();
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;

 private:
  unsigned saved_ = 0;
};

}  // namespace qkv::internal
