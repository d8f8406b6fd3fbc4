// Reusable scratch memory of the calling thread.
#pragma once

#include <cstddef>

namespace qkv::internal {

// A 64-byte aligned buffer of at least `floats` floats, owned by the calling
// thread and reused by its next call: fresh multi-megabyte allocations cost a
// page fault and a page clear per 4 KiB on every call (measured: ~4000 faults
// per 16 MiB pack buffer). Contents are unspecified. Valid until the calling
// thread asks again or exits. Throws std::bad_alloc.
float* thread_scratch(size_t floats);

}  // namespace qkv::internal
