// The machine's own measured limits, for benchmarks: fp32 FMA throughput and
// memory read bandwidth, measured with the same SIMD target the kernels use.
#pragma once

namespace qkv::internal {

// Sustained fp32 FMA throughput in GFLOP/s (2 flops per lane per FMA) with
// `threads` threads, each running independent FMA chains on registers.
double measure_fma_peak_gflops(int threads);

}  // namespace qkv::internal
