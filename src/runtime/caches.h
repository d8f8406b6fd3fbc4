// Cache sizes of the CPU the process runs on, for tile sizes that keep a
// kernel's working set in cache.
#pragma once

#include <cstdint>
#include <string_view>

namespace qkv::internal {

// Bytes of one core's L2 cache, read once: as the C library reports it
// (sysconf), else as Linux's sysfs describes cpu0's caches (64-bit Arm, where
// glibc reports none), else 512 KiB. Values outside 64 KiB .. 64 MiB count as
// none.
int64_t l2_cache_bytes();

// Bytes of the last-level cache the process's cores share, read once: the
// level-3 cache as Linux's sysfs describes it (what cpu0 shares: on AMD's Zen
// 3 one core complex's 32 MiB, where glibc's sysconf reports the whole
// socket's 256 MiB), else the C library's size, else 0 (none known).
int64_t l3_cache_bytes();

// The data or unified cache of `level` as Linux's sysfs describes cpu0's
// caches (index0, index1, ...: each a level, a type and a size), -1 where it
// has none. The C library reports no L2 on 64-bit Arm (glibc's sysconf gives
// 0 there), sysfs does.
int64_t sysfs_cache_bytes(int level);

// A sysfs cache size ("2048K", "1M", "512"): bytes, or -1 where it is not one.
int64_t parse_cache_size(std::string_view text);

// Tests: l2_cache_bytes() returns `bytes` from now on (0: the detected size
// again), so that small shapes take the tile and schedule choices of large ones.
void set_l2_cache_bytes_for_test(int64_t bytes);

}  // namespace qkv::internal
