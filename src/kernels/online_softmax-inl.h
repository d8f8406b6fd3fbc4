// Score transforms (softcap, masks, ALiBi) and the online-softmax update of
// one row of a score tile. Per-target code.
//
// Units: scores are kept in log2 units (s2 = s * log2(e), Q pre-scaled by
// scale * log2(e)) so the softmax is a bare 2^x. Two options need natural
// units instead: softcap (tanh of the natural score) and float masks (a mask
// value of -FLT_MAX is finite, and the score and lse it gives are finite too,
// but -FLT_MAX * log2(e) is not). Then Q carries `scale` only and the
// softmax computes 2^((s - m) * log2(e)). ScoreUnits says which.

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
#include "kernels/convert-inl.h"
#include "kernels/exp2-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

inline constexpr float kLog2e = 1.4426950408889634f;

struct ScoreUnits {
  float q_scale;  // factor applied to Q when it is packed
  float to_log2;  // factor from score units to log2 units (1 or log2(e))
  explicit ScoreUnits(const AttentionProblem& p) {
    const bool natural = p.softcap > 0 || (p.has_mask() && p.mask_dtype == DType::kFloat32);
    q_scale = natural ? p.scale : p.scale * kLog2e;
    to_log2 = natural ? kLog2e : 1.0f;
  }
  // A quantity given in natural units (ALiBi slope, sink), in score units.
  float from_natural(float x) const { return to_log2 == 1.0f ? x * kLog2e : x; }
};

// Where one query row of a tile lives and which keys it may see.
struct TileRow {
  int64_t batch = 0;
  int64_t query = 0;  // position i in [0, seq_q)
  int64_t head = 0;   // query head
  int64_t lo = 0;     // visible keys from causal/window: [lo, hi], empty if lo > hi
  int64_t hi = -1;
};

// Keys [begin, end) that some row of a tile may see (none when begin >= end).
struct KeyRange {
  int64_t begin = 0;
  int64_t end = 0;
};

// The keys of a block [k0, block_end) that a group of rows needs: [k0, end),
// end the last key some row sees plus one (k0 when no row sees any), and
// whether every row sees every one of them. With a causal mask the first
// rows of a tile see fewer keys than its last; keys past `end` would only
// give -inf scores, their exp and their share of P.V.
struct BlockKeys {
  int64_t end = 0;
  bool all_full = true;
};
HWY_INLINE BlockKeys RowsBlockKeys(const TileRow* HWY_RESTRICT rows, int64_t n_rows, int64_t k0,
                                   int64_t block_end) {
  BlockKeys keys{k0, true};
  for (int64_t r = 0; r < n_rows; ++r) {
    const TileRow& row = rows[r];
    if (row.lo <= row.hi && row.lo < block_end && row.hi >= k0) {
      keys.end = std::max(keys.end, std::min(block_end, row.hi + 1));
    }
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    keys.all_full &= rows[r].lo <= k0 && rows[r].hi >= keys.end - 1;
  }
  return keys;
}

// The n_rows rows of a tile of (batch b, kv head kvh) from query position q0,
// the GQA group stacked: row r is position q0 + r / group of query head
// kvh * group + r % group. Returns the union of their visible intervals.
HWY_INLINE KeyRange SetTileRows(const AttentionProblem& p, int64_t b, int64_t kvh, int64_t q0,
                                int64_t n_rows, TileRow* HWY_RESTRICT rows) {
  KeyRange keys{p.seq_kv, 0};
  for (int64_t r = 0; r < n_rows; ++r) {
    TileRow& row = rows[r];
    row.batch = b;
    row.query = q0 + r / p.group;
    row.head = kvh * p.group + r % p.group;
    row.lo = std::max<int64_t>(0, p.key_lo(b, row.query));
    row.hi = p.key_hi(b, row.query);
    if (row.lo <= row.hi) {
      keys.begin = std::min(keys.begin, row.lo);
      keys.end = std::max(keys.end, row.hi + 1);
    }
  }
  return keys;
}

