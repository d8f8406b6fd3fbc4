// FMA peak probe: each thread runs independent accumulator chains (kChains,
// enough to cover the FMA pipes' latency) for a fixed number of iterations;
// best of several repetitions.
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

// Independent accumulator chains per thread: 12 cover 2 FMA pipes x 4-6
// cycles of latency (x86); 64-bit Arm cores with four FMA pipes of 4 cycles
// (Neoverse V1/V2, Apple M) need 16, and have 32 vector registers for 24.
#if HWY_ARCH_ARM_A64
constexpr int kChains = 24;
#else
constexpr int kChains = 12;
#endif

// Returns flops done; `sink` keeps the result alive.
HWY_NOINLINE double FmaChains(int64_t iterations, float* sink) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const V a = hn::Set(d, 0.999999f), b = hn::Set(d, 1e-7f);
  // Distinct starting values: identical chains would be merged by the compiler.
  V c[kChains];
#pragma GCC unroll 24
  for (int i = 0; i < kChains; ++i) c[i] = hn::Set(d, 1.0f + 0.01f * static_cast<float>(i));
  // c += a * b: the chain is the addend, which Arm's fmla updates in place
  // (as c * a + b, each fmla needed two register copies of b around it).
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) c[i] = hn::MulAdd(a, b, c[i]);
  }
#pragma GCC unroll 24
  for (int i = 1; i < kChains; ++i) c[0] = hn::Add(c[0], c[i]);
  *sink = hn::GetLane(c[0]);
  return kChains * 2.0 * static_cast<double>(hn::Lanes(d)) * static_cast<double>(iterations);
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
