// Flash forward for bfloat16 q, k, v, o on the CPU's bfloat16 units: the
// algorithm, task schedule and score options of flash_forward.cpp, with both
// products on AMX tiles (amx_tiles.h) or, without AMX, on AVX512-BF16 dot
// products (bf16_dot.h), and the softmax in AVX-512. Both engines share the
// packing, the rows and the softmax; the tiles overlap with the vector code
// (below), the dot products run item by item.
//
// A task is (kv head, query tile); its rows are positions x GQA group (row r
// at position r / group, head kv_head * group + r % group), in groups of 32.
// An item is a (key block [k0, k1), row group) pair with some visible key;
// per item:
//   1. S = Q.K^T on tiles: raw bf16 products, exact in fp32, accumulated in
//      fp32. Q is not pre-scaled (that would round it to bf16 again): S is
//      multiplied by the score scale in fp32, one rounding, as a float32
//      kernel that scales Q in float32 has.
//   2. options and online softmax per row (online_softmax-inl.h), in fp32:
//      P = 2^(S - m_new) in [0, 1], alpha = 2^(m_old - m_new).
//   3. O = alpha * O + P.V on tiles with P rounded to bf16 (to nearest, as
//      FlashAttention and PyTorch do: each p off by up to 2^-8 of itself; l
//      sums the unrounded p). With exact_bf16_probs, P = P_hi + P_lo, both
//      bf16 (P_hi = P truncated to bf16, P_lo = bf16(P - P_hi)): two products
//      that carry P to 2^-16, far below the bf16 rounding of o (measured at
//      8/8 heads, seq 1024, no mask: 4.2 ms against 3.2 ms for one product).
// Finally StoreFinalRow normalizes, folds in a sink and writes o and lse.
//
// Software pipeline (tiles): while the vector code does step 2 of item i, the tile
// steps of step 3 of item i - 1 and of step 1 of item i + 1 are issued
// between its rows, so the tile unit works while the vector units do. S, P
// and alpha are double-buffered by item parity. The overlap is partial: a
// running tile product takes a vector port (measured: 4 products next to 128
// independent FMAs take the sum of both times), and both stream through L1.
// Still 7-10% over issuing the tile work between the softmax passes.
//
// Packed layouts, once per (batch, kv head), keys rounded up to 32 with zeros:
//   K: [seq_kv / 16][head_dim_pad / 32][16][16][2]: B tiles of X = K^T,
//      head_dim zero-padded to a multiple of 32;
//   V: [seq_kv / 32][head_dim_v_pad / 16][16][16][2]: B tiles of X = V,
//      head_dim_v zero-padded to a multiple of 16.
// Every B tile is 1 KiB contiguous (stride 64 bytes).
//
// Built like the SIMD kernels (Highway's foreach_target), but only the AVX3
// pass holds the kernel, with AVX512-BF16 and AMX added to that pass's target
// attributes: every CPU with AMX-BF16 has AVX-512 F/BW/DQ/VL and AVX512-BF16,
// and bf16_flash_engine checks AMX or AVX512-BF16 at run time. No file-wide ISA flags: an
// inline function of a shared header compiled here with them (an out-of-line
// copy in a debug build) could be the copy the linker keeps for everyone.

#include "kernels/bf16_forward.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>

#include "runtime/amx.h"
#include "runtime/caches.h"
#include "kernels/pack_tasks.h"
#include "runtime/scratch.h"
#include "runtime/stream_output.h"
#include "runtime/threads.h"

#ifdef QKV_HAVE_AMX
#include <immintrin.h>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/bf16_forward.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#endif

#include "hwy/highway.h"
#include "kernels/microkernel-inl.h"
#include "kernels/online_softmax-inl.h"
#include "kernels/transpose-inl.h"

#if defined(QKV_HAVE_AMX) && HWY_TARGET == HWY_AVX3

HWY_PUSH_ATTRIBUTES(HWY_TARGET_STR ",avx512bf16,amx-tile,amx-bf16")
#include "kernels/amx_tiles.h"
#include "kernels/bf16_dot.h"

namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

using amx::kColTile;
using amx::kDimStep;
using amx::kGroupRows;
using amx::kKeyStep;
using amx::kKeyTile;
using amx::kTileElems;