// Applies every option to s[0, n_pad) (products of the packed Q and keys
// k0 + j, in score units); columns j >= n and invisible keys become -inf.
// `interval_mask`: some key of [k0, k0 + n) may lie outside [row.lo, row.hi].
template <class D>
HWY_INLINE void ApplyScoreOptions(D d, const AttentionProblem& p, const ScoreUnits& units,
                                  const TileRow& row, int64_t k0, int64_t n, int64_t n_pad,
                                  bool interval_mask, float* HWY_RESTRICT s) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const V neg_inf = hn::Set(d, -std::numeric_limits<float>::infinity());
  if (p.softcap > 0) {
    const V inv_c = hn::Set(d, 1.0f / p.softcap);
    const V out_c = hn::Set(d, p.softcap);  // natural units (see ScoreUnits)
    for (int64_t j = 0; j < n_pad; j += N) {
      const V x = hn::Load(d, s + j);
      hn::Store(hn::Mul(out_c, hn::Tanh(d, hn::Mul(x, inv_c))), d, s + j);
    }
  }
  if (p.has_alibi()) {
    // s -= slope * |i + seq_kv - seq_q - j|
    const V slope = hn::Set(d, units.from_natural(p.alibi_slope(row.batch, row.head)));
    const V diag = hn::Set(d, static_cast<float>(row.query + p.diag(row.batch) - k0));
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
      // Natural units here. A finite mask value keeps the score finite: an
      // overflow to -inf would turn "very unlikely" into "invisible" (a row
      // of only -FLT_MAX is uniform attention, as in the reference).
      constexpr float kMax = std::numeric_limits<float>::max();
      const float* m = static_cast<const float*>(p.mask) + base;
      for (int64_t j = 0; j < n; ++j) {
        const float add = m[j * step];
        s[j] = std::isinf(add) ? s[j] + add : std::clamp(s[j] + add, -kMax, kMax);
      }
    }
  }
  if (interval_mask || n < n_pad) {
    // Keep k0 + j in [lo, hi] and j < n: j in [first, last]. Only the vectors
    // holding a column outside are touched: those below first's vector end,
    // then those from last + 1's vector on (under a causal mask, a row's
    // last block is mostly visible).
    const int64_t first = row.lo - k0, last = std::min(row.hi - k0, n - 1);
    const V vfirst = hn::Set(d, static_cast<float>(first));
    const V vlast = hn::Set(d, static_cast<float>(last));
    const auto mask_vector = [&](int64_t j) {
      const V idx = hn::Iota(d, static_cast<float>(j));
      const auto outside = hn::Or(idx < vfirst, idx > vlast);
      hn::Store(hn::IfThenElse(outside, neg_inf, hn::Load(d, s + j)), d, s + j);
    };
    int64_t j = 0;
    for (; j < n_pad && j < first; j += N) mask_vector(j);
    for (j = std::max(j, std::max<int64_t>(0, last + 1) / N * N); j < n_pad; j += N) mask_vector(j);
  }
}

// The running-max step of the online softmax, shared by every row update:
// for a row whose running max is m (score units, -inf while no key has been
// visible) and a key block whose largest score is block_max (-inf if none is
// visible), sets m = max(m, block_max) and returns what the block's scores
// are shifted by before 2^x (the new max, or 0 while nothing is visible:
// every 2^(-inf - 0) is exactly 0) and alpha = 2^(m_old - m_new), the factor
// for what the row accumulated so far (0 while m_old = -inf: never -inf - -inf).
struct RowShift {
  float subtract;
  float alpha;
};
HWY_INLINE RowShift AdvanceRowMax(const ScoreUnits& units, float block_max, float& m) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const float m_new = std::max(m, block_max);
  const float m_use = m_new == kNegInf ? 0.0f : m_new;
  // (m == m_use, the common case once the row's max has settled: alpha = 2^0.)
  const float alpha = m == kNegInf ? 0.0f : m == m_use ? 1.0f : std::exp2((m - m_use) * units.to_log2);
  m = m_new;
  return {m_use, alpha};
}

// The largest score of s[0, n_pad), n_pad a multiple of the lanes, in four
// independent chains: with one, each Max waits for the previous one's result
// (perf, one thread, 32/32 heads, seq 2048, causal: 3% of the tile function's
// samples, about 1.5% of the call's, on that loop). Max is exact, so the
// grouping leaves the result.
template <class D>
HWY_INLINE float RowMax(D d, const float* HWY_RESTRICT s, int64_t n_pad) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  V m0 = hn::Set(d, -std::numeric_limits<float>::infinity()), m1 = m0, m2 = m0, m3 = m0;
  int64_t j = 0;
  for (; j + 4 * N <= n_pad; j += 4 * N) {
    m0 = hn::Max(m0, hn::Load(d, s + j));
    m1 = hn::Max(m1, hn::Load(d, s + j + N));
    m2 = hn::Max(m2, hn::Load(d, s + j + 2 * N));
    m3 = hn::Max(m3, hn::Load(d, s + j + 3 * N));
  }
  for (; j < n_pad; j += N) m0 = hn::Max(m0, hn::Load(d, s + j));
  return hn::GetLane(hn::MaxOfLanes(d, hn::Max(hn::Max(m0, m1), hn::Max(m2, m3))));
}

