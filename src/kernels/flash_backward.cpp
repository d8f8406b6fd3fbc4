// Flash backward: blocks of keys x chunks of query rows, the probabilities
// recomputed from the forward's lse (P = exp(s - lse)), so no seq_q x seq_kv
// matrix exists.
//
// Rows: a (batch, kv head) pair's query rows are its positions times the GQA
// group, stacked as in the forward (row r = position r / group, head
// kv_head * group + r % group), so one key block serves the whole group and
// dK, dV sum over the group's heads without any exchange.
//
// Per round of pairs whose packed operands fit the budget:
//   1. pack, per pair (one task each), in float32: Q (scaled into score
//      units, ScoreUnits) as row panels [head_dim][<= kMaxPanelRows] and as
//      column panels [d_pad / 2N][rows][2N]; dO the same; lse in score
//      units and D = dO . O per row; K^T as key panels [head_dim][2N] and K
//      in column panels; V^T as key panels [head_dim_v][2N]. The sinks'
//      gradient is summed here too (it needs only lse and D).
//   2. tasks = (pair, block of kBlockKeys keys), block-major, dealt
//      round-robin to the threads (reproducible bits). A task owns its keys' dK
//      and dV (float32, in scratch) and walks the chunks of kChunkRows rows
//      that see some key of the block:
//        S = Q.K^T and dP = dO.V^T (QKPanel), the score options applied per
//        row (ApplyScoreOptions, the forward's), P = 2^(S - lse),
//        dS = P (dP - D) (times 1 - tanh^2 under a softcap);
//        dQ += dS.K into the thread's own dQ accumulator (PVPanel);
//        dV += P^T.dO, dK += dS^T.Q (PVPanel reading P and dS transposed).
//      Then the block's dK and dV are scaled and stored.
//   3. dq = scale * (sum of the threads' accumulators), per row, stored.
// Every product is the forward's register-blocked micro-kernel.

#include "kernels/flash_backward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "runtime/scratch.h"
#include "runtime/threads.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/flash_backward.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/convert-inl.h"
#include "kernels/exp2-inl.h"
#include "kernels/microkernel-inl.h"
#include "kernels/online_softmax-inl.h"
#include "kernels/transpose-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

