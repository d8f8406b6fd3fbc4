// Google Benchmark micro-benchmarks of the flash kernel's building blocks, on
// every SIMD target compiled in that this CPU runs. Names follow
// <op>-<isa>-<shape>; counters report GFLOP/s (FMA = 2 flops) or elements/s.
//   qk-<isa>-<rows>x2v   S = Q.K^T panel, head_dim 128, 128 keys (L1/L2 resident)
//   pv-<isa>-<rows>x2v   O = alpha*O + P.V panel, 128 keys, head_dim_v 128
//   exp2-<isa>           Exp2NonPositive on 4096 arguments in [-30, 0]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/flash_forward.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "microkernels_bench.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "kernels/exp2-inl.h"
#include "kernels/microkernel-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kHeadDim = 128;
constexpr int64_t kKeys = 128;

void BenchQK(benchmark::State& state) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  constexpr int kRows = kMaxPanelRows;
  auto q = hwy::AllocateAligned<float>(kHeadDim * kRows);
  auto kt = hwy::AllocateAligned<float>(kHeadDim * kKeys);
  auto s = hwy::AllocateAligned<float>(kRows * kScoreStride);
  for (int64_t i = 0; i < kHeadDim * kRows; ++i) q[i] = 1e-3f * static_cast<float>(i % 97);
  for (int64_t i = 0; i < kHeadDim * kKeys; ++i) kt[i] = 1e-3f * static_cast<float>(i % 89);
  for (auto _ : state) {
    for (int64_t j = 0; j < kKeys; j += 2 * N) {
      QKPanel<kRows>(d, q.get(), kt.get() + j * kHeadDim, kHeadDim, s.get() + j);
    }
    benchmark::DoNotOptimize(s.get());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * kRows * kKeys * kHeadDim * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BenchPV(benchmark::State& state) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  constexpr int kRows = kMaxPanelRows;
  auto p = hwy::AllocateAligned<float>(kRows * kScoreStride);
  auto v = hwy::AllocateAligned<float>(kKeys * kHeadDim);
  auto o = hwy::AllocateAligned<float>(kRows * kHeadDim);
  auto alpha = hwy::AllocateAligned<float>(kRows);
  for (int64_t i = 0; i < kRows * kScoreStride; ++i) p[i] = 1e-3f * static_cast<float>(i % 83);
  for (int64_t i = 0; i < kKeys * kHeadDim; ++i) v[i] = 1e-3f * static_cast<float>(i % 79);
  for (int64_t i = 0; i < kRows * kHeadDim; ++i) o[i] = 0.0f;
  for (int r = 0; r < kRows; ++r) alpha[r] = 1.0f;
  for (auto _ : state) {
    // V in column panels of 2N, as packed by the kernel.
    for (int64_t c = 0; c < kHeadDim; c += 2 * N) {
      PVPanel<kRows, 2>(d, p.get(), v.get() + c * kKeys, 2 * N, kKeys, alpha.get(), o.get() + c,
                        kHeadDim);
    }
    benchmark::DoNotOptimize(o.get());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * kRows * kKeys * kHeadDim * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BenchExp2(benchmark::State& state) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  constexpr int64_t kCount = 4096;
  auto x = hwy::AllocateAligned<float>(kCount);
  auto y = hwy::AllocateAligned<float>(kCount);
  for (int64_t i = 0; i < kCount; ++i) x[i] = -30.0f * static_cast<float>(i) / kCount;
  for (auto _ : state) {
    for (int64_t i = 0; i < kCount; i += N) {
      hn::Store(Exp2NonPositive(d, hn::Load(d, x.get() + i)), d, y.get() + i);
    }
    benchmark::DoNotOptimize(y.get());
    benchmark::ClobberMemory();
  }
  state.counters["Gexp/s"] =
      benchmark::Counter(kCount * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

int PanelRows() { return kMaxPanelRows; }

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {
HWY_EXPORT(BenchQK);
HWY_EXPORT(BenchPV);
HWY_EXPORT(BenchExp2);
HWY_EXPORT(PanelRows);
}  // namespace qkv::internal

int main(int argc, char** argv) {
  using namespace qkv::internal;
  for (const int64_t target : flash_targets()) {
    flash_force_target(target);
    const std::string isa = flash_target_name(target);
    const std::string shape = std::to_string(HWY_DYNAMIC_DISPATCH(PanelRows)()) + "x2v";
    const auto with_target = [target](auto fn) {
      return [target, fn](benchmark::State& state) {
        flash_force_target(target);
        fn(state);
      };
    };
    benchmark::RegisterBenchmark(("qk-" + isa + "-" + shape).c_str(),
                                 with_target([](benchmark::State& s) { HWY_DYNAMIC_DISPATCH(BenchQK)(s); }));
    benchmark::RegisterBenchmark(("pv-" + isa + "-" + shape).c_str(),
                                 with_target([](benchmark::State& s) { HWY_DYNAMIC_DISPATCH(BenchPV)(s); }));
    benchmark::RegisterBenchmark(("exp2-" + isa).c_str(),
                                 with_target([](benchmark::State& s) { HWY_DYNAMIC_DISPATCH(BenchExp2)(s); }));
  }
  flash_force_target(0);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
#endif  // HWY_ONCE