constexpr int64_t kPackBudgetBytes = int64_t{8} << 20;
constexpr int64_t kPackChunkKeys = 512;  // keys x kv heads per packing task (PackTasks)
constexpr int64_t kMaxBlockKv = 512;
static_assert(bf16dot::kPStride >= kMaxBlockKv, "a P row holds a whole block");
static_assert(kMaxPanelRows == bf16dot::kMaxRows, "WithPanelRows covers the dot products' rows");
// Rows (positions x group) per task, and keys per block: at head_dim 128 the
// task's Q (bf16) and O (fp32) take 96 KiB for 128 rows, a K/V block of 256
// keys 128 KiB (L2), the double-buffered S and P of a row group 128 KiB
// (256 keys measured 7% faster than 128: half the per-row softmax overhead
// and twice as many products per stored tile). When a head's packed K/V
// outgrows the L2, each task streams it from L3: 4x the rows cut that.
constexpr int64_t kTargetTileRows = 128;
constexpr int64_t kLongTileRows = 512;
constexpr int64_t kLongKvBytes = int64_t{4} << 20;
constexpr int64_t kTargetBlockBytes = 64 << 10;  // K block: keys * head_dim_pad * 2

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

// Sizes derived once per call.
struct Geometry {
  int64_t dim_pad = 0;     // head_dim rounded up to kDimStep
  int64_t dim_v_pad = 0;   // head_dim_v rounded up to kColTile
  int64_t key_pad = 0;     // seq_kv rounded up to kKeyStep
  int64_t block_q = 0;     // query positions per task
  int64_t block_kv = 0;    // keys per block, a multiple of kKeyStep
  int64_t rows_pad = 0;    // block_q * group rounded up to kGroupRows
  int64_t q_tiles = 0;     // tasks per (batch, kv head)
  int64_t k_elems = 0;     // packed K per (batch, kv head), bf16
  int64_t v_elems = 0;     // packed V per (batch, kv head), bf16
  int64_t heads_per_round = 0;
  bool stream_o = false;  // o written with streaming stores (runtime/stream_output.h)

  Geometry(const AttentionProblem& p, bool tiles) {
    dim_pad = RoundUp(std::max<int64_t>(p.head_dim, 1), kDimStep);
    dim_v_pad = RoundUp(std::max<int64_t>(p.head_dim_v, 1), kColTile);
    key_pad = RoundUp(p.seq_kv, kKeyStep);
    k_elems = key_pad * dim_pad;
    v_elems = key_pad * dim_v_pad;
    const int64_t head_bytes = std::max<int64_t>(1, (k_elems + v_elems) * 2);
    const int64_t rows = head_bytes > kLongKvBytes ? kLongTileRows : kTargetTileRows;
    block_q = p.tiling.block_q > 0 ? p.tiling.block_q : std::max<int64_t>(1, rows / p.group);
    block_q = std::max<int64_t>(1, std::min(block_q, p.seq_q));
    // Dot products: K and V blocks of a quarter of the L2 together, as the
    // float32 kernel (512 keys at head_dim 128 in 1 MiB; 2 threads, 32/8 and
    // 32/32 heads, seq 2048: up to 3-5% faster than 256, never slower).
    const int64_t auto_kv =
        tiles ? std::clamp<int64_t>(
                    kTargetBlockBytes / (2 * std::max(dim_pad, dim_v_pad)) / kKeyStep * kKeyStep, 64, 256)
              : std::clamp<int64_t>(
                    l2_cache_bytes() / 4 / (2 * (dim_pad + dim_v_pad)) / kKeyStep * kKeyStep, 64, kMaxBlockKv);
    block_kv = std::min(kMaxBlockKv,
                        RoundUp(p.tiling.block_kv > 0 ? p.tiling.block_kv : auto_kv, kKeyStep));
    rows_pad = RoundUp(block_q * p.group, kGroupRows);
    q_tiles = CeilDiv(p.seq_q, block_q);
    heads_per_round = std::clamp<int64_t>(kPackBudgetBytes / head_bytes, 1,
                                          std::max<int64_t>(1, p.batch * p.kv_heads));
    stream_o = stream_output(p.o_bytes());
  }
};

// Per-thread buffers, carved 64-byte aligned from one block (base == nullptr:
// only `bytes` is meaningful). [2] = one per item parity (double buffers).
struct Scratch {
  uint16_t* q = nullptr;      // [rows_pad][dim_pad] bf16: raw q rows, zero-padded
  float* o = nullptr;         // [rows_pad][dim_v_pad] accumulators
  float* s[2] = {};           // [kGroupRows][block_kv] scores, then P
  uint16_t* p_hi[2] = {};     // [kGroupRows][block_kv] bf16
  uint16_t* p_lo[2] = {};     // [kGroupRows][block_kv] bf16
  float* alpha[2] = {};       // [kGroupRows]
  float* m = nullptr;         // [rows_pad] running max (score units)
  float* l = nullptr;         // [rows_pad] running sum
  TileRow* rows = nullptr;    // [rows_pad]
  uint16_t* pack_rows = nullptr;  // [kKeyStep][max(dim_pad, dim_v_pad)] bf16: rows being packed
  uint32_t* qt = nullptr;     // dot products: [rows_pad / 32][dim_pad / 2][32] q pairs, transposed
  uint16_t* p_dot = nullptr;  // dot products: [kGroupRows][bf16dot::kPStride] bf16 P
  int64_t bytes = 0;