// Keys per task and query rows per chunk. A chunk's S and dP are 2 x 96 x
// 256 floats (192 KiB), the block's K (two layouts), V^T, dK and dV rows
// 5 x 256 x 128 (640 KiB at head_dim 128), a chunk's Q and dO 2 x 96 x 128
// x 2 (192 KiB, two layouts). Measured (2 threads, float32, seq 2048 unless
// said; medians of 3, two rounds): 64 / 128 / 256 keys, 32/8 heads, no
// mask, 577-613 / 579-598 / 557-570 ms; causal 128 / 256 keys 292-301 /
// 286-303; 8/8 heads, seq 1024, no mask 47.6-49.2 / 44.5-44.6. 192 rows
// per chunk measured the same as 96 (at 128 keys: 629-643 against 643-653).
constexpr int64_t kBlockKeys = 256;
constexpr int64_t kChunkRows = 96;  // a multiple of every kMaxPanelRows
static_assert(kChunkRows % kMaxPanelRows == 0);
static_assert(kBlockKeys <= kMaxBlockKv);
// A round's packs and dQ rows: within the scratch a thread keeps for its
// next call (kKeptScratchBytes), so repeated calls of one size fault no
// fresh pages in (at 64 MiB, 8/8 heads, seq 1024, one thread, page faults
// were about 5% of a call), unless a round needs more to give every
// thread kMinTasksPerThread tasks.
constexpr int64_t kPackBudgetBytes = static_cast<int64_t>(kKeptScratchBytes);
constexpr int64_t kMinTasksPerThread = 4;
// PVPanel's alpha: the products add to what their outputs hold.
constexpr float kOnes[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static_assert(kMaxPanelRows <= 12);

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

// Sizes derived once per call; offsets of one pair's packed operands.
struct Geometry {
  int64_t lanes = 0, key_panel = 0;  // N, 2N
  int64_t d_pad = 0, dv_pad = 0;     // head_dim, head_dim_v rounded up to N
  int64_t rows = 0;                  // query rows per pair: seq_q * group
  int64_t keys_pad = 0;              // seq_kv rounded up to the key panel
  int64_t blocks = 0;                // key blocks per pair
  // Floats of one pair's packed operands, in this order.
  int64_t q_panels = 0, q_cols = 0, do_panels = 0, do_cols = 0, lse = 0, dsum = 0;
  int64_t k_panels = 0, k_cols = 0, v_panels = 0;
  int64_t pair_floats = 0;
  int64_t pairs_per_round = 0;

  Geometry(const AttentionProblem& p, int threads) {
    const hn::ScalableTag<float> d;
    lanes = static_cast<int64_t>(hn::Lanes(d));
    key_panel = 2 * lanes;
    d_pad = RoundUp(p.head_dim, lanes);
    dv_pad = RoundUp(p.head_dim_v, lanes);
    rows = p.seq_q * p.group;
    keys_pad = RoundUp(p.seq_kv, key_panel);
    blocks = CeilDiv(p.seq_kv, kBlockKeys);
    q_panels = q_cols = rows * d_pad;
    do_panels = do_cols = rows * dv_pad;
    lse = dsum = RoundUp(rows, lanes);
    k_panels = k_cols = keys_pad * d_pad;
    v_panels = keys_pad * dv_pad;
    pair_floats = q_panels + q_cols + do_panels + do_cols + lse + dsum + k_panels + k_cols + v_panels;
    // A pair's packs plus each thread's dQ rows for it.
    const int64_t pair_bytes = (pair_floats + threads * rows * d_pad) * 4;
    // At least one pair per thread, a multiple of the threads: the tasks are
    // dealt round-robin, block-major, so each thread then gets the same
    // pairs' share of every block, the light and the heavy blocks of a
    // causal mask alike (one pair per round at 2 threads, 32/8 heads, seq
    // 2048, causal: 325-339 -> 374-376 ms, the first blocks to one thread).
    const int64_t for_threads = std::max<int64_t>(
        threads, CeilDiv(kMinTasksPerThread * threads, std::max<int64_t>(1, blocks)));
    const int64_t wanted = std::max(kPackBudgetBytes / std::max<int64_t>(1, pair_bytes), for_threads);
    pairs_per_round = std::clamp<int64_t>(RoundUp(wanted, threads), 1,
                                          std::max<int64_t>(1, p.batch * p.kv_heads));
  }
};

// One pair's packed operands (views into the round's buffer).
struct PairPack {
  float *q_panels, *q_cols, *do_panels, *do_cols, *lse, *dsum;
  float *k_panels, *k_cols, *v_panels;
  PairPack(const Geometry& g, float* base) {
    float* at = base;
    const auto take = [&](int64_t n) {
      float* out = at;
      at += n;
      return out;
    };
    q_panels = take(g.q_panels);
    q_cols = take(g.q_cols);
    do_panels = take(g.do_panels);
    do_cols = take(g.do_cols);
    lse = take(g.lse);
    dsum = take(g.dsum);
    k_panels = take(g.k_panels);
    k_cols = take(g.k_cols);
    v_panels = take(g.v_panels);
  }
};

// Query row r of pair (b, kvh): its position and head, and its visible keys.
TileRow MakeRow(const AttentionProblem& p, int64_t b, int64_t kvh, int64_t r) {
  TileRow row;
  row.batch = b;
  row.query = r / p.group;
  row.head = kvh * p.group + r % p.group;
  row.lo = std::max<int64_t>(0, p.key_lo(b, row.query));
  row.hi = p.key_hi(b, row.query);
  return row;
}

// rows [n][dim] (row-major, dim_pad apart) -> panels: the panel of rows
// [r0, r0 + kr) (r0 a multiple of kMaxPanelRows, kr = the rows left, at most
// kMaxPanelRows) stored at panels + r0 * dim_pad as [dim][kr], QKPanel's q.
void RowsToPanels(const float* HWY_RESTRICT rows, int64_t n, int64_t dim, int64_t dim_pad,
                  float* HWY_RESTRICT panels) {
  for (int64_t r0 = 0; r0 < n; r0 += kMaxPanelRows) {
    const int64_t kr = std::min<int64_t>(kMaxPanelRows, n - r0);
    float* panel = panels + r0 * dim_pad;
    int64_t c0 = 0;  // columns below c0 are done
#if HWY_TARGET == HWY_AVX3
    static_assert(kMaxPanelRows <= 16, "a panel's rows fit one 16 x 16 transpose");
    for (; c0 + 16 <= dim; c0 += 16) {
      Transpose16x16(reinterpret_cast<const uint32_t*>(rows + r0 * dim_pad + c0), dim_pad,
                     reinterpret_cast<uint32_t*>(panel + c0 * kr), kr, static_cast<int>(kr));
    }
#endif
    for (int64_t r = 0; r < kr; ++r) {
      const float* row = rows + (r0 + r) * dim_pad;
      for (int64_t c = c0; c < dim; ++c) panel[c * kr + r] = row[c];
    }
  }
}

// rows [keys_pad][dim] -> key panels [dim][2N] at panels + j * dim for each
// panel start j (QKPanel's kt).
void RowsToKeyPanels(const float* HWY_RESTRICT rows, int64_t keys_pad, int64_t key_panel,
                     int64_t dim, int64_t dim_pad, float* HWY_RESTRICT panels) {
  for (int64_t j0 = 0; j0 < keys_pad; j0 += key_panel) {
    float* panel = panels + j0 * dim;
    int64_t c0 = 0;  // columns below c0 are done
#if HWY_TARGET == HWY_AVX3
    for (; c0 + 16 <= dim; c0 += 16) {
      for (int64_t l = 0; l < key_panel; l += 16) {
        Transpose16x16(reinterpret_cast<const uint32_t*>(rows + (j0 + l) * dim_pad + c0), dim_pad,
                       reinterpret_cast<uint32_t*>(panel + c0 * key_panel + l), key_panel);
      }
    }
#endif
    for (int64_t l = 0; l < key_panel; ++l) {
      const float* row = rows + (j0 + l) * dim_pad;
      for (int64_t c = c0; c < dim; ++c) panel[c * key_panel + l] = row[c];
    }
  }
}

// rows [n][dim_pad] -> column panels: columns [c, c + w) of every row
// stored together as [n][w] at cols + c * n (w = 2N, or N for the last
// panel of an odd multiple of N): PVPanel's v, read as one contiguous run.
void RowsToColumnPanels(const float* HWY_RESTRICT rows, int64_t n, int64_t dim_pad,
                        int64_t key_panel, float* HWY_RESTRICT cols) {
  for (int64_t c = 0; c < dim_pad; c += key_panel) {
    const int64_t w = std::min(key_panel, dim_pad - c);
    float* panel = cols + c * n;
    for (int64_t r = 0; r < n; ++r) std::copy(rows + r * dim_pad + c, rows + r * dim_pad + c + w, panel + r * w);
  }
}

// Packs pair (b, kvh): see the file comment. `tmp`: scratch of
// max(rows, keys_pad) * max(d_pad, dv_pad) floats (rows before their
// rearrangement). Adds the pair's rows' share of dL/dsink to dsink_part[h]
// for its heads.
void PackPair(const BackwardProblem& bp, const Geometry& g, const ScoreUnits& units, int64_t b,
              int64_t kvh, const PairPack& pk, float* HWY_RESTRICT tmp, double* dsink_part) {
  const AttentionProblem& p = bp.fwd;
  const int64_t keys = p.keys(b);
  const size_t elem = dtype_size(p.dtype);
  const auto row_of = [&](const void* base, const Bshd& stride, int64_t i, int64_t h) {
    return static_cast<const char*>(base) + stride.offset(b, i, h) * elem;
  };
  // Q, scaled into score units.
  for (int64_t r = 0; r < g.rows; ++r) {
    const int64_t i = r / p.group, h = kvh * p.group + r % p.group;
    float* q = tmp + r * g.d_pad;
    LoadRowScaled(p.dtype, row_of(p.q, p.q_stride, i, h), p.head_dim, units.q_scale, q);
    std::fill(q + p.head_dim, q + g.d_pad, 0.0f);
  }
  RowsToPanels(tmp, g.rows, p.head_dim, g.d_pad, pk.q_panels);
  RowsToColumnPanels(tmp, g.rows, g.d_pad, g.key_panel, pk.q_cols);
  // dO; lse and D = dO . O per row.
  std::vector<float> o_row(static_cast<size_t>(g.dv_pad));
  for (int64_t r = 0; r < g.rows; ++r) {
    const int64_t i = r / p.group, h = kvh * p.group + r % p.group;
    float* dout = tmp + r * g.dv_pad;
    LoadRowScaled(p.dtype, row_of(bp.dout, bp.dout_stride, i, h), p.head_dim_v, 1.0f, dout);
    std::fill(dout + p.head_dim_v, dout + g.dv_pad, 0.0f);
    LoadRowScaled(p.dtype, row_of(p.o, p.o_stride, i, h), p.head_dim_v, 1.0f, o_row.data());
    double dsum = 0;
    for (int64_t c = 0; c < p.head_dim_v; ++c) dsum += static_cast<double>(dout[c]) * o_row[c];
    const float lse = p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i * p.lse_stride_s];
    // An empty row (lse = -inf) gets +inf: every 2^(s - lse) is then 0.
    pk.lse[r] = lse == -std::numeric_limits<float>::infinity()
                    ? std::numeric_limits<float>::infinity()
                    : units.from_natural(lse);
    pk.dsum[r] = static_cast<float>(dsum);
    if (p.sinks && std::isfinite(lse)) {
      dsink_part[h] -= std::exp(static_cast<double>(p.sinks[h * p.sinks_stride]) - lse) * dsum;
    }
  }
  RowsToPanels(tmp, g.rows, p.head_dim_v, g.dv_pad, pk.do_panels);
  RowsToColumnPanels(tmp, g.rows, g.dv_pad, g.key_panel, pk.do_cols);
  // K and V; keys past keys(b) are zeros.
  const auto load_keys = [&](bool values, int64_t dim, int64_t dim_pad) {
    for (int64_t j = 0; j < g.keys_pad; ++j) {
      float* row = tmp + j * dim_pad;
      if (j < keys) {
        LoadRowScaled(p.kv_dtype, (values ? p.value_row(b, j, kvh) : p.key_row(b, j, kvh)).data, dim,
                      1.0f, row);
        std::fill(row + dim, row + dim_pad, 0.0f);
      } else {
        std::fill(row, row + dim_pad, 0.0f);
      }
    }
  };
  load_keys(false, p.head_dim, g.d_pad);
  RowsToKeyPanels(tmp, g.keys_pad, g.key_panel, p.head_dim, g.d_pad, pk.k_panels);
  RowsToColumnPanels(tmp, g.keys_pad, g.d_pad, g.key_panel, pk.k_cols);
  load_keys(true, p.head_dim_v, g.dv_pad);
  RowsToKeyPanels(tmp, g.keys_pad, g.key_panel, p.head_dim_v, g.dv_pad, pk.v_panels);
}

