// FMA peak probe: each thread runs 12 independent accumulator chains (enough
// to cover 2 FMA pipes x 4-6 cycles of latency on current x86 and Arm cores)
// for a fixed number of iterations; best of several repetitions.
#include "runtime/peak_probe.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "runtime/peak_probe.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Returns flops done; `sink` keeps the result alive.
HWY_NOINLINE double FmaChains(int64_t iterations, float* sink) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const V a = hn::Set(d, 0.999999f), b = hn::Set(d, 1e-7f);
  // Distinct starting values: identical chains would be merged by the compiler.
  V c0 = hn::Set(d, 1.00f), c1 = hn::Set(d, 1.01f), c2 = hn::Set(d, 1.02f);
  V c3 = hn::Set(d, 1.03f), c4 = hn::Set(d, 1.04f), c5 = hn::Set(d, 1.05f);
  V c6 = hn::Set(d, 1.06f), c7 = hn::Set(d, 1.07f), c8 = hn::Set(d, 1.08f);
  V c9 = hn::Set(d, 1.09f), c10 = hn::Set(d, 1.10f), c11 = hn::Set(d, 1.11f);
  for (int64_t i = 0; i < iterations; ++i) {
    c0 = hn::MulAdd(c0, a, b); c1 = hn::MulAdd(c1, a, b); c2 = hn::MulAdd(c2, a, b);
    c3 = hn::MulAdd(c3, a, b); c4 = hn::MulAdd(c4, a, b); c5 = hn::MulAdd(c5, a, b);
    c6 = hn::MulAdd(c6, a, b); c7 = hn::MulAdd(c7, a, b); c8 = hn::MulAdd(c8, a, b);
    c9 = hn::MulAdd(c9, a, b); c10 = hn::MulAdd(c10, a, b); c11 = hn::MulAdd(c11, a, b);
  }
  const V sum = hn::Add(hn::Add(hn::Add(c0, c1), hn::Add(c2, c3)),
                        hn::Add(hn::Add(hn::Add(c4, c5), hn::Add(c6, c7)),
                                hn::Add(hn::Add(c8, c9), hn::Add(c10, c11))));
  *sink = hn::GetLane(sum);
  return 12.0 * 2.0 * static_cast<double>(hn::Lanes(d)) * static_cast<double>(iterations);
}

double MeasureFmaPeak(int threads) {
  constexpr int64_t kIterations = 4'000'000;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double flops = 0;
    float sinks[64] = {};
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
    flops += FmaChains(kIterations, &sinks[omp_get_thread_num() % 64]);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, flops / seconds * 1e-9);
  }
  return best;
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {
HWY_EXPORT(MeasureFmaPeak);
double measure_fma_peak_gflops(int threads) {
  return HWY_DYNAMIC_DISPATCH(MeasureFmaPeak)(threads < 1 ? 1 : threads);
}
}  // namespace qkv::internal
#endif
