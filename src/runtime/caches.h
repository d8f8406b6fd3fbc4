// Cache sizes of the CPU the process runs on, for tile sizes that keep a
// kernel's working set in cache.
#pragma once

#include <cstdint>

namespace qkv::internal {

// Bytes of one core's L2 cache, as the C library reports it (sysconf), read
// once; 512 KiB where it reports nothing plausible.
int64_t l2_cache_bytes();

// Tests: l2_cache_bytes() returns `bytes` from now on (0: the detected size
// again), so that small shapes take the tile and schedule choices of large ones.
void set_l2_cache_bytes_for_test(int64_t bytes);

}  // namespace qkv::internal
