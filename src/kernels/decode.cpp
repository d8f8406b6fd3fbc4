// Decode kernel. Tasks are (batch, chunk of keys); for each kv head a task
// computes, for the R = seq_q * group rows of that kv head (the GQA group as
// one tiny matrix product, so every K/V byte is read once per step, not once
// per query head), a partial state over its chunk: running max m, sum l and
// acc = sum_j 2^(s_j - m) v_j. All kv heads in one task because a token's
// rows of all kv heads are contiguous in the cache: one stream instead of
// kv_heads strided ones. A second pass merges the chunks of each (batch, kv head):
//   m = max_c m_c,  l = sum_c 2^(m_c - m) l_c,  acc = sum_c 2^(m_c - m) acc_c
// skipping chunks with no visible key (m_c = -inf), and writes o and lse.
//
// Per block of keys (decode_block_keys: 64, fewer where the L2 is small or the
// cache streams from memory):
// scores with the K rows streamed from memory and converted in registers (one
// pass over each K row serves all R rows), the options and online softmax of
// online_softmax-inl.h, then P.V per kv head with the V rows of the block
// (16 KiB at 64 keys and head_dim_v 128 in float16, read once per column
// pass from L1 or L2) streamed the same way. Meanwhile the next
// block's K and V are requested into L2 a few lines per step of both passes
// (per 8 keys in P.V, 16 in int8's VNNI P.V), so memory streams while the
// block computes (fp16, 128K tokens, 2 threads: 27.4 -> 24.6 ms, against the
// next block's K requested during the scores only).
//
// int8 caches compute in integer arithmetic where the CPU allows
// (decode_fixed-inl.h): P.V with AVX512-VNNI, the scores on AMX-INT8 tiles
// where present (decode_amx-inl.h: 16 keys per tile), else with VNNI too; on
// AVX2 both with vpmaddwd; the float path otherwise. All form the same
// integers.

#include "kernels/decode.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>

#include "hwy/base.h"
#if HWY_ARCH_X86
#include <xmmintrin.h>  // _mm_prefetch
#endif

#include "runtime/amx.h"
#include "runtime/caches.h"
#include "runtime/threads.h"

namespace qkv::internal {
void CountAmxTask();  // for decode_amx_tasks (defined once, below)
}  // namespace qkv::internal

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/decode.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "kernels/convert-inl.h"
#include "kernels/decode_amx-inl.h"
#include "kernels/decode_parts-inl.h"
#include "kernels/decode_fixed-inl.h"
#include "kernels/microkernel-inl.h"
#include "kernels/online_softmax-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using namespace decode_parts;  // NOLINT: the kernel's own building blocks

