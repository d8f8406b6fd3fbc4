// Flash forward: tiles of query rows x key blocks with an online softmax, so
// the seq_q x seq_kv score matrix never exists.
//
// Loop order (run_pairs): many small (batch, kv head) pairs take one pair per
// task (pack it, then all of its tiles, on one thread); otherwise, for each
// round of pairs whose packed K/V fit the pack budget:
//   1. pack K^T as [seq_kv / 2N][head_dim][2N] and V as column panels
//      [head_dim_v / 2N][seq_kv][2N] (head_dim_v rounded up to N), converted
//      to float32, once per (batch, kv head);
//   2. tasks = (kv head, query tile), heaviest causal tiles first, dynamic
//      schedule. A task's rows are the query positions of its tile times the
//      GQA group (row r = position (r / group), head kv_head * group + r % group),
//      so one K/V block in L2 serves the whole group.
//      for each key block [k0, k1) visible to some row of the tile:
//        for each panel of <= 6 rows (12 with 32 registers):  S = Q.K^T (QKPanel), options and
//          online softmax per row, O = alpha * O + P.V (PVPanel)
//   3. normalize once per row: O /= l, lse = (m + log2 l) * ln 2.
// Tile sizes: block_kv keys of K plus V take about a quarter of the L2 (128
// KiB at head_dim 128 in a 512 KiB L2) and the tile's Q and O (96 rows) 96
// KiB: the working set stays in L2 (see kTargetTileRows for long sequences).
// Extra memory: the packed K/V of one round (<= 8 MiB unless a single head
// needs more) plus O(tile) scratch per thread.

#include "kernels/flash_forward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/pack_tasks.h"
#include "runtime/caches.h"
#include "runtime/scratch.h"
#include "runtime/stream_output.h"
#include "runtime/threads.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/flash_forward.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "kernels/convert-inl.h"
#include "kernels/microkernel-inl.h"
#include "kernels/online_softmax-inl.h"
#include "kernels/transpose-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

constexpr int64_t kPackBudgetBytes = int64_t{8} << 20;
constexpr int64_t kPackChunkKeys = 512;  // keys x kv heads per packing task (PackTasks)
// Rows (positions x group) per task: 96 keeps a tile's Q and O next to a K/V
// block in a 512 KiB L2. When one head's packed K/V is past the L2, every
// tile streams it from the last-level cache, and twice the rows halve that
// where their Q and O still take at most an eighth of the L2 (2 MiB L2, 2
// threads, seq 2048-4096, float32, 32/8 and 32/32 heads: 1-3% faster, except
// 32/32 causal at 2048, the same; at seq 512-1024, where the pair fits the
// L2, up to 1% slower). When it no longer fits the caches (> 8 MiB), every
// tile streams it from memory, and 4x the rows per tile cut that traffic 4x
// (measured at seq 32K, 8/2 heads, causal: 240 -> 292 GFLOP/s).
constexpr int64_t kTargetTileRows = 96;
constexpr int64_t kMidTileRows = 192;
constexpr int64_t kLongTileRows = 384;
constexpr int64_t kLongKvBytes = int64_t{8} << 20;

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

// Sizes derived once per call.
struct Geometry {
  int64_t lanes = 0;        // N
  int64_t key_panel = 0;    // 2N keys per packed K panel
  int64_t dv_pad = 0;       // head_dim_v rounded up to N
  int64_t block_q = 0;      // query positions per task
  int64_t block_kv = 0;     // keys per block, a multiple of key_panel
  int64_t tile_rows = 0;    // block_q * group
  int64_t q_tiles = 0;      // per (batch, kv head)
  int64_t k_floats = 0;     // packed K per (batch, kv head)
  int64_t v_floats = 0;     // packed V per (batch, kv head)
  int64_t heads_per_round = 0;
  bool stream_o = false;    // o written with streaming stores (runtime/stream_output.h)