// Per-thread scratch for one task.
struct Scratch {
  hwy::AlignedFreeUniquePtr<float[]> s, dp, u, dk, dv;
  hwy::AlignedFreeUniquePtr<TileRow[]> rows;
  Scratch(const Geometry& g)
      : s(hwy::AllocateAligned<float>(kChunkRows * kScoreStride)),
        dp(hwy::AllocateAligned<float>(kChunkRows * kScoreStride)),
        u(hwy::AllocateAligned<float>(kChunkRows * kScoreStride)),
        dk(hwy::AllocateAligned<float>(kBlockKeys * g.d_pad)),
        dv(hwy::AllocateAligned<float>(kBlockKeys * g.dv_pad)),
        rows(hwy::AllocateAligned<TileRow>(kChunkRows)) {}
};

// o[r][0, dim_pad) += sum_{j < n} a[r][j] * b[first + j][0, dim_pad) for
// r < n_out (a[r][j] at a + r * kAStride + j * kAStep; o's rows dim_pad
// apart), b in column panels of `b_rows` rows (RowsToColumnPanels).
// Column panel by column panel (two vectors wide, one in a last narrow
// panel), and in each every panel of kMaxPanelRows outputs (PVPanel): the
// column panel's n rows of b stay in L1 for all of them. (Output panels
// outside, the column panels inside, re-read all of b from L2 per output
// panel: the same time, 2 threads, 32/8 heads, seq 2048, no mask.)
template <int64_t kAStride, int64_t kAStep, class D>
HWY_INLINE void AccumulateProducts(D d, const float* HWY_RESTRICT a, int64_t n_out,
                                   const float* HWY_RESTRICT b_cols, int64_t b_rows, int64_t first,
                                   int64_t n, int64_t dim_pad, float* HWY_RESTRICT o) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t c = 0; c < dim_pad; c += 2 * N) {
    const bool wide = c + 2 * N <= dim_pad;
    const float* v = b_cols + c * b_rows + first * (wide ? 2 * N : N);
    for (int64_t t = 0; t < n_out; t += kMaxPanelRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxPanelRows, n_out - t));
      WithPanelRows(rows, [&](auto kRows) {
        if (wide) {
          PVPanel<kRows(), 2, kAStride, kAStep>(d, a + t * kAStride, v, 2 * N, n, kOnes,
                                                o + t * dim_pad + c, dim_pad);
        } else {
          PVPanel<kRows(), 1, kAStride, kAStep>(d, a + t * kAStride, v, N, n, kOnes,
                                                o + t * dim_pad + c, dim_pad);
        }
      });
    }
  }
}