namespace {

constexpr int64_t kMinChunk = 256;  // keys per task at least
constexpr int64_t kTasksPerThread = 2;
static_assert(kBlock == kDecodeMaxBlockKeys, "the scratch holds the largest block decode_block_keys picks");

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

// s[r][t] += q[r][e] * k_t[e] for e in [c, head_dim): the elements past the
// whole vectors, one at a time.
template <DType kDtype, int kRows, int kKeys>
HWY_INLINE void ScoreKeysTail(const float* HWY_RESTRICT q, int64_t head_dim, HeadRows k_rows,
                              int t0, int64_t c, float* HWY_RESTRICT s, int64_t s_stride) {
  for (int64_t e = c; e < head_dim; ++e) {
    for (int r = 0; r < kRows; ++r) {
      for (int t = t0; t < t0 + kKeys; ++t) {
        s[r * s_stride + t] += q[r * head_dim + e] * ElementAsFloat<kDtype>(k_rows[t], e);
      }
    }
  }
}

// v from here on in a register of its own. For the 16-register passes: GCC
// 12 folds each q row's load into the memory operands of both its FMAs (one
// per key), 10 loads per 8 FMAs per step, more than the two vector loads per
// cycle of Zen 3 allow; loaded once, 6 (AVX2 on Zen 3, float16, 1K tokens,
// one thread, alternating steps: 1-1.6% faster).
template <class V>
HWY_INLINE void InRegister(V& v) {
#if HWY_ARCH_X86 && HWY_TARGET != HWY_EMU128 && HWY_TARGET != HWY_SCALAR
  asm("" : "+x"(v.raw));
#else
  (void)v;
#endif
}

// Scores of kKeyGroup keys for kRows rows, all of one kv head:
//   s[r * s_stride + t] = q[r] . k_t  for r < kRows, t < kKeyGroup
//   q: [kRows][head_dim] floats (pre-scaled); k_t: k_rows[t] in the cache's type.
// Each K vector is loaded and converted once for all kRows rows. A key's score
// is the same bits wherever it sits in a group (StoreSumsOf4).
// With 32 vector registers, one pass of kRows x 4 accumulators; with 16
// (kRows x 4 would spill past 2 rows), two passes of kRows x 2 (keys t0, t0 + 1),
// whose sums pair two rows' two keys in one StoreSumsOf4: the same number of
// reductions per score as 2 rows x 4 keys, and each K vector converted once
// for all rows instead of once per 2 rows.
template <DType kDtype, int kRows, int kKeys, class D>
HWY_INLINE void ScoreKeysPass(D d, const float* HWY_RESTRICT q, int64_t head_dim,
                              HeadRows k_rows, int t0, float* HWY_RESTRICT s, int64_t s_stride) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  if (head_dim < N) {  // no whole vector: one element at a time
    for (int r = 0; r < kRows; ++r) {
      for (int t = t0; t < t0 + kKeys; ++t) s[r * s_stride + t] = 0.0f;
    }
    ScoreKeysTail<kDtype, kRows, kKeys>(q, head_dim, k_rows, t0, 0, s, s_stride);
    return;
  }
  // A loop that runs at least once: where it could run no time, GCC kept the
  // 16 accumulators in a stack array, stored and reloaded around it.
  V acc[kRows][kKeys];
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kKeys; ++t) acc[r][t] = hn::Zero(d);
  }
  int64_t c = 0;
  do {
    V k[kKeys];
    for (int t = 0; t < kKeys; ++t) k[t] = LoadAsFloat<kDtype>(d, k_rows[t0 + t], c);
    for (int r = 0; r < kRows; ++r) {
      V qr = hn::LoadU(d, q + r * head_dim + c);
      if constexpr (kKeys == 2) InRegister(qr);
      for (int t = 0; t < kKeys; ++t) acc[r][t] = hn::MulAdd(qr, k[t], acc[r][t]);
    }
    c += N;
  } while (c + N <= head_dim);
  if constexpr (kKeys == 4) {
    for (int r = 0; r < kRows; ++r) {
      StoreSumsOf4(d, acc[r][0], acc[r][1], acc[r][2], acc[r][3], s + r * s_stride + t0);
    }
  } else {
    static_assert(kKeys == 2, "sums of 4: one row's 4 keys or two rows' 2");
    for (int r = 0; r < kRows; r += 2) {
      HWY_ALIGN float sums[4];
      const V zero = hn::Zero(d);
      StoreSumsOf4(d, acc[r][0], acc[r][1], r + 1 < kRows ? acc[r + 1][0] : zero,
                   r + 1 < kRows ? acc[r + 1][1] : zero, sums);
      s[r * s_stride + t0] = sums[0];
      s[r * s_stride + t0 + 1] = sums[1];
      if (r + 1 < kRows) {
        s[(r + 1) * s_stride + t0] = sums[2];
        s[(r + 1) * s_stride + t0 + 1] = sums[3];
      }
    }
  }
  ScoreKeysTail<kDtype, kRows, kKeys>(q, head_dim, k_rows, t0, c, s, s_stride);
}

template <DType kDtype, int kRows, class D>
HWY_NOINLINE void ScoreKeys(D d, const float* HWY_RESTRICT q, int64_t head_dim,
                            HeadRows k_rows, float* HWY_RESTRICT s, int64_t s_stride) {
  if constexpr (kMaxPanelRows == 12 || kRows == 1) {
    ScoreKeysPass<kDtype, kRows, kKeyGroup>(d, q, head_dim, k_rows, 0, s, s_stride);
  } else {
    ScoreKeysPass<kDtype, kRows, 2>(d, q, head_dim, k_rows, 0, s, s_stride);
    ScoreKeysPass<kDtype, kRows, 2>(d, q, head_dim, k_rows, 2, s, s_stride);
  }
}

// acc[r][c, c + kVecs*N) = alpha_r * acc + sum_j p[r][j] * v_j[c, ...)
// (int8: p already carries the value rows' scales).
// Per key, `prefetch_per_key` lines of the next block are requested (in
// batches of kKeysPerRequest keys).
template <DType kDtype, int kRows, int kVecs, class D>
HWY_INLINE void ValueBlock(D d, const float* HWY_RESTRICT p, HeadRows v_rows,
                           int64_t n, int64_t c, const float* HWY_RESTRICT alpha,
                           float* HWY_RESTRICT acc, int64_t acc_stride,
                           NextBlockPrefetch& prefetch, int64_t prefetch_per_key) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  V o[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    const V a = hn::Set(d, alpha[r]);
    for (int v = 0; v < kVecs; ++v) o[r][v] = hn::Mul(a, hn::Load(d, acc + r * acc_stride + c + v * N));
  }
  // Passes of fewer than 4 vectors (AVX2's, 16 columns) take twice the keys
  // per batch: their keys cost half or less.
  constexpr int64_t kBatch = kVecs >= 4 ? kKeysPerRequest : 2 * kKeysPerRequest;
  // (n >= 1: a do-while, see ScoreKeysPass.)
  int64_t j0 = 0;
  do {
    prefetch.Issue(kBatch * prefetch_per_key);
    for (int64_t j = j0; j < std::min(n, j0 + kBatch); ++j) {
      V vj[kVecs];
      for (int v = 0; v < kVecs; ++v) vj[v] = LoadAsFloat<kDtype>(d, v_rows[j], c + v * N);
      for (int r = 0; r < kRows; ++r) {
        const V pr = hn::Set(d, p[r * kBlock + j]);
        for (int v = 0; v < kVecs; ++v) o[r][v] = hn::MulAdd(pr, vj[v], o[r][v]);
      }
    }
    j0 += kBatch;
  } while (j0 < n);
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) hn::Store(o[r][v], d, acc + r * acc_stride + c + v * N);
  }
}