  explicit Geometry(const AttentionProblem& p) {
    const hn::ScalableTag<float> d;
    lanes = static_cast<int64_t>(hn::Lanes(d));
    key_panel = 2 * lanes;
    dv_pad = RoundUp(p.head_dim_v, lanes);
    if (p.tiling.block_q > 0) {
      block_q = p.tiling.block_q;
    } else {
      const int64_t kv_bytes = p.seq_kv * (p.head_dim + p.head_dim_v) * 4;
      const bool mid = kv_bytes >= l2_cache_bytes() &&
                       kMidTileRows * (p.head_dim + p.head_dim_v) * 4 <= l2_cache_bytes() / 8;
      const int64_t rows = kv_bytes > kLongKvBytes ? kLongTileRows
                           : mid                   ? kMidTileRows
                                                   : kTargetTileRows;
      block_q = std::max<int64_t>(1, rows / p.group);
    }
    block_q = std::max<int64_t>(1, std::min(block_q, p.seq_q));
    // A K/V block of about a quarter of the L2 (128 keys at head_dim 128 in
    // 512 KiB, 512 in 2 MiB): the tile's Q, O and the next block fit beside
    // it, and longer blocks spread each row's softmax bookkeeping (max and
    // sum reductions, rescale) over more keys (8/8 heads, seq 1024, no mask,
    // 2 threads, 2 MiB L2: 512 keys about 5% faster than 128).
    const int64_t auto_kv = std::clamp<int64_t>(
        l2_cache_bytes() / 4 / (4 * std::max<int64_t>(1, p.head_dim + p.head_dim_v)), 32, 512);
    block_kv = std::min(kMaxBlockKv,
                        RoundUp(p.tiling.block_kv > 0 ? p.tiling.block_kv : auto_kv, key_panel));
    tile_rows = block_q * p.group;
    q_tiles = CeilDiv(p.seq_q, block_q);
    k_floats = RoundUp(p.seq_kv, key_panel) * p.head_dim;
    v_floats = p.seq_kv * dv_pad;
    const int64_t head_bytes = std::max<int64_t>(1, (k_floats + v_floats) * 4);
    heads_per_round = std::clamp<int64_t>(kPackBudgetBytes / head_bytes, 1,
                                          std::max<int64_t>(1, p.batch * p.kv_heads));
    stream_o = stream_output(p.o_bytes());
  }
};

// Packs the key panel [jp, jp + 2N) of one (batch, kv head) (keys past
// keys(b) become zeros): K^T panel and V column panels. The keys are widened
// into `rows` [2N][head_dim] first, then written out transposed in order:
// sequential stores instead of one cache line per scattered element.
void PackPanel(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t kvh, int64_t jp,
               float* HWY_RESTRICT kt, float* HWY_RESTRICT vp, float* HWY_RESTRICT rows) {
  const int64_t kp = g.key_panel;
  const int64_t n = std::min(kp, p.keys(b) - jp);  // < kp only in the last panel
  float* vrow = rows + kp * p.head_dim;
  for (int64_t l = 0; l < kp; ++l) {
    float* row = rows + l * p.head_dim;
    if (l < n) {
      const AttentionProblem::Row key = p.key_row(b, jp + l, kvh);
      LoadRowScaled(p.kv_dtype, key.data, p.head_dim, key.scale, row);
    } else {
      std::fill(row, row + p.head_dim, 0.0f);
    }
  }
  float* panel = kt + (jp / kp) * p.head_dim * kp;
  int64_t c0 = 0;  // columns below c0 are done
#if HWY_TARGET == HWY_AVX3
  // 16 x 16 blocks in registers (kp = 32 here): the scalar loop below
  // moves one float per instruction.
  for (; c0 + 16 <= p.head_dim; c0 += 16) {
    for (int64_t l = 0; l < kp; l += 16) {
      Transpose16x16(reinterpret_cast<const uint32_t*>(rows + l * p.head_dim + c0), p.head_dim,
                     reinterpret_cast<uint32_t*>(panel + c0 * kp + l), kp);
    }
  }
#endif
  for (int64_t c = c0; c < p.head_dim; ++c) {
    for (int64_t l = 0; l < kp; ++l) panel[c * kp + l] = rows[l * p.head_dim + c];
  }
  // V in column panels: columns [c, c + w) of every key stored together as
  // [seq_kv][w] at vp + c * seq_kv, so P.V streams one contiguous panel.
  for (int64_t j = jp; j < jp + n; ++j) {
    const AttentionProblem::Row value = p.value_row(b, j, kvh);
    LoadRowScaled(p.kv_dtype, value.data, p.head_dim_v, value.scale, vrow);
    std::fill(vrow + p.head_dim_v, vrow + g.dv_pad, 0.0f);
    for (int64_t c = 0; c < g.dv_pad; c += kp) {
      const int64_t w = std::min(kp, g.dv_pad - c);
      std::copy(vrow + c, vrow + c + w, vp + c * p.seq_kv + j * w);
    }
  }
}

// Packs keys [j0, min(j1, keys(b))) of kv heads [h0, h1) of batch b, head h
// at base + (h - h0) * head_floats (K^T, then V). j0 is a multiple of the key
// panel. Panel by panel, every head in turn (walk_pack_steps).
void PackKeys(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t h0, int64_t h1,
              int64_t j0, int64_t j1, float* HWY_RESTRICT base, int64_t head_floats,
              float* HWY_RESTRICT rows) {
  const int64_t keys = p.keys(b);
  walk_pack_steps(p, b, h0, h1, j0, std::min(j1, keys), g.key_panel, keys,
                  [&](int64_t jp, int64_t h) {
                    float* kt = base + (h - h0) * head_floats;
                    PackPanel(p, g, b, h, jp, kt, kt + g.k_floats, rows);
                  });
}