  Scratch(const Geometry& g, char* base) {
    const auto take = [&](auto*& ptr, int64_t count) {
      using T = std::remove_reference_t<decltype(*ptr)>;
      ptr = base ? reinterpret_cast<T*>(base + bytes) : nullptr;
      bytes += RoundUp(count * static_cast<int64_t>(sizeof(T)), 64);
    };
    take(q, g.rows_pad * g.dim_pad);
    take(o, g.rows_pad * g.dim_v_pad);
    for (int i = 0; i < 2; ++i) {
      take(s[i], kGroupRows * g.block_kv);
      take(p_hi[i], kGroupRows * g.block_kv);
      take(p_lo[i], kGroupRows * g.block_kv);
      take(alpha[i], kGroupRows);
    }
    take(m, g.rows_pad);
    take(l, g.rows_pad);
    take(rows, g.rows_pad);
    take(pack_rows, kKeyStep * std::max(g.dim_pad, g.dim_v_pad));
    take(qt, g.rows_pad * g.dim_pad / 2);
    take(p_dot, kGroupRows * bf16dot::kPStride);
  }
};

// Packs keys [jb, jb + kKeyStep) of one (batch, kv head) into the tile
// layouts above: real keys below keys(b), zeros after. The rows are first
// copied (zero-padded) into `rows` [32][row_stride] in L1, then the tiles are
// written out in order with vector transposes.
//   kp: [key_pad / 16][dim_pad / 32][16 pair-rows][16 keys] pairs of bf16 (uint32)
//   vp: [key_pad / 32][dim_v_pad / 16][16 key pairs][16 columns][2] bf16
void PackStep(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t kvh, int64_t jb,
              uint16_t* HWY_RESTRICT kp, uint16_t* HWY_RESTRICT vp, uint16_t* HWY_RESTRICT rows) {
  const int64_t keys = p.keys(b);
  const int64_t dim_steps = g.dim_pad / kDimStep;
  const int64_t col_tiles = g.dim_v_pad / kColTile;
  const int64_t stride = std::max(g.dim_pad, g.dim_v_pad);
  const auto load_rows = [&](bool values) {
    const int64_t dim = values ? p.head_dim_v : p.head_dim;
    for (int64_t l = 0; l < kKeyStep; ++l) {
      uint16_t* row = rows + l * stride;
      if (jb + l < keys) {
        const void* src = values ? p.value_row(b, jb + l, kvh).data : p.key_row(b, jb + l, kvh).data;
        std::memcpy(row, src, static_cast<size_t>(dim) * 2);
        std::memset(row + dim, 0, static_cast<size_t>(stride - dim) * 2);
      } else {
        std::memset(row, 0, static_cast<size_t>(stride) * 2);
      }
    }
  };
  // K: tile (jb / 16 + t, step st), pair-row i, key n = pair 16 st + i of
  // key 16 t + n: the transpose of the [16 keys][16 pairs] block.
  load_rows(false);
  const uint32_t* pairs = reinterpret_cast<const uint32_t*>(rows);
  uint32_t* out = reinterpret_cast<uint32_t*>(kp + (jb / kKeyTile) * dim_steps * kTileElems);
  for (int64_t t = 0; t < 2; ++t) {
    for (int64_t st = 0; st < dim_steps; ++st) {
      Transpose16x16(pairs + 16 * t * (stride / 2) + 16 * st, stride / 2, out);
      out += kTileElems / 2;
    }
  }
  // V: step jb / 32, column tile c, pair-row i, column n, half h = element
  // 16 c + n of key 2 i + h: rows 2i and 2i + 1 interleaved.
  load_rows(true);
  const __m512i interleave = _mm512_set_epi16(
      47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  uint16_t* vout = vp + (jb / kKeyStep) * col_tiles * kTileElems;
  for (int64_t c = 0; c < col_tiles; ++c) {
    for (int64_t i = 0; i < 16; ++i) {
      const uint16_t* even = rows + 2 * i * stride + 16 * c;
      const __m512i e = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(even)));
      const __m512i o = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(even + stride)));
      _mm512_storeu_si512(vout, _mm512_permutex2var_epi16(e, interleave, o));
      vout += 32;
    }
  }
}