// Per-thread scratch. Per kv head h: score rows s[h * rows + r][kBlock] and
// the block's int8 scales at [h * kBlock + j]; per key j of the block, where
// its token's K and V rows start.
struct DecodeScratch {
  hwy::AlignedFreeUniquePtr<float[]> q, s, alpha, k_scale, v_scale, v_buf, q16_scale;
  hwy::AlignedFreeUniquePtr<int16_t[]> q16;  // ScoreKeysFixed's q rows
  hwy::AlignedFreeUniquePtr<int16_t[]> p16;  // ValueBlockFixed's weights, [rows][kBlock]
  hwy::AlignedFreeUniquePtr<float[]> p16_scale, p16_max;  // per row: its fixed point's scale, max weight
  hwy::AlignedFreeUniquePtr<const char*[]> k_tokens, v_tokens, widened;
  hwy::AlignedFreeUniquePtr<AttentionProblem::TokenRows[]> k_token, v_token, k_next, v_next;
  hwy::AlignedFreeUniquePtr<TileRow[]> rows;
  hwy::AlignedFreeUniquePtr<Span[]> k_spans, v_spans;  // NextBlockPrefetch's
  // The AMX-INT8 scores': q's B tiles [kv_heads][2 groups][head_dim / 64]
  // [1 KiB]; two copies of 16 key rows; the tile stores' scratch.
  hwy::AlignedFreeUniquePtr<int8_t[]> q_tiles, k_copy;
  hwy::AlignedFreeUniquePtr<int32_t[]> tile_scratch;
  DecodeScratch(const AttentionProblem& p, const Layout& g)
      : q(hwy::AllocateAligned<float>(p.kv_heads * g.rows * p.head_dim)),
        s(hwy::AllocateAligned<float>(p.kv_heads * g.rows * kBlock)),
        alpha(hwy::AllocateAligned<float>(g.rows)),
        k_scale(hwy::AllocateAligned<float>(p.kv_heads * kBlock)),
        v_scale(hwy::AllocateAligned<float>(p.kv_heads * kBlock)),
        v_buf(hwy::AllocateAligned<float>(kBlock * g.dv_pad)),
        q16_scale(hwy::AllocateAligned<float>(p.kv_heads * g.rows)),
        q16(hwy::AllocateAligned<int16_t>(p.kv_heads * g.rows * p.head_dim)),
        p16(hwy::AllocateAligned<int16_t>(g.rows * kBlock)),
        p16_scale(hwy::AllocateAligned<float>(g.rows)),
        p16_max(hwy::AllocateAligned<float>(g.rows)),
        k_tokens(hwy::AllocateAligned<const char*>(kBlock)),
        v_tokens(hwy::AllocateAligned<const char*>(kBlock)),
        widened(hwy::AllocateAligned<const char*>(kBlock)),
        k_token(hwy::AllocateAligned<AttentionProblem::TokenRows>(kBlock)),
        v_token(hwy::AllocateAligned<AttentionProblem::TokenRows>(kBlock)),
        k_next(hwy::AllocateAligned<AttentionProblem::TokenRows>(kBlock)),
        v_next(hwy::AllocateAligned<AttentionProblem::TokenRows>(kBlock)),
        rows(hwy::AllocateAligned<TileRow>(p.kv_heads * g.rows)),
        k_spans(hwy::AllocateAligned<Span>(kBlock * p.kv_heads)),
        v_spans(hwy::AllocateAligned<Span>(kBlock * p.kv_heads)),
        q_tiles(hwy::AllocateAligned<int8_t>(
            int8_only(p, p.kv_heads * 2 * CeilDiv(p.head_dim, 64) * 1024))),
        k_copy(hwy::AllocateAligned<int8_t>(int8_only(p, 2 * 16 * p.head_dim))),
        tile_scratch(hwy::AllocateAligned<int32_t>(int8_only(p, 512))) {}

  // n for an int8 cache, else 1 (the AMX buffers serve int8 only).
  static size_t int8_only(const AttentionProblem& p, int64_t n) {
    return static_cast<size_t>(p.kv_dtype == DType::kInt8 ? n : 1);
  }
};

// The calling thread's DecodeScratch, kept for its next call while the sizes
// it depends on stay the same (decode steps repeat one shape): some 25 small
// allocations and frees per thread per step took about 1.3% of a 4K-token
// int8 step.
DecodeScratch& ThreadScratch(const AttentionProblem& p, const Layout& g) {
  struct Shape {
    int64_t kv_heads = -1, rows = -1, head_dim = -1, dv_pad = -1;
    DType kv_dtype = DType::kFloat32;
    bool operator==(const Shape&) const = default;
  };
  thread_local std::unique_ptr<DecodeScratch> kept;
  thread_local Shape kept_shape;
  const Shape shape{p.kv_heads, g.rows, p.head_dim, g.dv_pad, p.kv_dtype};
  if (!kept || !(kept_shape == shape)) {
    kept.reset();  // the old buffers go before the new ones are allocated
    kept = std::make_unique<DecodeScratch>(p, g);
    kept_shape = shape;
  }
  return *kept;
}

