#include "runtime/scratch.h"

#include <new>

#include "hwy/aligned_allocator.h"

namespace qkv::internal {

float* thread_scratch(size_t floats) {
  thread_local hwy::AlignedFreeUniquePtr<float[]> buffer;
  thread_local size_t capacity = 0;
  if (floats > capacity || !buffer) {
    buffer.reset();
    capacity = 0;
    buffer = hwy::AllocateAligned<float>(floats > 0 ? floats : 1);
    if (!buffer) throw std::bad_alloc();
    capacity = floats;
  }
  return buffer.get();
}

}  // namespace qkv::internal