// Packs keys [j0, j1) of kv heads [h0, h1) of batch b, head h at base +
// (h - h0) * head_elems (K, then V): real keys below keys(b), zeros up to the
// next multiple of kKeyStep, nothing beyond (no block reads there). j0 is a
// multiple of kKeyStep. Step by step, every head in turn (walk_pack_steps).
void PackKeys(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t h0, int64_t h1,
              int64_t j0, int64_t j1, uint16_t* HWY_RESTRICT base, int64_t head_elems,
              uint16_t* HWY_RESTRICT rows) {
  const int64_t keys = p.keys(b);
  walk_pack_steps(p, b, h0, h1, j0, std::min(j1, RoundUp(keys, kKeyStep)), kKeyStep, keys,
                  [&](int64_t jb, int64_t h) {
                    uint16_t* kp = base + (h - h0) * head_elems;
                    PackStep(p, g, b, h, jb, kp, kp + g.k_elems, rows);
                  });
}

// x as computed so far, rounded: the compiler cannot fuse the operation that
// made it into the one that uses it (an empty asm that may change x).
template <class V>
HWY_INLINE void RoundedHere(V& x) {
  asm("" : "+v"(x.raw));
}

// OnlineSoftmaxRow (online_softmax-inl.h) for the scores scale * s[0, n_pad),
// with P written as bf16 instead of fp32 in place: hi[j] = p_j rounded to
// bf16; with kSplit, two terms: hi[j] = p_j truncated to bf16 (exact), lo[j]
// = bf16(p_j - hi[j]) (p_j - hi[j] is exact in fp32 and below 2^-7 p_j), so
// hi + lo = p_j to 2^-16. l adds the float32 p_j. One pass for the max, one
// for 2^x, the sum and the conversion. n_pad % 32 == 0. Returns alpha.
template <bool kSplit, class D>
HWY_INLINE float SoftmaxRowToBf16(D d, const ScoreUnits& units, const float* HWY_RESTRICT s,
                                  float scale, int64_t n_pad, float& m, float& l,
                                  uint16_t* HWY_RESTRICT hi, uint16_t* HWY_RESTRICT lo) {
  using V = hn::Vec<D>;
  static_assert(hn::MaxLanes(D()) == 16, "16 floats per vector: two make 32 bf16");
  // Rounding is monotonic, so the largest scale * s_j (as rounded in the exp
  // pass) is scale times the largest s_j, or the smallest for scale < 0.
  // The exp pass must round the product (RoundedHere): fused with the
  // subtraction of m into one FMA, the top key's exponent was its product's
  // rounding error instead of 0, half an ulp of it: Inf, or a row of zero
  // weights, from logits of about 1e10 (storing the scaled row back in this
  // pass instead cost 7-8%: 32/8 heads, seq 2048, no mask, 40.7 -> 43.4-44.3
  // ms on 2 threads; the rounding costs one operation per vector, ~1.5%).
  V ext0 = hn::Load(d, s), ext1 = hn::Load(d, s + 16);
  if (scale >= 0) {
    for (int64_t j = 32; j < n_pad; j += 32) {
      ext0 = hn::Max(ext0, hn::Load(d, s + j));
      ext1 = hn::Max(ext1, hn::Load(d, s + j + 16));
    }
    ext0 = hn::MaxOfLanes(d, hn::Max(ext0, ext1));
  } else {
    for (int64_t j = 32; j < n_pad; j += 32) {
      ext0 = hn::Min(ext0, hn::Load(d, s + j));
      ext1 = hn::Min(ext1, hn::Load(d, s + j + 16));
    }
    ext0 = hn::MinOfLanes(d, hn::Min(ext0, ext1));
  }
  const RowShift shift = AdvanceRowMax(units, hn::GetLane(ext0) * scale, m);
  const V vscale = hn::Set(d, scale);
  const V vm = hn::Set(d, shift.subtract);
  const V to_log2 = hn::Set(d, units.to_log2);
  const bool log2_units = units.to_log2 == 1.0f;
  const hn::RebindToUnsigned<D> du;
  const auto high_half = hn::Set(du, 0xffff0000u);
  V sum0 = hn::Zero(d), sum1 = hn::Zero(d);
  for (int64_t j = 0; j < n_pad; j += 32) {
    V x0 = hn::Mul(hn::Load(d, s + j), vscale), x1 = hn::Mul(hn::Load(d, s + j + 16), vscale);
    RoundedHere(x0);
    RoundedHere(x1);
    x0 = hn::Sub(x0, vm);
    x1 = hn::Sub(x1, vm);
    if (!log2_units) {
      x0 = hn::Mul(x0, to_log2);
      x1 = hn::Mul(x1, to_log2);
    }
    const V e0 = Exp2NonPositive(d, x0), e1 = Exp2NonPositive(d, x1);
    sum0 = hn::Add(sum0, e0);
    sum1 = hn::Add(sum1, e1);
    // cvtne2ps(x, y): bf16 elements 0..15 from y, 16..31 from x, rounded to
    // nearest even.
    if constexpr (!kSplit) {
      const __m512bh h = _mm512_cvtne2ps_pbh(e1.raw, e0.raw);
      _mm512_storeu_si512(hi + j, reinterpret_cast<const __m512i&>(h));
      continue;
    }
    const V h0 = hn::BitCast(d, hn::And(hn::BitCast(du, e0), high_half));
    const V h1 = hn::BitCast(d, hn::And(hn::BitCast(du, e1), high_half));
    const __m512bh h = _mm512_cvtne2ps_pbh(h1.raw, h0.raw);
    const __m512bh r = _mm512_cvtne2ps_pbh(hn::Sub(e1, h1).raw, hn::Sub(e0, h0).raw);
    _mm512_storeu_si512(hi + j, reinterpret_cast<const __m512i&>(h));
    _mm512_storeu_si512(lo + j, reinterpret_cast<const __m512i&>(r));
  }
  l = shift.alpha * l + hn::GetLane(hn::SumOfLanes(d, hn::Add(sum0, sum1)));
  return shift.alpha;
}