// AccumulateValues' column passes over a block's keys: the dv_pad / N
// vectors of a row split into passes of `fours`, then `threes`, `twos` and
// `ones` vectors. With 32 vector registers 4 (16 accumulators for 4 rows),
// then 2 and 1. With 16, passes of 3 (12 accumulators, 3 V vectors and the
// broadcast weight: all 16 registers) as long as an even number of vectors
// remains, then 2: at head_dim_v 128 on AVX2, 3+3+3+3+2+2 instead of eight
// 2s, each key's row pointer and 4 weights loaded 6 times instead of 8
// (AVX2 on Zen 3, float16, 1K tokens, one thread, alternating steps: 3.2-3.5%
// faster).
struct ValuePlan {
  int64_t fours = 0, threes = 0, twos = 0, ones = 0;
  int64_t passes() const { return fours + threes + twos + ones; }
};
ValuePlan PlanValuePasses(const Layout& g, int64_t lanes) {
  int64_t vectors = g.dv_pad / lanes;
  ValuePlan plan;
  if constexpr (kMaxPanelRows == 12) {
    plan.fours = vectors / 4;
    vectors -= 4 * plan.fours;
  } else {
    plan.threes = vectors / 3;
    if (plan.threes > 0 && (vectors - 3 * plan.threes) % 2 != 0) --plan.threes;
    vectors -= 3 * plan.threes;
  }
  plan.twos = vectors / 2;
  plan.ones = vectors % 2;
  return plan;
}

// acc = alpha * acc + P.V over the block's n keys, rows in groups of
// kValueRows, columns in the passes of PlanValuePasses (fewer passes over V
// and fewer broadcasts of P per key than one vector at a time).
//   p: [rows][kBlock] weights; v_rows: the block's n value rows of one kv head.
template <DType kDtype>
HWY_NOINLINE void AccumulateValues(const Layout& g, int64_t n, const float* HWY_RESTRICT p,
                      HeadRows v_rows, const float* HWY_RESTRICT alpha_rows,
                      float* HWY_RESTRICT acc, NextBlockPrefetch& prefetch,
                      int64_t prefetch_per_key) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const ValuePlan plan = PlanValuePasses(g, N);
  for (int64_t r0 = 0; r0 < g.rows; r0 += kValueRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kValueRows, g.rows - r0));
    const float* pw = p + r0 * kBlock;
    const float* alpha = alpha_rows + r0;
    float* o = acc + r0 * g.dv_pad;
    WithRows<kValueRows>(rows, [&](auto kRows) {
      // (plan.fours is 0 with 16 registers, plan.threes with 32.)
      constexpr int kWide = kMaxPanelRows == 12 ? 4 : 3;
      int64_t c = 0;
      for (int64_t i = 0; i < plan.fours + plan.threes; ++i, c += kWide * N) {
        ValueBlock<kDtype, kRows(), kWide>(d, pw, v_rows, n, c, alpha, o, g.dv_pad, prefetch,
                                           prefetch_per_key);
      }
      for (int64_t i = 0; i < plan.twos; ++i, c += 2 * N) {
        ValueBlock<kDtype, kRows(), 2>(d, pw, v_rows, n, c, alpha, o, g.dv_pad, prefetch,
                                       prefetch_per_key);
      }
      if (plan.ones > 0) {
        ValueBlock<kDtype, kRows(), 1>(d, pw, v_rows, n, c, alpha, o, g.dv_pad, prefetch,
                                       prefetch_per_key);
      }
    });
  }
}

// Which integer paths an int8 cache takes on this target (decode.h).
struct Int8Paths {
  bool fixed = false;         // scores in 16-bit fixed point (vpdpwssd, vpmaddwd)
  bool fixed_values = false;  // P.V too
  bool amx = false;           // the scores on AMX-INT8 tiles
};
HWY_INLINE Int8Paths ChooseInt8Paths(DType kv_dtype, int64_t head_dim, int64_t head_dim_v, int64_t rows) {
  Int8Paths paths;
#if QKV_DECODE_FIXED_TARGET
  paths.fixed = kv_dtype == DType::kInt8 && head_dim % kFixedDims == 0 && head_dim <= 256 &&
                decode_fixed_point_enabled() && decode_fixed_point_on(HWY_TARGET);
  paths.fixed_values = paths.fixed && head_dim_v % kFixedColumns == 0;
#endif
#if defined(QKV_HAVE_AMX_INT8) && HWY_TARGET == HWY_AVX3
  paths.amx = paths.fixed_values && head_dim % kAmxDims == 0 && rows <= 2 * kAmxRows &&
              amx_int8_enabled();
#endif
  (void)kv_dtype, (void)head_dim, (void)head_dim_v, (void)rows;
  return paths;
}