// panel[c][r] = rows[r][c] for r < panel_rows <= kMaxPanelRows, c < head_dim:
// a tile's Q panel, as QKPanel reads it. (Element by element, the stores of a
// 96-row tile took 3-6% of a call's time at seq 512-1024.)
//   rows: [panel_rows][head_dim]; panel: [head_dim][panel_rows]
HWY_INLINE void TransposePanel(const float* HWY_RESTRICT rows, int64_t panel_rows, int64_t head_dim,
                               float* HWY_RESTRICT panel) {
  int64_t c0 = 0;  // columns below c0 are done
#if HWY_TARGET == HWY_AVX3
  static_assert(kMaxPanelRows <= 16, "a panel's rows fit one 16 x 16 transpose");
  for (; c0 + 16 <= head_dim; c0 += 16) {
    Transpose16x16(reinterpret_cast<const uint32_t*>(rows + c0), head_dim,
                   reinterpret_cast<uint32_t*>(panel + c0 * panel_rows), panel_rows,
                   static_cast<int>(panel_rows));
  }
#endif
  for (int64_t r = 0; r < panel_rows; ++r) {
    for (int64_t c = c0; c < head_dim; ++c) panel[c * panel_rows + r] = rows[r * head_dim + c];
  }
}

// Per-thread scratch, sized for one tile.
struct Scratch {
  hwy::AlignedFreeUniquePtr<float[]> q, o, s, row;
  hwy::AlignedFreeUniquePtr<float[]> m, l, alpha;
  hwy::AlignedFreeUniquePtr<TileRow[]> rows;

  Scratch(const AttentionProblem& p, const Geometry& g)
      : q(hwy::AllocateAligned<float>(g.tile_rows * p.head_dim)),
        o(hwy::AllocateAligned<float>(g.tile_rows * g.dv_pad)),
        s(hwy::AllocateAligned<float>(kMaxPanelRows * kScoreStride)),
        // PackPanel's key rows and a value row, or a Q panel's rows.
        row(hwy::AllocateAligned<float>(std::max<int64_t>(g.key_panel, kMaxPanelRows) * p.head_dim +
                                        g.dv_pad)),
        m(hwy::AllocateAligned<float>(g.tile_rows)),
        l(hwy::AllocateAligned<float>(g.tile_rows)),
        alpha(hwy::AllocateAligned<float>(g.tile_rows)),
        rows(hwy::AllocateAligned<TileRow>(g.tile_rows)) {}
};