// x[0, n) *= factor (n % 16 == 0).
template <class D>
HWY_INLINE void ScaleRow(D d, float factor, float* HWY_RESTRICT x, int64_t n) {
  const auto f = hn::Set(d, factor);
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t j = 0; j < n; j += N) hn::Store(hn::Mul(f, hn::Load(d, x + j)), d, x + j);
}

// A key block x row group with some visible key: the unit of the pipeline.
struct Item {
  int64_t k0 = 0, n = 0, n_pad = 0;  // keys [k0, k0 + n), padded to n_pad (% 32 == 0)
  int64_t r0 = 0, rows = 0;          // real task rows [r0, r0 + rows) of the group
  bool all_full = false;             // every such row sees every key of the block
};

// The items of a task in order: key blocks (aligned to kKeyStep, covering
// every visible key), then row groups, each with the block's keys up to the
// last one its rows see; groups with no visible key of the block are
// skipped.
class ItemWalk {
 public:
  ItemWalk(const Geometry& g, const TileRow* rows, int64_t n_rows, int64_t key_begin,
           int64_t key_end)
      : rows_(rows), n_rows_(n_rows), block_kv_(g.block_kv), key_end_(key_end),
        k0_(key_begin / kKeyStep * kKeyStep) {}

  bool Next(Item& item) {
    for (; k0_ < key_end_; k0_ += block_kv_, r0_ = 0) {
      const int64_t block_end = std::min(k0_ + block_kv_, key_end_);
      while (r0_ < n_rows_) {
        const int64_t r0 = r0_;
        const int64_t rows = std::min(kGroupRows, n_rows_ - r0);
        r0_ += kGroupRows;
        const BlockKeys keys = RowsBlockKeys(rows_ + r0, rows, k0_, block_end);
        if (keys.end == k0_) continue;
        const int64_t n = keys.end - k0_;
        item = {k0_, n, RoundUp(n, kKeyStep), r0, rows, keys.all_full};
        return true;
      }
    }
    return false;
  }

 private:
  const TileRow* rows_;
  int64_t n_rows_, block_kv_, key_end_;
  int64_t k0_, r0_ = 0;
};

// A task's rows: query positions [q0, q1) of all heads of kv head `kvh`.
struct TaskRows {
  int64_t n = 0;                      // real rows
  int64_t key_begin = 0, key_end = 0;  // the union of their visible keys
};

// Rows: position, head, visible interval; raw Q rows; empty state. Padding
// rows (n .. rows_pad) have zero Q and P and are never stored.
TaskRows StartTask(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t kvh,
                   int64_t tile, Scratch& w) {
  const int64_t q0 = tile * g.block_q;
  const int64_t q1 = std::min(q0 + g.block_q, p.seq_q);
  const int64_t n_rows = (q1 - q0) * p.group;
  const int64_t rows_pad = RoundUp(n_rows, kGroupRows);
  std::memset(w.q, 0, static_cast<size_t>(rows_pad * g.dim_pad) * 2);
  const KeyRange keys = SetTileRows(p, b, kvh, q0, n_rows, w.rows);
  for (int64_t r = 0; r < n_rows; ++r) {
    const TileRow& row = w.rows[r];
    std::memcpy(w.q + r * g.dim_pad,
                static_cast<const uint16_t*>(p.q) + p.q_stride.offset(b, row.query, row.head),
                static_cast<size_t>(p.head_dim) * 2);
    w.m[r] = -std::numeric_limits<float>::infinity();
    w.l[r] = 0.0f;
  }
  std::memset(w.o, 0, static_cast<size_t>(rows_pad * g.dim_v_pad) * 4);
  return {n_rows, keys.begin, keys.end};
}