// One task: keys [j0, j1) of batch b for every kv head, into the partial
// states of its kv heads (state + kvh * g.state, see Layout). All heads per
// task because a token's K (and V) rows of all kv heads are contiguous: the
// task streams one contiguous region instead of kv_heads strided ones.
template <DType kDtype>
void RunChunk(const AttentionProblem& p, const Layout& g, int64_t b, int64_t j0, int64_t j1,
              DecodeScratch& w, float* HWY_RESTRICT states) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const ScoreUnits units(p);
  const size_t q_elem = dtype_size(p.dtype);
  const int64_t elem_kv = static_cast<int64_t>(dtype_size(p.kv_dtype));
  const Int8Paths paths = ChooseInt8Paths(kDtype, p.head_dim, p.head_dim_v, g.rows);
  [[maybe_unused]] const bool fixed = paths.fixed;
  [[maybe_unused]] const bool fixed_values = paths.fixed_values;
#if defined(QKV_HAVE_AMX_INT8) && HWY_TARGET == HWY_AVX3
  const bool amx = paths.amx;
  const AmxGroups amx_groups(g.rows, p.head_dim);
  std::optional<amx::ScopedTiles> tiles;
  if (amx) {
    tiles.emplace();
    CountAmxTask();
  }
#else
  constexpr bool amx = false;
