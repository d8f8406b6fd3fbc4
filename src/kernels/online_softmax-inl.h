// Score transforms (softcap, masks, ALiBi) and the online-softmax update of
// one row of a score tile. Per-target code.
//
// Units: the flash kernel keeps scores in log2 units (s2 = s * log2(e)) so the
// softmax uses 2^x; Q is pre-scaled by scale * log2(e) unless softcap is on,
// in which case Q carries `scale` only and the softcap maps natural units to
// log2 units (s2 = c * log2(e) * tanh(s / c)).

#if defined(QKV_KERNELS_ONLINE_SOFTMAX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_ONLINE_SOFTMAX_INL_H_
#undef QKV_KERNELS_ONLINE_SOFTMAX_INL_H_
#else
#define QKV_KERNELS_ONLINE_SOFTMAX_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "api/problem.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/exp2-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

inline constexpr float kLog2e = 1.4426950408889634f;

// Where one query row of a tile lives and which keys it may see.
struct TileRow {
  int64_t batch = 0;
  int64_t query = 0;  // position i in [0, seq_q)
  int64_t head = 0;   // query head
  int64_t lo = 0;     // visible keys from causal/window: [lo, hi], empty if lo > hi
  int64_t hi = -1;
};

// Applies every option to s[0, n_pad) (raw products for keys k0 + j) and
// leaves log2-unit scores; columns j >= n and invisible keys become -inf.
// `interval_mask`: some key of [k0, k0 + n) may lie outside [row.lo, row.hi].
template <class D>
HWY_INLINE void ApplyScoreOptions(D d, const AttentionProblem& p, const TileRow& row, int64_t k0,
                                  int64_t n, int64_t n_pad, bool interval_mask,
                                  float* HWY_RESTRICT s) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const V neg_inf = hn::Set(d, -std::numeric_limits<float>::infinity());
  if (p.softcap > 0) {
    const V inv_c = hn::Set(d, 1.0f / p.softcap);
    const V out_c = hn::Set(d, p.softcap * kLog2e);
    for (int64_t j = 0; j < n_pad; j += N) {
      const V x = hn::Load(d, s + j);
      hn::Store(hn::Mul(out_c, hn::Tanh(d, hn::Mul(x, inv_c))), d, s + j);
    }
  }
  if (p.has_alibi()) {
    // s2 -= slope * log2(e) * |i + seq_kv - seq_q - j|
    const V slope = hn::Set(d, p.alibi_slope(row.batch, row.head) * kLog2e);
    const V diag = hn::Set(d, static_cast<float>(row.query + p.diag() - k0));
    for (int64_t j = 0; j < n_pad; j += N) {
      const V dist = hn::Abs(hn::Sub(diag, hn::Iota(d, static_cast<float>(j))));
      hn::Store(hn::NegMulAdd(slope, dist, hn::Load(d, s + j)), d, s + j);
    }
  }
  if (p.has_mask()) {
    const int64_t base = p.mask_offset(row.batch, row.head, row.query, k0);
    const int64_t step = p.mask_stride[3];
    if (p.mask_dtype == DType::kBool) {
      const uint8_t* m = static_cast<const uint8_t*>(p.mask) + base;
      for (int64_t j = 0; j < n; ++j) {
        if (m[j * step] == 0) s[j] = -std::numeric_limits<float>::infinity();
      }
    } else {
      // A finite mask value stays finite: -FLT_MAX * log2(e) would overflow to
      // -inf and turn "very unlikely" into "invisible" (a row of only
      // -FLT_MAX is uniform attention, as in the reference).
      constexpr float kMax = std::numeric_limits<float>::max();
      const float* m = static_cast<const float*>(p.mask) + base;
      for (int64_t j = 0; j < n; ++j) {
        const float add = m[j * step];
        s[j] = std::isinf(add) ? s[j] + add : std::clamp(s[j] + add * kLog2e, -kMax, kMax);
      }
    }
  }
  if (interval_mask || n < n_pad) {
    // Keep k0 + j in [lo, hi] and j < n: j in [lo - k0, min(hi - k0, n - 1)].
    const float first = static_cast<float>(row.lo - k0);
    const float last = static_cast<float>(std::min(row.hi - k0, n - 1));
    const V vfirst = hn::Set(d, first), vlast = hn::Set(d, last);
    for (int64_t j = 0; j < n_pad; j += N) {
      const V idx = hn::Iota(d, static_cast<float>(j));
      const auto outside = hn::Or(idx < vfirst, idx > vlast);
      hn::Store(hn::IfThenElse(outside, neg_inf, hn::Load(d, s + j)), d, s + j);
    }
  }
}

// Online-softmax update of one row with the scores s[0, n_pad) of a new key
// block (log2 units, -inf = invisible). In place: s becomes p = 2^(s - m_new).
// Updates the running max m and sum l; returns alpha = 2^(m_old - m_new), the
// factor the caller applies to the row's accumulated output.
// invariant: l = sum over keys so far of 2^(s_j - m); m = -inf while no key
// has been visible, and then l = 0 and alpha = 0 (never -inf - -inf).
template <class D>
HWY_INLINE float OnlineSoftmaxRow(D d, float* HWY_RESTRICT s, int64_t n_pad, float& m, float& l) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  V vmax = hn::Set(d, -std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n_pad; j += N) vmax = hn::Max(vmax, hn::Load(d, s + j));
  const float block_max = hn::GetLane(hn::MaxOfLanes(d, vmax));
  const float m_new = std::max(m, block_max);
  // While nothing is visible, subtract 0: every 2^(-inf - 0) is exactly 0.
  const float m_use = m_new == -std::numeric_limits<float>::infinity() ? 0.0f : m_new;
  const V vm = hn::Set(d, m_use);
  V vsum = hn::Zero(d);
  for (int64_t j = 0; j < n_pad; j += N) {
    const V e = Exp2NonPositive(d, hn::Sub(hn::Load(d, s + j), vm));
    vsum = hn::Add(vsum, e);
    hn::Store(e, d, s + j);
  }
  const float alpha = m == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp2(m - m_use);
  l = alpha * l + hn::GetLane(hn::SumOfLanes(d, vsum));
  m = m_new;
  return alpha;
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_ONLINE_SOFTMAX_INL_H_