// Row r of an item: options and online softmax of its raw scores sr (in
// place), P as bf16 into hi (and lo, with exact_bf16_probs). Returns alpha.
float SoftmaxItemRow(const AttentionProblem& p, const ScoreUnits& units, const Item& it, int64_t r,
                     float* HWY_RESTRICT sr, uint16_t* HWY_RESTRICT hi, uint16_t* HWY_RESTRICT lo,
                     Scratch& w) {
  const hn::ScalableTag<float> d;
  const bool plain = p.softcap == 0 && !p.has_alibi() && !p.has_mask();
  float scale = units.q_scale;  // folded into the softmax passes unless options need it first
  if (!plain || !it.all_full || it.n < it.n_pad) {
    ScaleRow(d, scale, sr, it.n_pad);
    scale = 1.0f;
    ApplyScoreOptions(d, p, units, w.rows[it.r0 + r], it.k0, it.n, it.n_pad, !it.all_full, sr);
  }
  float& m = w.m[it.r0 + r];
  float& l = w.l[it.r0 + r];
  return lo != nullptr ? SoftmaxRowToBf16<true>(d, units, sr, scale, it.n_pad, m, l, hi, lo)
                       : SoftmaxRowToBf16<false>(d, units, sr, scale, it.n_pad, m, l, hi, nullptr);
}

// Normalize once; fold in the sink; store O and LSE.
void FinishTask(const AttentionProblem& p, const Geometry& g, int64_t n_rows, Scratch& w) {
  const ScoreUnits units(p);
  for (int64_t r = 0; r < n_rows; ++r) {
    StoreFinalRow(p, units, w.rows[r], w.m[r], w.l[r], w.o + r * g.dim_v_pad, g.stream_o);
  }
}

// One task on AMX tiles.
void RunTileAmx(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t kvh, int64_t tile,
                const uint16_t* HWY_RESTRICT kp, const uint16_t* HWY_RESTRICT vp, Scratch& w) {
  const TaskRows task = StartTask(p, g, b, kvh, tile, w);
  const ScoreUnits units(p);

  // Items, pipelined: while the rows of item i go through the softmax, the
  // tile steps of O += P.V of item i - 1 and of S = Q.K^T of item i + 1 are
  // issued between them, spread evenly.
  const bool split = p.exact_bf16_probs;  // P as P_hi + P_lo
  const int64_t dim_steps = g.dim_pad / kDimStep;
  const int64_t col_tiles = g.dim_v_pad / kColTile;
  const auto scores_of = [&](const Item& it, int buf) {
    return amx::ScoreSteps(w.q + it.r0 * g.dim_pad, g.dim_pad,
                           kp + (it.k0 / kKeyTile) * dim_steps * kTileElems, it.n_pad, w.s[buf],
                           g.block_kv);
  };
  const auto accumulate_of = [&](const Item& it, int buf) {
    return amx::AccumulateSteps(w.p_hi[buf], split ? w.p_lo[buf] : nullptr, g.block_kv, w.alpha[buf],
                                vp + (it.k0 / kKeyStep) * col_tiles * kTileElems, col_tiles,
                                it.n_pad, w.o + it.r0 * g.dim_v_pad, g.dim_v_pad);
  };
  ItemWalk walk(g, w.rows, task.n, task.key_begin, task.key_end);
  Item cur, next, prev;
  bool has_next = walk.Next(next), has_prev = false;
  if (has_next) scores_of(next, 0).Finish();
  int buf = 0;  // parity of cur; prev's buffers are buf ^ 1
  while (has_next) {
    cur = next;
    has_next = walk.Next(next);
    amx::TileSteps tile_steps(has_prev ? accumulate_of(prev, buf ^ 1) : amx::AccumulateSteps(),
                              has_next ? scores_of(next, buf ^ 1) : amx::ScoreSteps());
    const int64_t steps = tile_steps.steps();
    int64_t issued = 0;
    for (int64_t r = 0; r < cur.rows; ++r) {
      w.alpha[buf][r] = SoftmaxItemRow(p, units, cur, r, w.s[buf] + r * g.block_kv,
                                       w.p_hi[buf] + r * g.block_kv,
                                       split ? w.p_lo[buf] + r * g.block_kv : nullptr, w);
      for (const int64_t due = steps * (r + 1) / cur.rows; issued < due; ++issued) tile_steps.Step();
    }
    for (int64_t r = cur.rows; r < kGroupRows; ++r) {  // padding rows: P = 0
      std::memset(w.p_hi[buf] + r * g.block_kv, 0, static_cast<size_t>(cur.n_pad) * 2);
      if (split) std::memset(w.p_lo[buf] + r * g.block_kv, 0, static_cast<size_t>(cur.n_pad) * 2);
      w.alpha[buf][r] = 1.0f;
    }
    tile_steps.Finish();
    prev = cur;
    has_prev = true;
    buf ^= 1;
  }
  if (has_prev) accumulate_of(prev, buf ^ 1).Finish();
  FinishTask(p, g, task.n, w);
}