#endif

  // Rows of every kv head; the visible interval depends on the query only.
  int64_t key_begin = j1, key_end = j0;
  for (int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
    float* state = states + kvh * g.state;
    float* m = state + g.rows * g.dv_pad;
    float* l = m + g.rows_pad;
    TileRow* rows = w.rows.get() + kvh * g.rows;
    const KeyRange keys = SetTileRows(p, b, kvh, 0, g.rows, rows);
    if (keys.begin < keys.end) {
      key_begin = std::min(key_begin, std::max(keys.begin, j0));
      key_end = std::max(key_end, std::min(keys.end, j1));
    }
    for (int64_t r = 0; r < g.rows; ++r) {
      const TileRow& row = rows[r];
      const int64_t at = kvh * g.rows + r;
      LoadRowScaled(p.dtype,
                    static_cast<const char*>(p.q) + p.q_stride.offset(b, row.query, row.head) * q_elem,
                    p.head_dim, units.q_scale, w.q.get() + at * p.head_dim);
#if QKV_DECODE_FIXED_TARGET
      if (fixed || amx) {
        QuantizeRow16(w.q.get() + at * p.head_dim, p.head_dim, kQuery16Limit,
                      w.q16.get() + at * p.head_dim, w.q16_scale[at]);
      }
#endif
      m[r] = -std::numeric_limits<float>::infinity();
      l[r] = 0.0f;
    }
    std::fill(state, state + g.rows * g.dv_pad, 0.0f);
#if defined(QKV_HAVE_AMX_INT8) && HWY_TARGET == HWY_AVX3
    if (amx) {
      PackHeadQueryTiles(amx_groups, w.q16.get() + kvh * g.rows * p.head_dim, p.head_dim,
                         w.q_tiles.get() + kvh * amx_groups.head_tile_bytes());
    }
#endif
  }

  const bool plain = p.softcap == 0 && !p.has_alibi() && !p.has_mask();
  bool adjacent = false;  // the block's tokens back to back (AttentionProblem::tokens)
  for (int64_t k0 = key_begin; k0 < key_end; k0 += g.block) {
    const int64_t n = std::min(g.block, key_end - k0);
    const int64_t n_pad = RoundUp(n, N);
    // The block's tokens (the last key stands in for the keys that complete
    // the last group of kKeyGroup: their scores become -inf with the padding),
    // and the next block's, whose K and V are requested into L2 while this
    // block computes: half during the scores, half during P.V.
    // (The block's own rows were the previous block's next ones.)
    const int64_t n_next = std::min(g.block, key_end - (k0 + n));
    if (k0 == key_begin) adjacent = p.tokens(b, k0, n, w.k_token.get(), w.v_token.get());
    const bool next_adjacent =
        n_next > 0 && p.tokens(b, k0 + n, n_next, w.k_next.get(), w.v_next.get());
    NextBlockPrefetch next(w.k_next.get(), w.v_next.get(), n_next, next_adjacent, p.kv_heads,
                           p.head_dim * elem_kv, p.head_dim_v * elem_kv, w.k_spans.get(),
                           w.v_spans.get());
    const int64_t score_steps = (n + kKeyGroup - 1) / kKeyGroup * p.kv_heads;
    const int64_t per_score_step = (next.lines() / 2 + score_steps - 1) / score_steps;
    const int64_t value_keys = p.kv_heads * PlanValuePasses(g, N).passes() *
                               ((g.rows + kValueRows - 1) / kValueRows) * n;
    const int64_t per_value_key = (next.lines() - next.lines() / 2 + value_keys - 1) / value_keys;
    const int64_t k_head_bytes = w.k_token[0].head_bytes, v_head_bytes = w.v_token[0].head_bytes;
    const int64_t n_keys = RoundUp(n_pad, kKeyGroup);
    for (int64_t j = 0; j < n_keys; ++j) {
      w.k_tokens[j] = w.k_token[std::min(j, n - 1)].data;
      w.v_tokens[j] = w.v_token[std::min(j, n - 1)].data;
    }
    if constexpr (kDtype == DType::kInt8) {
      BlockScales(d, w.k_token.get(), n, adjacent, n_keys, p.kv_heads, w.k_scale.get());
      BlockScales(d, w.v_token.get(), n, adjacent, n_keys, p.kv_heads, w.v_scale.get());
    }
    // 1. Scores, token-major: a token's K rows of all kv heads are adjacent
    //    in the cache, so the block's K is read as one forward stream. (No
    //    requests of this block's V rows into L1 here: 3-9% slower at 32K
    //    tokens with them, for 1, 2 and 8 kv heads; by P.V the block's other
    //    rows have pushed them out again.)
#if defined(QKV_HAVE_AMX_INT8) && HWY_TARGET == HWY_AVX3
    if (amx) {
      BlockScoresAmx(amx_groups, w.k_tokens.get(), n_pad, p.kv_heads, k_head_bytes,
                     w.q_tiles.get(), w.q16_scale.get(), w.k_scale.get(), w.k_copy.get(),
                     w.tile_scratch.get(), w.s.get(), next);
    }
#endif
    for (int64_t j = 0; !amx && j < n; j += kKeyGroup) {
      for (int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
        next.Issue(per_score_step);
        for (int64_t r0 = 0; r0 < g.rows; r0 += kScoreRows) {
          const int nr = static_cast<int>(std::min<int64_t>(kScoreRows, g.rows - r0));
          const int64_t row = kvh * g.rows + r0;
          const HeadRows k_rows{w.k_tokens.get() + j, kvh * k_head_bytes};
          WithRows<kScoreRows>(nr, [&](auto kRows) {
#if QKV_DECODE_FIXED_TARGET
            if (fixed) {
              ScoreKeysFixed<kRows()>(w.q16.get() + row * p.head_dim, p.head_dim,
                                     w.q16_scale.get() + row, p.head_dim, k_rows,
                                     w.s.get() + row * kBlock + j, kBlock);
              return;
            }
#endif
            ScoreKeys<kDtype, kRows()>(d, w.q.get() + row * p.head_dim, p.head_dim, k_rows,
                                       w.s.get() + row * kBlock + j, kBlock);
          });
        }
      }
    }
    // 2. Per kv head: options and online softmax per row, then P.V.
    for (int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
      float* state = states + kvh * g.state;
      float* acc = state;
      float* m = state + g.rows * g.dv_pad;
      float* l = m + g.rows_pad;
      const TileRow* rows = w.rows.get() + kvh * g.rows;
      float* s = w.s.get() + kvh * g.rows * kBlock;
      const float* k_scale = w.k_scale.get() + kvh * kBlock;
      const float* v_scale = w.v_scale.get() + kvh * kBlock;
      for (int64_t r = 0; r < g.rows; ++r) {
        float* sr = s + r * kBlock;
        if constexpr (kDtype == DType::kInt8) {
          for (int64_t j = 0; !amx && j < n; j += N) {  // (AMX: in BlockScoresAmx)
            hn::Store(hn::Mul(hn::Load(d, sr + j), hn::LoadU(d, k_scale + j)), d, sr + j);
          }
        }
        const bool full = rows[r].lo <= k0 && rows[r].hi >= k0 + n - 1;
        if (!plain || !full || n < n_pad) ApplyScoreOptions(d, p, units, rows[r], k0, n, n_pad, !full, sr);
        if constexpr (kDtype == DType::kInt8) {
          // The weights carry the value rows' scales (not in l); for VNNI's
          // fixed point their largest is kept too (one pass over the row, not three).
          auto max_p = hn::Zero(d);
          w.alpha[r] = OnlineSoftmaxRowKeeping(d, units, sr, n_pad, m[r], l[r], [&](auto e, int64_t j) {
            const auto weight = hn::Mul(e, hn::Load(d, v_scale + j));
            if (fixed_values) max_p = hn::Max(max_p, weight);
            hn::Store(weight, d, sr + j);
          });
          if (fixed_values) w.p16_max[r] = hn::GetLane(hn::MaxOfLanes(d, max_p));
        } else {
          w.alpha[r] = OnlineSoftmaxRow(d, units, sr, n_pad, m[r], l[r]);
        }
      }
      const HeadRows v_rows{w.v_tokens.get(), kvh * v_head_bytes};
#if QKV_DECODE_FIXED_TARGET
      if (fixed_values) {
        for (int64_t r = 0; r < g.rows; ++r) {
          QuantizeRow16(s + r * kBlock, n_pad, kWeight16Limit, w.p16_max[r], w.p16.get() + r * kBlock,
                        w.p16_scale[r]);
        }
        AccumulateValuesFixed(g, n, w.p16.get(), w.p16_scale.get(), v_rows, w.alpha.get(), acc, next,
                             per_value_key);
        continue;
      }
#endif
      if (p.head_dim_v % N == 0) {
        AccumulateValues<kDtype>(g, n, s, v_rows, w.alpha.get(), acc, next, per_value_key);
      } else {
        // Rows that do not fill whole vectors: widen the block's V rows into a
        // zero-padded float buffer first, so no load runs past a row.
        for (int64_t j = 0; j < n; ++j) {
          float* dst = w.v_buf.get() + j * g.dv_pad;
          LoadRowScaled(p.kv_dtype, v_rows[j], p.head_dim_v, 1.0f, dst);  // int8: scale in P
          std::fill(dst + p.head_dim_v, dst + g.dv_pad, 0.0f);
          w.widened[j] = reinterpret_cast<const char*>(dst);
        }
        AccumulateValues<DType::kFloat32>(g, n, s, HeadRows{w.widened.get(), 0}, w.alpha.get(), acc,
                                          next, per_value_key);
      }
    }
    next.Issue(next.lines());  // what the rounding of the shares left
    std::swap(w.k_token, w.k_next);
    std::swap(w.v_token, w.v_next);
    adjacent = next_adjacent;
  }
}