// The rows [r0, r0 + n_rows) of pair (b, kvh) against keys [j0, j0 + n):
// dQ rows (dq_acc, [rows][d_pad]) and the block's dK, dV (w.dk, w.dv, keys
// from j0) accumulated.
void RunChunk(const BackwardProblem& bp, const Geometry& g, const ScoreUnits& units,
              const PairPack& pk, int64_t r0, int64_t n_rows, int64_t j0, int64_t n,
              bool interval_mask, float* HWY_RESTRICT dq_acc, Scratch& w) {
  const AttentionProblem& p = bp.fwd;
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t N = g.lanes;
  const int64_t n_pad = RoundUp(n, g.key_panel);

  // 1. S = Q.K^T, dP = dO.V^T, panel by panel. Meanwhile the chunk's dQ
  //    rows (step 3 adds to them; they were last touched a block ago, so
  //    lie in L3 or memory) are requested, a share per key panel: without,
  //    step 3 waited on each panel's first loads of them.
  const char* dq_lines = reinterpret_cast<const char*>(dq_acc + r0 * g.d_pad);
  const int64_t dq_bytes = n_rows * g.d_pad * 4;
  const int64_t steps = CeilDiv(n_rows, kMaxPanelRows) * (n_pad / g.key_panel);
  const int64_t per_step = RoundUp(CeilDiv(dq_bytes, steps), 64);
  int64_t requested = 0;
  for (int64_t t = 0; t < n_rows; t += kMaxPanelRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kMaxPanelRows, n_rows - t));
    WithPanelRows(rows, [&](auto kRows) {
      const float* q = pk.q_panels + (r0 + t) * g.d_pad;
      const float* dout = pk.do_panels + (r0 + t) * g.dv_pad;
      for (int64_t kp = 0; kp < n_pad; kp += g.key_panel) {
        for (const int64_t end = std::min(dq_bytes, requested + per_step); requested < end; requested += 64) {
          hwy::Prefetch(dq_lines + requested);
        }
        QKPanel<kRows()>(d, q, pk.k_panels + (j0 + kp) * p.head_dim, p.head_dim,
                         w.s.get() + t * kScoreStride + kp);
        QKPanel<kRows()>(d, dout, pk.v_panels + (j0 + kp) * p.head_dim_v, p.head_dim_v,
                         w.dp.get() + t * kScoreStride + kp);
      }
    });
  }

  // 2. Per row: the options, P = 2^(S - lse) (in s), dS (in dp).
  const V to_log2 = hn::Set(d, units.to_log2);
  const V zero = hn::Zero(d);
  const V one = hn::Set(d, 1.0f);
  const V inv_cap = hn::Set(d, p.softcap > 0 ? 1.0f / p.softcap : 0.0f);
  for (int64_t r = 0; r < n_rows; ++r) {
    float* s = w.s.get() + r * kScoreStride;
    float* dp = w.dp.get() + r * kScoreStride;
    float* u = w.u.get() + r * kScoreStride;
    if (p.softcap > 0) std::copy(s, s + n_pad, u);
    ApplyScoreOptions(d, p, units, w.rows[r], j0, n, n_pad, interval_mask, s);
    const V lse = hn::Set(d, pk.lse[r0 + r]);
    const V dsum = hn::Set(d, pk.dsum[r0 + r]);
    for (int64_t j = 0; j < n_pad; j += N) {
      const V x = hn::Min(hn::Mul(hn::Sub(hn::Load(d, s + j), lse), to_log2), zero);
      const V prob = Exp2NonPositive(d, x);
      V ds = hn::Mul(prob, hn::Sub(hn::Load(d, dp + j), dsum));
      if (p.softcap > 0) {
        const V t = hn::Tanh(d, hn::Mul(hn::Load(d, u + j), inv_cap));
        ds = hn::Mul(ds, hn::NegMulAdd(t, t, one));
      }
      hn::Store(prob, d, s + j);
      hn::Store(ds, d, dp + j);
    }
  }

  // 3. dQ += dS.K (scaled at the end).
  AccumulateProducts<kScoreStride, 1>(d, w.dp.get(), n_rows, pk.k_cols, g.keys_pad, j0, n, g.d_pad,
                                      dq_acc + r0 * g.d_pad);

  // 4. dV += P^T.dO, dK += dS^T.Q, P and dS read transposed in place: a key
  //    panel's weights for one row are adjacent floats. (Turning P and dS
  //    around first, into rows of keys, made each step's 12 broadcasts
  //    read 12 lines instead of one: 32/8 heads, seq 2048, no mask, 2
  //    threads, 566-582 -> 547-567 ms.)
  AccumulateProducts<1, kScoreStride>(d, w.s.get(), n, pk.do_cols, g.rows, r0, n_rows, g.dv_pad,
                                      w.dv.get());
  AccumulateProducts<1, kScoreStride>(d, w.dp.get(), n, pk.q_cols, g.rows, r0, n_rows, g.d_pad,
                                      w.dk.get());
}