// One task on AVX512-BF16 dot products (bf16_dot.h), item by item: S for the
// item's rows, the softmax rows, then O += P.V. Only the real rows are
// computed (no padding rows), in panels of up to 12.
void RunTileDot(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t kvh, int64_t tile,
                const uint16_t* HWY_RESTRICT kp, const uint16_t* HWY_RESTRICT vp, Scratch& w) {
  const TaskRows task = StartTask(p, g, b, kvh, tile, w);
  const ScoreUnits units(p);
  // q pairs of each group of 32 rows, transposed: qt[i][r] = (q[r][2i], q[r][2i + 1]).
  const int64_t pairs = g.dim_pad / 2;
  for (int64_t r0 = 0; r0 < task.n; r0 += kGroupRows) {
    const uint32_t* rows = reinterpret_cast<const uint32_t*>(w.q + r0 * g.dim_pad);
    uint32_t* qt = w.qt + r0 * pairs;
    for (int64_t half = 0; half < 2; ++half) {
      for (int64_t c = 0; c < pairs; c += 16) {
        Transpose16x16(rows + 16 * half * pairs + c, pairs, qt + c * kGroupRows + 16 * half,
                       kGroupRows);
      }
    }
  }
  const int64_t dim_steps = g.dim_pad / kDimStep;
  const int64_t col_tiles = g.dim_v_pad / kColTile;
  ItemWalk walk(g, w.rows, task.n, task.key_begin, task.key_end);
  Item it;
  while (walk.Next(it)) {
    const uint32_t* qt = w.qt + it.r0 * pairs;
    const uint16_t* kb = kp + (it.k0 / kKeyTile) * dim_steps * kTileElems;
    const uint16_t* vb = vp + (it.k0 / kKeyStep) * col_tiles * kTileElems;
    float* s = w.s[0];
    const auto panel_rows = [&](int64_t r) {
      return static_cast<int>(std::min<int64_t>(bf16dot::kMaxRows, it.rows - r));
    };
    for (int64_t r = 0; r < it.rows; r += bf16dot::kMaxRows) {
      WithPanelRows(panel_rows(r), [&](auto kRows) {
        bf16dot::Scores<kRows()>(qt + r, kb, g.dim_pad, it.n_pad, s + r * g.block_kv, g.block_kv);
      });
    }
    for (int64_t r = 0; r < it.rows; ++r) {
      w.alpha[0][r] = SoftmaxItemRow(p, units, it, r, s + r * g.block_kv,
                                     w.p_dot + r * bf16dot::kPStride, nullptr, w);
    }
    for (int64_t r = 0; r < it.rows; r += bf16dot::kMaxRows) {
      WithPanelRows(panel_rows(r), [&](auto kRows) {
        const uint16_t* pr = w.p_dot + r * bf16dot::kPStride;
        float* o = w.o + (it.r0 + r) * g.dim_v_pad;
        int64_t c = 0;
        for (; c + 2 <= col_tiles; c += 2) {
          bf16dot::Values<kRows(), 2>(pr, vb + c * kTileElems, col_tiles, it.n_pad,
                                      w.alpha[0] + r, o + c * kColTile, g.dim_v_pad);
        }
        if (c < col_tiles) {
          bf16dot::Values<kRows(), 1>(pr, vb + c * kTileElems, col_tiles, it.n_pad,
                                      w.alpha[0] + r, o + c * kColTile, g.dim_v_pad);
        }
      });
    }
  }
  FinishTask(p, g, task.n, w);
}

}  // namespace

