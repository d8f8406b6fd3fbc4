// The machine's own read bandwidth, for benchmarks of memory-bound kernels
// (decode): a vectorized sum over a buffer, measured with the same SIMD
// target the kernels use.
#pragma once

#include <cstddef>

namespace qkv::internal {

// Sustained read bandwidth in GB/s (1e9 bytes per second) of `threads`
// threads summing a buffer of `bytes`, each thread its own contiguous slice;
// best of several repetitions, after every page has been touched. The level
// of the memory hierarchy measured is the one that holds `bytes`: pass a few
// times the last-level cache for DRAM (this function does not check), or the
// size of the data a kernel streams to compare with that kernel.
double measure_read_bandwidth_gbs(int threads, size_t bytes = size_t{1} << 30);

}  // namespace qkv::internal
