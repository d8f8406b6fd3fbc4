#include "runtime/scratch.h"

#include <new>

namespace qkv::internal {

ScratchLease acquire_scratch(size_t floats) {
  if (floats == 0) floats = 1;
  ScratchLease lease;
  if (floats * sizeof(float) > kKeptScratchBytes) {
    lease.owned = hwy::AllocateAligned<float>(floats);
    if (!lease.owned) throw std::bad_alloc();
    lease.data = lease.owned.get();
    return lease;
  }
  thread_local hwy::AlignedFreeUniquePtr<float[]> kept;
  thread_local size_t capacity = 0;
  if (floats > capacity) {
    kept.reset();
    capacity = 0;
    kept = hwy::AllocateAligned<float>(floats);
    if (!kept) throw std::bad_alloc();
    capacity = floats;
  }
  lease.data = kept.get();
  return lease;
}

}  // namespace qkv::internal
