// Deterministic inputs for the demo and the benchmarks: uniform in [-1, 1),
// a pure function of (stream, index), so fills run in parallel and every run
// (and every cache type) sees the same values.
#pragma once

#include <cstdint>
#include <vector>

namespace qkv::tools {

inline constexpr uint64_t kInputSeed = 42;

inline float random_value(uint64_t stream, uint64_t index) {
  uint64_t x = kInputSeed ^ (stream * 0x9E3779B97F4A7C15ull) ^ (index * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;  // splitmix64 finalizer
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return static_cast<float>(static_cast<double>(x >> 40) * 0x1p-23 - 1.0);
}

inline std::vector<float> random_tensor(int64_t count, uint64_t stream) {
  std::vector<float> values(static_cast<size_t>(count));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) values[i] = random_value(stream, static_cast<uint64_t>(i));
  return values;
}

}  // namespace qkv::tools
