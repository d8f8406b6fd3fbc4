// Exp2NonPositive, the softmax's 2^x, against double exp2 over every float of
// its input range (every float down to -1024, every 4099th beyond), on
// every SIMD target this CPU runs:
//   x in [-126, 0]:    within 1.5 ulp of the exact result (budget: 2), or 0
//                      where the exact result is below 2^-126 (denormals are
//                      flushed, as in the kernels);
//   x < -126, -inf:    exactly 0.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels/flash_forward.h"
#include "runtime/threads.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "exp2_test.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "kernels/exp2-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// y[i] = Exp2NonPositive(x[i]) for i < n (n a multiple of 16, both aligned).
void Exp2Batch(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, size_t n) {
  const hn::ScalableTag<float> d;
  for (size_t i = 0; i < n; i += hn::Lanes(d)) {
    hn::Store(Exp2NonPositive(d, hn::Load(d, x + i)), d, y + i);
  }
}

// The number of i < n with y[i] outside [lo[i], hi[i]] (n a multiple of 16,
// all aligned).
int64_t CountOutside(const float* HWY_RESTRICT y, const float* HWY_RESTRICT lo,
                     const float* HWY_RESTRICT hi, size_t n) {
  const hn::ScalableTag<float> d;
  const hn::RebindToSigned<decltype(d)> di;
  auto count = hn::Zero(di);  // per lane: minus the number outside
  for (size_t i = 0; i < n; i += hn::Lanes(d)) {
    const auto v = hn::Load(d, y + i);
    const auto outside = hn::Or(hn::Lt(v, hn::Load(d, lo + i)), hn::Gt(v, hn::Load(d, hi + i)));
    count = hn::Add(count, hn::BitCast(di, hn::VecFromMask(d, outside)));
  }
  return -static_cast<int64_t>(hn::GetLane(hn::SumOfLanes(di, count)));
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {
HWY_EXPORT(Exp2Batch);
HWY_EXPORT(CountOutside);

namespace {

constexpr size_t kChunk = size_t{1} << 20;

// Units in the last place of a float near r > 0 (normal): r's power of two
// times 2^-23.
double Ulp(double r) {
  const uint64_t exponent = std::bit_cast<uint64_t>(r) & 0x7ff0000000000000u;
  return std::bit_cast<double>(exponent) * 0x1p-23;
}

// The float one step from x > 0 towards zero (down) or away (up).
float Step(float x, int delta) { return std::bit_cast<float>(std::bit_cast<uint32_t>(x) + delta); }

// The budget is 2 ulp; the fit does better (< 1 ulp with FMA, 1.23 ulp
// without), and a looser polynomial should show.
constexpr double kUlpBound = 1.5;

TEST(Exp2, EveryNonPositiveFloatOnEveryTarget) {
  struct Restore {
    ~Restore() { flash_force_target(0); }
  } restore;
  const std::vector<int64_t> targets = flash_targets();
  auto x = hwy::AllocateAligned<float>(kChunk);
  auto y = hwy::AllocateAligned<float>(kChunk * targets.size());  // per target
  std::vector<double> exact(kChunk);
  auto lo = hwy::AllocateAligned<float>(kChunk);  // accepted results: [lo, hi]
  auto hi = hwy::AllocateAligned<float>(kChunk);
  std::vector<int64_t> wrong(targets.size());
  // As in the kernels' workers: denormal inputs read as 0, results flushed.
  const ScopedFlushDenormals flush_denormals;
  // x = -(the float with bit pattern b): every b up to -1024 (past every
  // threshold of the range reduction), then every 4099th up to -inf.
  const uint32_t dense_end = std::bit_cast<uint32_t>(1024.0f);
  const uint32_t inf_bits = std::bit_cast<uint32_t>(std::numeric_limits<float>::infinity());
  const auto bits_at = [&](uint64_t k) -> uint32_t {
    const uint64_t b = k <= dense_end ? k : dense_end + (k - dense_end) * 4099;
    return static_cast<uint32_t>(std::min<uint64_t>(b, inf_bits));
  };
  const uint64_t count = dense_end + (inf_bits - dense_end) / 4099 + 2;
  for (uint64_t first = 0; first < count; first += kChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, count - first));
    for (size_t i = 0; i < kChunk; ++i) {
      x[i] = -std::bit_cast<float>(bits_at(first + std::min<uint64_t>(i, n - 1)));
      exact[i] = x[i] >= -126.0f ? std::exp2(static_cast<double>(x[i])) : 0.0;
      const double slack = exact[i] > 0 ? kUlpBound * Ulp(exact[i]) : 0.0;
      // Below 2^-126 the kernels' flushed 0 is right too. The bounds as the
      // floats just inside them.
      const double lo_exact = exact[i] < 0x1p-126 ? 0.0 : exact[i] - slack;
      const double hi_exact = exact[i] + slack;
      lo[i] = static_cast<float>(lo_exact);
      if (lo[i] < lo_exact) lo[i] = Step(lo[i], 1);
      hi[i] = static_cast<float>(hi_exact);
      if (hi[i] > hi_exact && hi[i] > 0) hi[i] = Step(hi[i], -1);
    }
    for (size_t t = 0; t < targets.size(); ++t) {
      flash_force_target(targets[t]);
      HWY_DYNAMIC_DISPATCH(Exp2Batch)(x.get(), y.get() + t * kChunk, kChunk);
    }
    flash_force_target(0);  // the checks on the best target
    for (size_t t = 0; t < targets.size(); ++t) {
      // Lanes past n repeat the last x, and its bounds.
      const float* yt = y.get() + t * kChunk;
      const int64_t bad = HWY_DYNAMIC_DISPATCH(CountOutside)(yt, lo.get(), hi.get(), kChunk);
      if (bad > 0 && wrong[t] == 0) {
        for (size_t i = 0; i < n; ++i) {
          if (yt[i] < lo[i] || yt[i] > hi[i]) {
            ADD_FAILURE() << flash_target_name(targets[t]) << ": 2^" << x[i] << " = " << yt[i]
                          << ", exact " << exact[i] << " ("
                          << std::abs(yt[i] - exact[i]) / Ulp(std::max(exact[i], 0x1p-126))
                          << " ulp)";
            break;
          }
        }
      }
      wrong[t] += bad;
    }
  }
  for (size_t t = 0; t < targets.size(); ++t) {
    EXPECT_EQ(wrong[t], 0) << flash_target_name(targets[t]) << ": results off by more than "
                           << kUlpBound << " ulp (or not exactly 0 below -126)";
  }
}

TEST(Exp2, WorkersFlushDenormals) {
  // ScopedFlushDenormals (x86 MXCSR FTZ+DAZ, 64-bit Arm FPCR.FZ): a product
  // below 2^-126 is 0 inside it, a denormal input reads as 0, and both are
  // as before after it.
  volatile float tiny = 1e-30f, small = 1e-10f;
  volatile float denormal = std::ldexp(1.0f, -140);
  const auto product = [&] { return tiny * small; };
  const auto doubled = [&] { return denormal * 2.0f; };
  ASSERT_NE(product(), 0.0f);
  ASSERT_NE(doubled(), 0.0f);
  {
    const ScopedFlushDenormals flush_denormals;
    EXPECT_EQ(product(), 0.0f);
    EXPECT_EQ(doubled(), 0.0f);
  }
  EXPECT_NE(product(), 0.0f);
  EXPECT_NE(doubled(), 0.0f);
}

TEST(Exp2, SpecialArguments) {
  struct Restore {
    ~Restore() { flash_force_target(0); }
  } restore;
  constexpr size_t kN = 32;
  auto x = hwy::AllocateAligned<float>(kN);
  auto y = hwy::AllocateAligned<float>(kN);
  const float inf = std::numeric_limits<float>::infinity();
  const float cases[] = {-inf, -0.0f, 0.0f, -1.0f, -126.0f, -127.0f, -1e30f, -0.5f, -125.5f};
  for (const int64_t target : flash_targets()) {
    SCOPED_TRACE(flash_target_name(target));
    flash_force_target(target);
    std::fill(x.get(), x.get() + kN, 0.0f);
    std::copy(std::begin(cases), std::end(cases), x.get());
    HWY_DYNAMIC_DISPATCH(Exp2Batch)(x.get(), y.get(), kN);
    EXPECT_EQ(y[0], 0.0f);   // -inf: a masked score
    EXPECT_EQ(y[1], 1.0f);   // -0
    EXPECT_EQ(y[2], 1.0f);
    EXPECT_EQ(y[3], 0.5f);
    EXPECT_EQ(y[4], std::ldexp(1.0f, -126));
    EXPECT_EQ(y[5], 0.0f);
    EXPECT_EQ(y[6], 0.0f);
    EXPECT_NEAR(y[7], std::sqrt(0.5), 1e-7);
    for (size_t i = 0; i < kN; ++i) EXPECT_FALSE(std::isnan(y[i])) << "x = " << x[i];
  }
}

}  // namespace
}  // namespace qkv::internal
#endif  // HWY_ONCE