// One task: key block `block` of pair (b, kvh), every row that sees it.
void RunBlock(const BackwardProblem& bp, const Geometry& g, const ScoreUnits& units,
              const PairPack& pk, int64_t b, int64_t kvh, int64_t block, float* HWY_RESTRICT dq_acc,
              Scratch& w) {
  const AttentionProblem& p = bp.fwd;
  const int64_t j0 = block * kBlockKeys;
  const int64_t j1 = std::min(j0 + kBlockKeys, p.seq_kv);
  std::fill(w.dk.get(), w.dk.get() + kBlockKeys * g.d_pad, 0.0f);
  std::fill(w.dv.get(), w.dv.get() + kBlockKeys * g.dv_pad, 0.0f);
  const int64_t block_end = std::min(j1, p.keys(b));
  if (block_end > j0) {
    for (int64_t r0 = 0; r0 < g.rows; r0 += kChunkRows) {
      const int64_t n_rows = std::min(kChunkRows, g.rows - r0);
      for (int64_t r = 0; r < n_rows; ++r) w.rows[r] = MakeRow(p, b, kvh, r0 + r);
      const BlockKeys keys = RowsBlockKeys(w.rows.get(), n_rows, j0, block_end);
      if (keys.end == j0) continue;  // no row of the chunk sees a key of the block
      RunChunk(bp, g, units, pk, r0, n_rows, j0, keys.end - j0, !keys.all_full, dq_acc, w);
    }
  }
  // dk = scale * sum du q: the packed Q carried q_scale.
  const size_t elem = dtype_size(p.dtype);
  const float dk_scale = p.scale / units.q_scale;
  for (int64_t j = j0; j < j1; ++j) {
    StoreRowScaled(w.dk.get() + (j - j0) * g.d_pad, p.head_dim, dk_scale, p.dtype,
                   static_cast<char*>(bp.dk) + bp.dk_stride.offset(b, j, kvh) * elem);
    StoreRowScaled(w.dv.get() + (j - j0) * g.dv_pad, p.head_dim_v, 1.0f, p.dtype,
                   static_cast<char*>(bp.dv) + bp.dv_stride.offset(b, j, kvh) * elem);
  }
}

