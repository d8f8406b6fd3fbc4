// Deterministic inputs for the demo and the benchmarks: uniform in [-1, 1),
// a pure function of (stream, index), so fills run in parallel and every run
// (and every cache type) sees the same values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
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

// An allocator whose blocks start on a 64-byte cache line, as PyTorch's CPU
// tensors and most inference engines' buffers do. (A large malloc block starts
// 16 bytes into a page: each 512-byte row of a head_dim 128 float32 tensor then
// spans 9 lines, not 8, and every vector load of it is split; measured, 2
// threads, 32/32 heads: seq 512 no mask 2% slower, seq 2048 causal 1.4%.)
template <class T>
struct LineAlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlignment{64};
  LineAlignedAllocator() = default;
  template <class U>
  LineAlignedAllocator(const LineAlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlignment); }
  template <class U>
  bool operator==(const LineAlignedAllocator<U>&) const { return true; }
};

template <class T>
using AlignedVector = std::vector<T, LineAlignedAllocator<T>>;

inline AlignedVector<float> random_tensor(int64_t count, uint64_t stream) {
  AlignedVector<float> values(static_cast<size_t>(count));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) values[i] = random_value(stream, static_cast<uint64_t>(i));
  return values;
}

}  // namespace qkv::tools
