// Scratch memory for kernels, reused by the calling thread when small.
#pragma once

#include <cstddef>

#include "hwy/aligned_allocator.h"

namespace qkv::internal {

// Up to this size a calling thread keeps its scratch for its next call: a
// fresh multi-megabyte allocation costs a page fault and a page clear per
// 4 KiB on every call (measured: ~4000 faults per 16 MiB). Larger requests
// (long sequences, where those faults are a negligible share) are allocated
// for the call and released after it, so no large buffer outlives a call.
inline constexpr size_t kKeptScratchBytes = size_t{16} << 20;

// A 64-byte aligned buffer of at least `floats` floats; contents unspecified.
// `data` stays valid while the lease lives and the thread makes no other
// acquire_scratch call. Throws std::bad_alloc.
struct ScratchLease {
  float* data = nullptr;
  hwy::AlignedFreeUniquePtr<float[]> owned;  // set for a per-call buffer
};
ScratchLease acquire_scratch(size_t floats);

}  // namespace qkv::internal