// Row r of pair (b, kvh): dq = scale * the sum of the team's dQ rows (the
// first at dq, the others dq_floats apart), stored. Not inlined: Clang 14
// crashed (x86 instruction selection, a bfloat16 pack on the SSE targets)
// compiling the store inside the parallel region's function.
HWY_NOINLINE void StoreDqRow(const BackwardProblem& bp, const Geometry& g, int64_t b, int64_t kvh,
                             int64_t r, const float* dq, int64_t dq_floats, int team,
                             float* HWY_RESTRICT sum) {
  const AttentionProblem& p = bp.fwd;
  std::copy(dq, dq + g.d_pad, sum);
  for (int other = 1; other < team; ++other) {
    const float* part = dq + other * dq_floats;
    for (int64_t c = 0; c < g.d_pad; ++c) sum[c] += part[c];
  }
  const int64_t i = r / p.group, h = kvh * p.group + r % p.group;
  StoreRowScaled(sum, p.head_dim, p.scale, p.dtype,
                 static_cast<char*>(bp.dq) + bp.dq_stride.offset(b, i, h) * dtype_size(p.dtype));
}

}  // namespace

void FlashBackwardImpl(const BackwardProblem& bp) {
  const AttentionProblem& p = bp.fwd;
  const ScoreUnits units(p);
  // Below about a million multiply-adds the call runs on the calling thread
  // (as the forward's dispatch decides).
  const double work = static_cast<double>(p.batch) * p.heads * p.seq_q * p.seq_kv *
                      (p.head_dim + p.head_dim_v);
  const int threads = work < double{1 << 20} ? 1 : p.num_threads;
  const Geometry g(p, threads);
  const int64_t pairs = p.batch * p.kv_heads;
  const int64_t dq_floats = g.pairs_per_round * g.rows * g.d_pad;  // per thread
  // PackPair's rows before their rearrangement, per thread.
  const int64_t tmp_floats = RoundUp(std::max(g.rows, g.keys_pad) * std::max(g.d_pad, g.dv_pad), 16);
  // Allocated before the parallel region, so std::bad_alloc reaches the caller.
  const ScratchLease pack_lease =
      acquire_scratch(static_cast<size_t>(g.pairs_per_round * g.pair_floats +
                                          threads * (dq_floats + tmp_floats)));
  float* const pack = pack_lease.data;
  float* const dq_acc = pack + g.pairs_per_round * g.pair_floats;
  std::vector<double> dsink_part(static_cast<size_t>(p.batch * p.heads), 0.0);

#pragma omp parallel num_threads(threads)
  {
    ScopedFlushDenormals flush_denormals;
    Scratch w(g);
    auto sum = hwy::AllocateAligned<float>(g.d_pad);
    const int me = omp_get_thread_num();
    const int team = omp_get_num_threads();  // (OpenMP may give fewer than asked)
    float* const my_dq = dq_acc + me * dq_floats;
    float* const tmp = dq_acc + threads * dq_floats + me * tmp_floats;
    for (int64_t first = 0; first < pairs; first += g.pairs_per_round) {
      const int64_t count = std::min(g.pairs_per_round, pairs - first);
      std::fill(my_dq, my_dq + count * g.rows * g.d_pad, 0.0f);
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < count; ++t) {
        const int64_t pair = first + t;
        PackPair(bp, g, units, pair / p.kv_heads, pair % p.kv_heads,
                 PairPack(g, pack + t * g.pair_floats), tmp,
                 dsink_part.data() + (pair / p.kv_heads) * p.heads);
      }
      // (implicit barrier: every pair packed)
      // Round-robin over the tasks, block-major (the first blocks see the
      // most rows under a causal mask, and each thread takes every
      // threads-th): which thread adds which block into its dQ is fixed, so
      // a call's results are the same bits on every run with the same
      // number of threads.
#pragma omp for schedule(static, 1)
      for (int64_t t = 0; t < count * g.blocks; ++t) {
        const int64_t slot = t % count, block = t / count;
        const int64_t pair = first + slot;
        RunBlock(bp, g, units, PairPack(g, pack + slot * g.pair_floats), pair / p.kv_heads,
                 pair % p.kv_heads, block, my_dq + slot * g.rows * g.d_pad, w);
      }
#pragma omp for schedule(static)
      for (int64_t t = 0; t < count * g.rows; ++t) {
        const int64_t pair = first + t / g.rows;
        StoreDqRow(bp, g, pair / p.kv_heads, pair % p.kv_heads, t % g.rows, dq_acc + t * g.d_pad,
                   dq_floats, team, sum.get());
      }
    }
  }
  if (bp.dsinks) {
    for (int64_t h = 0; h < p.heads; ++h) {
      double sum = 0;
      for (int64_t b = 0; b < p.batch; ++b) sum += dsink_part[b * p.heads + h];
      bp.dsinks[h * bp.dsinks_stride] = static_cast<float>(sum);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {

HWY_EXPORT(FlashBackwardImpl);

void flash_backward(const BackwardProblem& problem) {
  HWY_DYNAMIC_DISPATCH(FlashBackwardImpl)(problem);
}

}  // namespace qkv::internal
#endif  // HWY_ONCE