// One task: query positions [q0, q1) of all heads of kv head `kvh`.
void RunTile(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t kvh, int64_t tile,
             const float* HWY_RESTRICT kt, const float* HWY_RESTRICT vp, Scratch& w) {
  const hn::ScalableTag<float> d;
  const int64_t q0 = tile * g.block_q;
  const int64_t q1 = std::min(q0 + g.block_q, p.seq_q);
  const int64_t n_rows = (q1 - q0) * p.group;
  const size_t elem = dtype_size(p.dtype);
  const ScoreUnits units(p);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  // 1. Rows: position, head, visible interval; packed scaled Q; empty state.
  //    The tile's Q rows are prefetched first: with one head per row group
  //    they lie a whole token apart, and loading them one by one waits on
  //    memory row after row.
  const KeyRange keys = SetTileRows(p, b, kvh, q0, n_rows, w.rows.get());
  const int64_t key_begin = keys.begin, key_end = keys.end;
  const auto q_row = [&](const TileRow& row) {
    return static_cast<const char*>(p.q) + p.q_stride.offset(b, row.query, row.head) * elem;
  };
  for (int64_t r = 0; r < n_rows; ++r) {
    const char* q = q_row(w.rows[r]);
    for (int64_t at = 0; at < p.head_dim * static_cast<int64_t>(elem); at += 64) hwy::Prefetch(q + at);
  }
  // Q panels of kMaxPanelRows rows, each stored transposed: [head_dim][panel
  // rows]; the panel's rows are widened and scaled into w.row first.
  for (int64_t r0 = 0; r0 < n_rows; r0 += kMaxPanelRows) {
    const int64_t panel_rows = std::min<int64_t>(kMaxPanelRows, n_rows - r0);
    float* rows = w.row.get();  // [panel_rows][head_dim]
    for (int64_t r = 0; r < panel_rows; ++r) {
      LoadRowScaled(p.dtype, q_row(w.rows[r0 + r]), p.head_dim, units.q_scale, rows + r * p.head_dim);
      w.m[r0 + r] = neg_inf;
      w.l[r0 + r] = 0.0f;
    }
    TransposePanel(rows, panel_rows, p.head_dim, w.q.get() + r0 * p.head_dim);
  }
  std::fill(w.o.get(), w.o.get() + n_rows * g.dv_pad, 0.0f);

  // 2. Key blocks, aligned to packed panels, covering every visible key;
  //    each panel takes a block's keys up to the last one its rows see.
  const bool plain = p.softcap == 0 && !p.has_alibi() && !p.has_mask();
  for (int64_t k0 = key_begin / g.key_panel * g.key_panel; k0 < key_end; k0 += g.block_kv) {
    const int64_t block_end = std::min(k0 + g.block_kv, key_end);
    for (int64_t r0 = 0; r0 < n_rows; r0 += kMaxPanelRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxPanelRows, n_rows - r0));
      const BlockKeys panel_keys = RowsBlockKeys(w.rows.get() + r0, rows, k0, block_end);
      if (panel_keys.end == k0) continue;  // no row of the panel sees a key of the block
      const bool all_full = panel_keys.all_full;
      const int64_t n = panel_keys.end - k0;
      const int64_t n_pad = RoundUp(n, g.key_panel);
      float* s = w.s.get();
      WithPanelRows(rows, [&](auto kRows) {
        for (int64_t j = 0; j < n_pad; j += g.key_panel) {
          QKPanel<kRows()>(d, w.q.get() + r0 * p.head_dim, kt + (k0 + j) * p.head_dim,
                           p.head_dim, s + j);
        }
      });
      for (int r = 0; r < rows; ++r) {
        float* sr = s + r * kScoreStride;
        if (!plain || !all_full || n < n_pad) {
          ApplyScoreOptions(d, p, units, w.rows[r0 + r], k0, n, n_pad, !all_full, sr);
        }
        w.alpha[r0 + r] = OnlineSoftmaxRow(d, units, sr, n_pad, w.m[r0 + r], w.l[r0 + r]);
      }
      WithPanelRows(rows, [&](auto kRows) {
        float* o = w.o.get() + r0 * g.dv_pad;
        const float* alpha = w.alpha.get() + r0;
        int64_t c = 0;
        for (; c + 2 * g.lanes <= g.dv_pad; c += 2 * g.lanes) {
          const float* v = vp + c * p.seq_kv + k0 * 2 * g.lanes;
          PVPanel<kRows(), 2>(d, s, v, 2 * g.lanes, n, alpha, o + c, g.dv_pad);
        }
        if (c < g.dv_pad) {
          const float* v = vp + c * p.seq_kv + k0 * g.lanes;
          PVPanel<kRows(), 1>(d, s, v, g.lanes, n, alpha, o + c, g.dv_pad);
        }
      });
    }
  }

  // 3. Normalize once; fold in the sink; store O and LSE.
  for (int64_t r = 0; r < n_rows; ++r) {
    StoreFinalRow(p, units, w.rows[r], w.m[r], w.l[r], w.o.get() + r * g.dv_pad, g.stream_o);
  }
}

}  // namespace

void FlashForwardImpl(const AttentionProblem& p) {
  if (p.batch == 0 || p.seq_q == 0) return;
  const Geometry g(p);
  const int64_t head_floats = g.k_floats + g.v_floats;
  const bool per_task = pair_per_task(p, head_floats * 4);
  const int64_t slots = per_task ? p.num_threads : g.heads_per_round;
  // Allocated before the parallel region, so std::bad_alloc reaches the caller.
  const ScratchLease pack_lease = acquire_scratch(static_cast<size_t>(slots * head_floats));
  float* const pack = pack_lease.data;

#pragma omp parallel num_threads(p.num_threads)
  {
    ScopedFlushDenormals flush_denormals;
    Scratch scratch(p, g);
    run_pairs(
        p, per_task, g.heads_per_round, g.q_tiles, kPackChunkKeys, g.key_panel,
        [&](int64_t b, int64_t h0, int64_t h1, int64_t j0, int64_t j1, int64_t slot) {
          PackKeys(p, g, b, h0, h1, j0, j1, pack + slot * head_floats, head_floats,
                   scratch.row.get());
        },
        [&](int64_t b, int64_t h, int64_t tile, int64_t slot) {
          const float* base = pack + slot * head_floats;
          RunTile(p, g, b, h, tile, base, base + g.k_floats, scratch);
        });
    if (g.stream_o) hwy::FlushStream();  // before the region's end, where o is read
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {

HWY_EXPORT(FlashForwardImpl);

void flash_forward(const AttentionProblem& problem) {
  HWY_DYNAMIC_DISPATCH(FlashForwardImpl)(problem);
}

std::vector<int64_t> flash_targets() { return hwy::SupportedAndGeneratedTargets(); }

void flash_force_target(int64_t target) { hwy::SetSupportedTargetsForTest(target); }

const char* flash_target_name(int64_t target) { return hwy::TargetName(target); }

}  // namespace qkv::internal
#endif  // HWY_ONCE