// Merges the splits of (b, kvh) and writes o and lse.
// states: the first chunk's state of (b, kvh); chunk c's is at c * stride.
void MergeAndStore(const AttentionProblem& p, const Layout& g, int64_t b, int64_t kvh,
                   const float* HWY_RESTRICT states, int64_t stride, float* HWY_RESTRICT merged) {
  const hn::ScalableTag<float> d;
  const ScoreUnits units(p);
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t r = 0; r < g.rows; ++r) {
    float m = -std::numeric_limits<float>::infinity();
    const int64_t m_at = g.rows * g.dv_pad + r, l_at = m_at + g.rows_pad;
    for (int64_t c = 0; c < g.splits; ++c) m = std::max(m, states[c * stride + m_at]);
    float l = 0.0f;
    std::fill(merged, merged + g.dv_pad, 0.0f);
    if (m != -std::numeric_limits<float>::infinity()) {
      for (int64_t c = 0; c < g.splits; ++c) {
        const float* st = states + c * stride;
        if (st[l_at] == 0.0f) continue;  // no visible key in this chunk
        const float w = std::exp2((st[m_at] - m) * units.to_log2);
        l += w * st[l_at];
        const float* a = st + r * g.dv_pad;
        const auto vw = hn::Set(d, w);
        for (int64_t i = 0; i < g.dv_pad; i += N) {
          hn::Store(hn::MulAdd(vw, hn::Load(d, a + i), hn::Load(d, merged + i)), d, merged + i);
        }
      }
    }
    TileRow row;
    row.batch = b;
    row.query = r / p.group;
    row.head = kvh * p.group + r % p.group;
    StoreFinalRow(p, units, row, m, l, merged);
  }
}

}  // namespace

void DecodeForwardImpl(const AttentionProblem& p, int num_splits) {
  if (p.batch == 0 || p.seq_q == 0) return;
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  Layout g;
  g.rows = p.seq_q * p.group;
  g.dv_pad = RoundUp(p.head_dim_v, N);
  g.rows_pad = RoundUp(g.rows, N);
  g.state = g.rows * g.dv_pad + 2 * g.rows_pad;
  int64_t max_keys = 0, step_keys = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    max_keys = std::max(max_keys, p.keys(b));
    step_keys += p.keys(b);
  }
  g.block = decode_block_keys(p.kv_heads, p.head_dim, p.head_dim_v, p.kv_dtype, step_keys);
  const int64_t pairs = p.batch * p.kv_heads;
  if (num_splits > 0) {
    g.splits = num_splits;
  } else {
    // Enough chunks for 2 tasks per thread, none shorter than kMinChunk keys
    // (a task's setup - q quantized, tiles packed, the first block cold - is
    // a visible share of a short chunk: against 4 per thread, 4K tokens 5-10%
    // faster, 32K and 128K the same).
    const int64_t want = (kTasksPerThread * p.num_threads + p.batch - 1) / p.batch;
    g.splits = std::clamp<int64_t>(want, 1, std::max<int64_t>(1, max_keys / kMinChunk));
  }
  g.chunk = RoundUp(std::max<int64_t>(1, (max_keys + g.splits - 1) / g.splits), kBlock);
  // states[((b * splits + chunk) * kv_heads + kvh) * g.state]
  auto states = hwy::AllocateAligned<float>(pairs * g.splits * g.state);