void Bf16FlashForward(const AttentionProblem& p, bool tiles) {
  if (p.batch == 0 || p.seq_q == 0) return;
  const Geometry g(p, tiles);
  const int64_t thread_bytes = Scratch(g, nullptr).bytes;
  const int64_t head_elems = g.k_elems + g.v_elems;
  const bool per_task = pair_per_task(p, head_elems * 2);
  const int threads = std::max(1, p.num_threads);
  const int64_t slots = per_task ? threads : g.heads_per_round;
  const int64_t pack_bytes = RoundUp(slots * head_elems * 2, 64);
  // One buffer (allocated before the parallel region, so std::bad_alloc
  // reaches the caller): the pack slots (run_pairs), then each thread's scratch.
  const ScratchLease lease =
      acquire_scratch(static_cast<size_t>((pack_bytes + threads * thread_bytes) / 4));
  uint16_t* const pack = reinterpret_cast<uint16_t*>(lease.data);
  char* const scratch_base = reinterpret_cast<char*>(lease.data) + pack_bytes;

#pragma omp parallel num_threads(threads)
  {
    ScopedFlushDenormals flush_denormals;
    std::optional<amx::ScopedTiles> tile_state;
    if (tiles) tile_state.emplace();
    Scratch scratch(g, scratch_base + omp_get_thread_num() * thread_bytes);
    run_pairs(
        p, per_task, g.heads_per_round, g.q_tiles, kPackChunkKeys, kKeyStep,
        [&](int64_t b, int64_t h0, int64_t h1, int64_t j0, int64_t j1, int64_t slot) {
          PackKeys(p, g, b, h0, h1, j0, j1, pack + slot * head_elems, head_elems,
                   scratch.pack_rows);
        },
        [&](int64_t b, int64_t h, int64_t tile, int64_t slot) {
          const uint16_t* base = pack + slot * head_elems;
          if (tiles) {
            RunTileAmx(p, g, b, h, tile, base, base + g.k_elems, scratch);
          } else {
            RunTileDot(p, g, b, h, tile, base, base + g.k_elems, scratch);
          }
        });
    if (g.stream_o) hwy::FlushStream();  // before the region's end, where o is read
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_POP_ATTRIBUTES

#endif  // QKV_HAVE_AMX && HWY_TARGET == HWY_AVX3

#if HWY_ONCE
namespace qkv::internal {

namespace {
std::atomic<Bf16Engine> g_forced{Bf16Engine::kNone};
}  // namespace

void bf16_flash_force_engine(Bf16Engine engine) { g_forced.store(engine, std::memory_order_relaxed); }

#if defined(QKV_HAVE_AMX) && (HWY_TARGETS & HWY_AVX3)
namespace {

bool usable(Bf16Engine engine) {
  switch (engine) {
    case Bf16Engine::kAmx: return amx_enabled();
    // The dot-product engine is the AVX3 pass's code: Highway must also find
    // AVX-512 usable (it is, wherever AVX512-BF16 is, unless tests forced a
    // lesser target, which then covers bfloat16 with the float32 kernel).
    case Bf16Engine::kDot:
      return avx512_bf16_enabled() && (hwy::SupportedTargets() & HWY_AVX3) != 0;
    case Bf16Engine::kNone: break;
  }
  return false;
}

}  // namespace

std::vector<Bf16Engine> bf16_flash_engines() {
  std::vector<Bf16Engine> engines;
  for (const Bf16Engine engine : {Bf16Engine::kAmx, Bf16Engine::kDot}) {
    if (usable(engine)) engines.push_back(engine);
  }
  return engines;
}

Bf16Engine bf16_flash_engine() {
  const Bf16Engine forced = g_forced.load(std::memory_order_relaxed);
  if (forced != Bf16Engine::kNone && usable(forced)) return forced;
  if (usable(Bf16Engine::kAmx)) return Bf16Engine::kAmx;
  return usable(Bf16Engine::kDot) ? Bf16Engine::kDot : Bf16Engine::kNone;
}

void bf16_flash_forward(const AttentionProblem& problem) {
  N_AVX3::Bf16FlashForward(problem, bf16_flash_engine() == Bf16Engine::kAmx);
}
#else  // this build has no bfloat16 kernel
std::vector<Bf16Engine> bf16_flash_engines() { return {}; }
Bf16Engine bf16_flash_engine() { return Bf16Engine::kNone; }
void bf16_flash_forward(const AttentionProblem&) {}
#endif

const char* bf16_engine_name(Bf16Engine engine) {
  switch (engine) {
    case Bf16Engine::kAmx: return "amx";
    case Bf16Engine::kDot: return "avx512-bf16";
    case Bf16Engine::kNone: break;
  }
  return "none";
}

bool bf16_flash_supports(const AttentionProblem& problem) {
  if (problem.dtype != DType::kBFloat16 || problem.kv_dtype != DType::kBFloat16) return false;
  switch (bf16_flash_engine()) {
    case Bf16Engine::kAmx: return true;
    // P in two bfloat16 terms is the tiles' way to exact weights; without
    // tiles the float32 kernel keeps P in float32, which is exact.
    case Bf16Engine::kDot: return !problem.exact_bf16_probs;
    case Bf16Engine::kNone: break;
  }
  return false;
}

}  // namespace qkv::internal
#endif  // HWY_ONCE
