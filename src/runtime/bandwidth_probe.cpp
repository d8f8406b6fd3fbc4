// Read-bandwidth probe: each thread sums its own contiguous slice of one
// buffer with eight independent vector accumulators (enough loads in flight
// to cover the add latency, so only the memory system limits it). A buffer
// smaller than kMinBytesPerRep is summed several times per repetition so that
// thread start-up stays a small fraction of the timed region.
#include "runtime/bandwidth_probe.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "runtime/bandwidth_probe.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

constexpr size_t kSliceAlign = 4096;               // slices start on their own page
constexpr size_t kMinBytesPerRep = size_t{256} << 20;
constexpr int kMinReps = 3, kMaxReps = 7;
constexpr double kRepsSeconds = 1.0;                // stop adding reps after this long
constexpr int kUnroll = 8;

// Sum of floats [begin, end), end - begin a multiple of kUnroll * Lanes.
HWY_NOINLINE float SumSlice(const float* HWY_RESTRICT begin, const float* HWY_RESTRICT end) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const size_t N = hn::Lanes(d);
  V a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  V a4 = hn::Zero(d), a5 = hn::Zero(d), a6 = hn::Zero(d), a7 = hn::Zero(d);
  for (const float* p = begin; p < end; p += kUnroll * N) {
    a0 = hn::Add(a0, hn::Load(d, p + 0 * N));
    a1 = hn::Add(a1, hn::Load(d, p + 1 * N));
    a2 = hn::Add(a2, hn::Load(d, p + 2 * N));
    a3 = hn::Add(a3, hn::Load(d, p + 3 * N));
    a4 = hn::Add(a4, hn::Load(d, p + 4 * N));
    a5 = hn::Add(a5, hn::Load(d, p + 5 * N));
    a6 = hn::Add(a6, hn::Load(d, p + 6 * N));
    a7 = hn::Add(a7, hn::Load(d, p + 7 * N));
  }
  const V sum = hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)), hn::Add(hn::Add(a4, a5), hn::Add(a6, a7)));
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

}  // namespace

double MeasureReadBandwidth(int threads, size_t bytes) {
  const hn::ScalableTag<float> d;
  // Slices of a whole number of pages and unrolled iterations.
  const size_t step = std::max(kSliceAlign, kUnroll * hn::Lanes(d) * sizeof(float));
  const size_t slice_bytes = std::max(step, bytes / static_cast<size_t>(threads) / step * step);
  const size_t slice = slice_bytes / sizeof(float);
  const size_t total = slice * static_cast<size_t>(threads);
  auto buffer = hwy::AllocateAligned<float>(total);
  if (!buffer) return 0;
  const int passes = static_cast<int>(std::max<size_t>(1, kMinBytesPerRep / (total * sizeof(float))));

  // First touch by the thread that reads the slice (its NUMA node); a nonzero
  // pattern so no page can stay the shared zero page.
#pragma omp parallel num_threads(threads)
  std::memset(buffer.get() + slice * static_cast<size_t>(omp_get_thread_num()), 0x3c, slice_bytes);

  std::vector<float> sinks(static_cast<size_t>(threads) * 16);  // a cache line each
  double best = 0, spent = 0;
  for (int rep = 0; rep < kMaxReps && (rep < kMinReps || spent < kRepsSeconds); ++rep) {
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      const float* begin = buffer.get() + slice * static_cast<size_t>(t);
      float sum = 0;
      for (int pass = 0; pass < passes; ++pass) {
        // SumSlice only reads memory: without this barrier the compiler may
        // call it once and reuse the result for every pass.
        asm volatile("" : : : "memory");
        sum += SumSlice(begin, begin + slice);
      }
      sinks[static_cast<size_t>(t) * 16] = sum;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    spent += seconds;
    best = std::max(best, static_cast<double>(total * sizeof(float)) * passes / seconds * 1e-9);
  }
  return best;
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {
HWY_EXPORT(MeasureReadBandwidth);
double measure_read_bandwidth_gbs(int threads, size_t bytes) {
  return HWY_DYNAMIC_DISPATCH(MeasureReadBandwidth)(threads < 1 ? 1 : threads, bytes);
}
}  // namespace qkv::internal
#endif