#pragma omp parallel num_threads(p.num_threads)
  {
    ScopedFlushDenormals flush_denormals;
    DecodeScratch& scratch = ThreadScratch(p, g);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < p.batch * g.splits; ++t) {
      const int64_t b = t / g.splits;
      const int64_t j0 = std::min((t % g.splits) * g.chunk, p.keys(b));
      const int64_t j1 = std::min(j0 + g.chunk, p.keys(b));
      float* state = states.get() + t * p.kv_heads * g.state;
      switch (p.kv_dtype) {
        case DType::kFloat16: RunChunk<DType::kFloat16>(p, g, b, j0, j1, scratch, state); break;
        case DType::kBFloat16: RunChunk<DType::kBFloat16>(p, g, b, j0, j1, scratch, state); break;
        case DType::kInt8: RunChunk<DType::kInt8>(p, g, b, j0, j1, scratch, state); break;
        default: RunChunk<DType::kFloat32>(p, g, b, j0, j1, scratch, state); break;
      }
    }
    auto merged = hwy::AllocateAligned<float>(g.dv_pad);
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t b = pair / p.kv_heads, kvh = pair % p.kv_heads;
      MergeAndStore(p, g, b, kvh, states.get() + (b * g.splits * p.kv_heads + kvh) * g.state,
                    p.kv_heads * g.state, merged.get());
    }
  }
}

const char* DecodeInt8EngineImpl(int64_t head_dim, int64_t head_dim_v, int64_t rows) {
  const Int8Paths paths = ChooseInt8Paths(DType::kInt8, head_dim, head_dim_v, rows);
  if (paths.amx) return "scores on AMX-INT8 tiles, P.V on AVX512-VNNI (16-bit fixed point)";
  const bool avx3 = HWY_TARGET == HWY_AVX3;
  if (paths.fixed_values) {
    return avx3 ? "AVX512-VNNI (16-bit fixed point)" : "AVX2 vpmaddwd (16-bit fixed point)";
  }
  if (paths.fixed) {
    return avx3 ? "scores on AVX512-VNNI (16-bit fixed point), P.V in float"
                : "scores on AVX2 vpmaddwd (16-bit fixed point), P.V in float";
  }
  return "float (rows widened in registers)";
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {
namespace {
std::atomic<int64_t> g_block_keys{0};
}  // namespace
void set_decode_block_keys(int64_t keys) { g_block_keys.store(keys, std::memory_order_relaxed); }

int64_t decode_block_keys(int64_t kv_heads, int64_t head_dim, int64_t head_dim_v, DType kv_dtype,
                          int64_t step_keys) {
  const int64_t forced = g_block_keys.load(std::memory_order_relaxed);
  if (forced >= kDecodeMinBlockKeys && forced <= kDecodeMaxBlockKeys && forced % kDecodeMinBlockKeys == 0) {
    return forced;
  }
  // K and V row bytes of one token, all kv heads (int8's scales left out: a
  // 64-key block of 8 kv heads of 128 is 128 KiB of rows, 132 with them).
  const int64_t token_bytes = kv_heads * (head_dim + head_dim_v) * static_cast<int64_t>(dtype_size(kv_dtype));
  const int64_t known_l3 = l3_cache_bytes();  // 0: none known, taken as 32 MiB
  const int64_t l3 = known_l3 > 0 ? known_l3 : int64_t{32} << 20;
  const bool streams = step_keys > l3 / 4 / std::max<int64_t>(token_bytes, 1);
  int64_t block = kDecodeMaxBlockKeys;
  while (block > kDecodeMinBlockKeys &&
         (2 * block * token_bytes > l2_cache_bytes() / 2 ||
          (streams && block * token_bytes > kDecodeStreamBlockBytes))) {
    block /= 2;
  }
  return block;
}

HWY_EXPORT(DecodeForwardImpl);
HWY_EXPORT(DecodeInt8EngineImpl);

namespace {
std::atomic<bool> fixed_point_enabled{true};
std::atomic<int64_t> amx_tasks{0};
}  // namespace

void CountAmxTask() { amx_tasks.fetch_add(1, std::memory_order_relaxed); }

bool decode_fixed_point_on(int64_t target) {
#if defined(QKV_DECODE_FIXED)
  if (target == 0) {
    const int64_t targets = hwy::SupportedTargets() & HWY_TARGETS;
    target = targets & -targets;  // the best: the lowest bit
  }
  if (target == HWY_AVX2) return true;
  if (target == HWY_AVX3) {
    static const bool vnni = __builtin_cpu_supports("avx512vnni");
    return vnni;
  }
#endif
  (void)target;
  return false;
}

bool decode_fixed_point_enabled() { return fixed_point_enabled.load(std::memory_order_relaxed); }

void set_decode_fixed_point_enabled(bool enabled) {
  fixed_point_enabled.store(enabled, std::memory_order_relaxed);
}

int64_t decode_amx_tasks() { return amx_tasks.load(std::memory_order_relaxed); }

const char* decode_int8_engine(int64_t head_dim, int64_t head_dim_v, int64_t rows) {
  return HWY_DYNAMIC_DISPATCH(DecodeInt8EngineImpl)(head_dim, head_dim_v, rows);
}

void decode_forward(const AttentionProblem& problem, int num_splits) noexcept {
  HWY_DYNAMIC_DISPATCH(DecodeForwardImpl)(problem, num_splits);
}
}  // namespace qkv::internal
#endif