// Online-softmax update of one row with the scores s[0, n_pad) of a new key
// block (log2 units, -inf = invisible). In place: s becomes p = 2^(s - m_new),
// each weight vector handed to keep(p, j) to be stored at s + j.
// Updates the running max m and sum l; returns alpha = 2^(m_old - m_new), the
// factor the caller applies to the row's accumulated output.
// invariant: l = sum over keys so far of 2^(s_j - m); m = -inf while no key
// has been visible, and then l = 0 and alpha = 0 (never -inf - -inf).
template <class D, class Keep>
HWY_INLINE float OnlineSoftmaxRowKeeping(D d, const ScoreUnits& units, float* HWY_RESTRICT s,
                                         int64_t n_pad, float& m, float& l, Keep&& keep) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const RowShift shift = AdvanceRowMax(units, RowMax(d, s, n_pad), m);
  const V vm = hn::Set(d, shift.subtract);
  V vsum = hn::Zero(d);
  if (units.to_log2 == 1.0f) {
    for (int64_t j = 0; j < n_pad; j += N) {
      const V e = Exp2NonPositive(d, hn::Sub(hn::Load(d, s + j), vm));
      vsum = hn::Add(vsum, e);
      keep(e, j);
    }
  } else {
    const V to_log2 = hn::Set(d, units.to_log2);
    for (int64_t j = 0; j < n_pad; j += N) {
      const V e = Exp2NonPositive(d, hn::Mul(hn::Sub(hn::Load(d, s + j), vm), to_log2));
      vsum = hn::Add(vsum, e);
      keep(e, j);
    }
  }
  l = shift.alpha * l + hn::GetLane(hn::SumOfLanes(d, vsum));
  return shift.alpha;
}

// The same, s becoming p = 2^(s - m_new).
template <class D>
HWY_INLINE float OnlineSoftmaxRow(D d, const ScoreUnits& units, float* HWY_RESTRICT s,
                                  int64_t n_pad, float& m, float& l) {
  return OnlineSoftmaxRowKeeping(d, units, s, n_pad, m, l,
                                 [&](hn::Vec<D> p, int64_t j) { hn::Store(p, d, s + j); });
}

// Writes one finished row: o = acc / l (with the sink folded into l) in the
// storage type, lse = (m + log2 l) * ln 2. A row that saw no visible key
// (l = 0) is written as o = 0, lse = -inf, with or without a sink.
// `stream`: o's whole lines with streaming stores (StoreRowScaled).
//   acc: [head_dim_v] floats, acc = sum_j 2^(s_j - m) v_j
HWY_INLINE void StoreFinalRow(const AttentionProblem& p, const ScoreUnits& units,
                              const TileRow& row, float m, float l, const float* HWY_RESTRICT acc,
                              bool stream = false) {
  constexpr float kLn2 = 0.6931471805599453f;
  float out_scale = 0.0f, lse = -std::numeric_limits<float>::infinity();
  if (l > 0) {
    if (p.sinks) {
      const float sink = units.from_natural(p.sinks[row.head * p.sinks_stride]);
      const float m_all = std::max(m, sink);
      const float rescale = std::exp2((m - m_all) * units.to_log2);
      l = l * rescale + std::exp2((sink - m_all) * units.to_log2);
      out_scale = rescale / l;
      m = m_all;
    } else {
      out_scale = 1.0f / l;
    }
    // lse = m + ln(l) in natural units; m is in score units.
    lse = units.to_log2 == 1.0f ? (m + std::log2(l)) * kLn2 : m + std::log2(l) * kLn2;
  }
  const size_t elem = dtype_size(p.dtype);
  StoreRowScaled(acc, p.head_dim_v, out_scale, p.dtype,
                 static_cast<char*>(p.o) + p.o_stride.offset(row.batch, row.query, row.head) * elem,
                 stream);
  if (p.lse) {
    p.lse[row.batch * p.lse_stride_b + row.head * p.lse_stride_h + row.query * p.lse_stride_s] = lse;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_ONLINE_SOFTMAX_INL_H_
