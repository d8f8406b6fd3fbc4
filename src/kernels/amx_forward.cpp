// Flash forward for bfloat16 q, k, v, o on AMX tiles; the same algorithm,
// task schedule and score options as flash_forward.cpp, with both products
// on the tile unit and the softmax in AVX-512.
//
// Per task (kv head, query tile; rows = positions x GQA group, row r at
// position r / group, head kv_head * group + r % group), per key block
// [k0, k1), per group of 32 rows:
//   1. S = Q.K^T on tiles: raw bf16 products, exact in fp32, accumulated in
//      fp32. Q is not pre-scaled (that would round it to bf16 again): S is
//      multiplied by the score scale in fp32 afterwards, as a float32 kernel
//      that scales Q in float32 does up to one rounding.
//   2. options and online softmax per row (online_softmax-inl.h), in fp32:
//      P = 2^(S - m_new) in [0, 1], alpha = 2^(m_old - m_new); O *= alpha.
//   3. O += P.V on tiles with P = P_hi + P_lo, both bf16 (P_hi = bf16(P),
//      P_lo = bf16(P - P_hi)): two products, P known to about 2^-17 instead
//      of 2^-9 for P_hi alone, so the weights are as good as a float32
//      kernel's well below the bf16 rounding of o.
// Finally StoreFinalRow normalizes, folds in a sink and writes o and lse.
//
// Tiles (8 registers, one configuration: 16 rows x 64 bytes each):
//   tmm0..3  C: 2 x 2 blocks of 16 x 16 fp32 (S) or of O
//   tmm4, 5  A: 16 rows x 32 bf16 (Q rows over 32 of head_dim; P rows over 32 keys)
//   tmm6, 7  B: 16 pair-rows x 16 columns x 2 bf16 ("VNNI": B row i holds
//            (X[2i][n], X[2i+1][n]) for the 16 columns n of X [32][16])
// Packed layouts, once per (batch, kv head), keys rounded up to 32 with zeros:
//   K: [seq_kv / 16][head_dim_pad / 32][16][16][2]: B tiles of X = K^T,
//      head_dim zero-padded to a multiple of 32;
//   V: [seq_kv / 32][head_dim_v_pad / 16][16][16][2]: B tiles of X = V,
//      head_dim_v zero-padded to a multiple of 16.
// Every B tile is 1 KiB contiguous (stride 64 bytes).
//
// Compiled with AMX and AVX-512 flags: only amx_flash_forward reaches this
// code, after amx_flash_supports. The Highway helpers compile for the file's
// static target (AVX3).

#include "kernels/amx_forward.h"

#include "runtime/amx.h"

#ifdef QKV_HAVE_AMX

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "hwy/highway.h"
#include "kernels/convert-inl.h"
#include "kernels/online_softmax-inl.h"
#include "runtime/scratch.h"
#include "runtime/threads.h"

#if HWY_TARGET > HWY_AVX3
#error "amx_forward.cpp needs the AVX-512 compile flags of src/CMakeLists.txt"
#endif

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

constexpr int64_t kGroupRows = 32;  // rows per pass: two A tiles of 16
constexpr int64_t kDimStep = 32;    // bf16 per A-tile row: head_dim per tile product
constexpr int64_t kKeyStep = 32;    // keys per P.V tile product (and key padding)
constexpr int64_t kColTile = 16;    // columns of a C tile
constexpr int64_t kTileElems = 512; // bf16 in a packed 1 KiB B tile

constexpr int64_t kPackBudgetBytes = int64_t{8} << 20;
constexpr int64_t kPackChunkKeys = 512;  // keys per packing task (a multiple of kKeyStep)
constexpr int64_t kMaxBlockKv = 512;
// Rows (positions x group) per task, and keys per block: the task's Q (bf16)
// and O (fp32) at 128 rows are 96 KiB at head_dim 128, a K/V block of 128
// keys 64 KiB, S and P of one row group 32 KiB (L1).
constexpr int64_t kTargetTileRows = 128;
constexpr int64_t kTargetBlockBytes = 32 << 10;  // K block: keys * head_dim_pad * 2

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

// The tile unit reads and writes memory through inline assembly that does not
// tell the compiler which memory (tile loads name none): fence plain C++
// stores before tile loads and plain loads after tile stores.
inline void CompilerFence() { __asm__ __volatile__("" ::: "memory"); }

// ldtilecfg's 64-byte operand: palette 1, every tile 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) {
      bytes_per_row[t] = 64;
      rows[t] = 16;
    }
  }
};
static_assert(sizeof(TileConfig) == 64);

// Tile configuration of the calling thread for its lifetime (tile state is
// per thread): loaded on construction, released (back to the init state, so
// context switches stop saving 8 KiB) on destruction.
class ScopedTiles {
 public:
  ScopedTiles() {
    const TileConfig config;
    _tile_loadconfig(&config);
  }
  ~ScopedTiles() { _tile_release(); }
  ScopedTiles(const ScopedTiles&) = delete;
  ScopedTiles& operator=(const ScopedTiles&) = delete;
};

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
  int64_t thread_bytes = 0;  // per-thread scratch (Scratch)

  explicit Geometry(const AttentionProblem& p) {
    dim_pad = RoundUp(std::max<int64_t>(p.head_dim, 1), kDimStep);
    dim_v_pad = RoundUp(std::max<int64_t>(p.head_dim_v, 1), kColTile);
    key_pad = RoundUp(p.seq_kv, kKeyStep);
    block_q = p.tiling.block_q > 0
                  ? p.tiling.block_q
                  : std::max<int64_t>(1, kTargetTileRows / p.group);
    block_q = std::max<int64_t>(1, std::min(block_q, p.seq_q));
    const int64_t auto_kv = std::clamp<int64_t>(
        kTargetBlockBytes / (2 * std::max(dim_pad, dim_v_pad)) / kKeyStep * kKeyStep, 64, 256);
    block_kv = std::min(kMaxBlockKv,
                        RoundUp(p.tiling.block_kv > 0 ? p.tiling.block_kv : auto_kv, kKeyStep));
    rows_pad = RoundUp(block_q * p.group, kGroupRows);
    q_tiles = CeilDiv(p.seq_q, block_q);
    k_elems = key_pad * dim_pad;
    v_elems = key_pad * dim_v_pad;
    const int64_t head_bytes = std::max<int64_t>(1, (k_elems + v_elems) * 2);
    heads_per_round = std::clamp<int64_t>(kPackBudgetBytes / head_bytes, 1,
                                          std::max<int64_t>(1, p.batch * p.kv_heads));
    thread_bytes = Scratch::Bytes(*this);
  }

  // Per-thread buffers, carved from one 64-byte aligned block.
  struct Scratch {
    uint16_t* q;      // [rows_pad][dim_pad] bf16, raw q rows, zero-padded
    float* o;         // [rows_pad][dim_v_pad] accumulators
    float* s;         // [kGroupRows][block_kv] scores, then P
    uint16_t* p_hi;   // [kGroupRows][block_kv] bf16
    uint16_t* p_lo;   // [kGroupRows][block_kv] bf16
    float* m;         // [rows_pad] running max (score units)
    float* l;         // [rows_pad] running sum
    TileRow* rows;    // [rows_pad]
    uint16_t* row;    // [max(dim_pad, dim_v_pad)] bf16, a packing row

    static int64_t Sizes(const Geometry& g, int64_t* sizes) {
      sizes[0] = g.rows_pad * g.dim_pad * 2;
      sizes[1] = g.rows_pad * g.dim_v_pad * 4;
      sizes[2] = kGroupRows * g.block_kv * 4;
      sizes[3] = kGroupRows * g.block_kv * 2;
      sizes[4] = kGroupRows * g.block_kv * 2;
      sizes[5] = g.rows_pad * 4;
      sizes[6] = g.rows_pad * 4;
      sizes[7] = g.rows_pad * static_cast<int64_t>(sizeof(TileRow));
      sizes[8] = std::max(g.dim_pad, g.dim_v_pad) * 2;
      int64_t total = 0;
      for (int i = 0; i < 9; ++i) total += RoundUp(sizes[i], 64);
      return total;
    }
    static int64_t Bytes(const Geometry& g) {
      int64_t sizes[9];
      return Sizes(g, sizes);
    }
    Scratch(const Geometry& g, char* base) {
      int64_t sizes[9];
      Sizes(g, sizes);
      void* parts[9];
      for (int i = 0; i < 9; ++i) {
        parts[i] = base;
        base += RoundUp(sizes[i], 64);
      }
      q = static_cast<uint16_t*>(parts[0]);
      o = static_cast<float*>(parts[1]);
      s = static_cast<float*>(parts[2]);
      p_hi = static_cast<uint16_t*>(parts[3]);
      p_lo = static_cast<uint16_t*>(parts[4]);
      m = static_cast<float*>(parts[5]);
      l = static_cast<float*>(parts[6]);
      rows = static_cast<TileRow*>(parts[7]);
      row = static_cast<uint16_t*>(parts[8]);
    }
  };
};
using Scratch = Geometry::Scratch;

// Packs keys [j0, j1) of one (batch, kv head) into the tile layouts above:
// real keys below keys(b), zeros up to the next multiple of kKeyStep, nothing
// beyond (no block reads there). j0 is a multiple of kKeyStep.
//   kp: [key_pad / 16][dim_pad / 32][16 pairs][16 keys] pairs of bf16 (uint32)
//   vp: [key_pad / 32][dim_v_pad / 16][16 key pairs][16 columns][2] bf16
void PackKeys(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t kvh, int64_t j0,
              int64_t j1, uint16_t* HWY_RESTRICT kp, uint16_t* HWY_RESTRICT vp,
              uint16_t* HWY_RESTRICT row) {
  const int64_t keys = p.keys(b);
  j1 = std::min(j1, RoundUp(keys, kKeyStep));
  const int64_t dim_steps = g.dim_pad / kDimStep;
  const int64_t col_tiles = g.dim_v_pad / kColTile;
  uint32_t* kp32 = reinterpret_cast<uint32_t*>(kp);
  for (int64_t j = j0; j < j1; ++j) {
    // K row j as dim_pad / 2 pairs; pair c goes to tile j / 16, step c / 16,
    // pair-row c % 16, column j % 16.
    std::memset(row, 0, static_cast<size_t>(g.dim_pad) * 2);
    if (j < keys) std::memcpy(row, p.key_row(b, j, kvh).data, static_cast<size_t>(p.head_dim) * 2);
    const uint32_t* pairs = reinterpret_cast<const uint32_t*>(row);
    uint32_t* tile = kp32 + (j / 16) * dim_steps * (kTileElems / 2) + j % 16;
    for (int64_t c = 0; c < g.dim_pad / 2; ++c) tile[(c / 16) * 256 + (c % 16) * 16] = pairs[c];
    // V row j: element c goes to step j / 32, column tile c / 16, pair-row
    // (j % 32) / 2, column c % 16, half j % 2.
    std::memset(row, 0, static_cast<size_t>(g.dim_v_pad) * 2);
    if (j < keys) {
      std::memcpy(row, p.value_row(b, j, kvh).data, static_cast<size_t>(p.head_dim_v) * 2);
    }
    uint16_t* vt = vp + (j / kKeyStep) * col_tiles * kTileElems + ((j % kKeyStep) / 2) * 32 + j % 2;
    for (int64_t c = 0; c < g.dim_v_pad; ++c) vt[(c / 16) * kTileElems + (c % 16) * 2] = row[c];
  }
}

// s[r][j] = q[r] . k_{k0 + j} for r < 32, j < n_pad (raw bf16 dot products,
// fp32 accumulation).
//   q: [32][dim_pad] bf16; kp: packed K from key k0 (k0 % 32 == 0);
//   s: [32][s_stride] fp32; n_pad % 32 == 0
void ScoresOnTiles(const uint16_t* q, int64_t dim_pad, const uint16_t* kp, int64_t n_pad,
                   float* s, int64_t s_stride) {
  const int64_t steps = dim_pad / kDimStep;
  const int64_t q_bytes = dim_pad * 2, s_bytes = s_stride * 4;
  const uint16_t* q1 = q + 16 * dim_pad;
  CompilerFence();
  for (int64_t t = 0; t < n_pad / 16; t += 2) {
    const uint16_t* k0 = kp + t * steps * kTileElems;  // keys 16t .. 16t + 15
    const uint16_t* k1 = k0 + steps * kTileElems;      // the next 16
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t st = 0; st < steps; ++st) {
      _tile_loadd(4, q + st * kDimStep, q_bytes);
      _tile_loadd(5, q1 + st * kDimStep, q_bytes);
      _tile_loadd(6, k0 + st * kTileElems, 64);
      _tile_loadd(7, k1 + st * kTileElems, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    float* out = s + t * 16;
    _tile_stored(0, out, s_bytes);
    _tile_stored(1, out + 16, s_bytes);
    _tile_stored(2, out + 16 * s_stride, s_bytes);
    _tile_stored(3, out + 16 * s_stride + 16, s_bytes);
  }
  CompilerFence();
}

// o[r][0, dim_v_pad) += sum_{j < n_pad} (p_hi[r][j] + p_lo[r][j]) v_{k0 + j} for r < 32.
//   p_hi, p_lo: [32][p_stride] bf16; vp: packed V from key k0 (k0 % 32 == 0);
//   o: [32][o_stride] fp32; n_pad % 32 == 0
void AccumulateOnTiles(const uint16_t* p_hi, const uint16_t* p_lo, int64_t p_stride,
                       const uint16_t* vp, int64_t col_tiles, int64_t n_pad, float* o,
                       int64_t o_stride) {
  const int64_t steps = n_pad / kKeyStep;
  const int64_t p_bytes = p_stride * 2, o_bytes = o_stride * 4;
  const int64_t p_half = 16 * p_stride;
  float* o1 = o + 16 * o_stride;
  CompilerFence();
  int64_t c = 0;
  for (; c + 2 <= col_tiles; c += 2) {
    _tile_loadd(0, o + c * 16, o_bytes);
    _tile_loadd(1, o + c * 16 + 16, o_bytes);
    _tile_loadd(2, o1 + c * 16, o_bytes);
    _tile_loadd(3, o1 + c * 16 + 16, o_bytes);
    for (int64_t u = 0; u < steps; ++u) {
      const uint16_t* v = vp + (u * col_tiles + c) * kTileElems;
      _tile_loadd(6, v, 64);
      _tile_loadd(7, v + kTileElems, 64);
      _tile_loadd(4, p_hi + u * kKeyStep, p_bytes);
      _tile_loadd(5, p_hi + p_half + u * kKeyStep, p_bytes);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
      _tile_loadd(4, p_lo + u * kKeyStep, p_bytes);
      _tile_loadd(5, p_lo + p_half + u * kKeyStep, p_bytes);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, o + c * 16, o_bytes);
    _tile_stored(1, o + c * 16 + 16, o_bytes);
    _tile_stored(2, o1 + c * 16, o_bytes);
    _tile_stored(3, o1 + c * 16 + 16, o_bytes);
  }
  if (c < col_tiles) {  // an odd last column tile
    _tile_loadd(0, o + c * 16, o_bytes);
    _tile_loadd(2, o1 + c * 16, o_bytes);
    for (int64_t u = 0; u < steps; ++u) {
      _tile_loadd(6, vp + (u * col_tiles + c) * kTileElems, 64);
      _tile_loadd(4, p_hi + u * kKeyStep, p_bytes);
      _tile_loadd(5, p_hi + p_half + u * kKeyStep, p_bytes);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
      _tile_loadd(4, p_lo + u * kKeyStep, p_bytes);
      _tile_loadd(5, p_lo + p_half + u * kKeyStep, p_bytes);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
    }
    _tile_stored(0, o + c * 16, o_bytes);
    _tile_stored(2, o1 + c * 16, o_bytes);
  }
  CompilerFence();
}

// x rounded to the nearest bf16 (ties to even), kept as fp32. x finite.
template <class D>
HWY_INLINE hn::Vec<D> RoundToBf16(D d, hn::Vec<D> x) {
  const hn::RebindToUnsigned<D> du;
  const auto bits = hn::BitCast(du, x);
  const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
  const auto up = hn::Add(bits, hn::Add(lsb, hn::Set(du, 0x7fffu)));
  return hn::BitCast(d, hn::And(up, hn::Set(du, 0xffff0000u)));
}

// hi[j] = bf16(p[j]), lo[j] = bf16(p[j] - hi[j]) for j < n_pad (n_pad % 32
// == 0; p finite). p - hi is exact in fp32 (hi is p to 8 bits).
HWY_INLINE void SplitRow(const float* HWY_RESTRICT p, int64_t n_pad, uint16_t* HWY_RESTRICT hi,
                         uint16_t* HWY_RESTRICT lo) {
  const hn::Full512<float> d;
  for (int64_t j = 0; j < n_pad; j += 32) {
    const auto a = hn::LoadU(d, p + j), b = hn::LoadU(d, p + j + 16);
    const auto a_hi = RoundToBf16(d, a), b_hi = RoundToBf16(d, b);
    // cvtne2ps(x, y): elements 0..15 from y, 16..31 from x.
    const __m512bh h = _mm512_cvtne2ps_pbh(b_hi.raw, a_hi.raw);
    const __m512bh r = _mm512_cvtne2ps_pbh(hn::Sub(b, b_hi).raw, hn::Sub(a, a_hi).raw);
    _mm512_storeu_si512(hi + j, reinterpret_cast<const __m512i&>(h));
    _mm512_storeu_si512(lo + j, reinterpret_cast<const __m512i&>(r));
  }
}

// x[0, n) *= factor (n % 16 == 0).
template <class D>
HWY_INLINE void ScaleRow(D d, float factor, float* HWY_RESTRICT x, int64_t n) {
  const auto f = hn::Set(d, factor);
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t j = 0; j < n; j += N) hn::Store(hn::Mul(f, hn::Load(d, x + j)), d, x + j);
}

// One task: query positions [q0, q1) of all heads of kv head `kvh`.
void RunTile(const AttentionProblem& p, const Geometry& g, int64_t b, int64_t kvh, int64_t tile,
             const uint16_t* HWY_RESTRICT kp, const uint16_t* HWY_RESTRICT vp, Scratch& w) {
  const hn::ScalableTag<float> d;
  const int64_t q0 = tile * g.block_q;
  const int64_t q1 = std::min(q0 + g.block_q, p.seq_q);
  const int64_t n_rows = (q1 - q0) * p.group;
  const int64_t rows_pad = RoundUp(n_rows, kGroupRows);
  const ScoreUnits units(p);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  // 1. Rows: position, head, visible interval; raw Q rows; empty state.
  // Padding rows (n_rows .. rows_pad) have zero Q and P and are never stored.
  int64_t key_begin = p.seq_kv, key_end = 0;
  std::memset(w.q, 0, static_cast<size_t>(rows_pad * g.dim_pad) * 2);
  for (int64_t r = 0; r < n_rows; ++r) {
    TileRow& row = w.rows[r];
    row.batch = b;
    row.query = q0 + r / p.group;
    row.head = kvh * p.group + r % p.group;
    row.lo = std::max<int64_t>(0, p.key_lo(b, row.query));
    row.hi = p.key_hi(b, row.query);
    if (row.lo <= row.hi) {
      key_begin = std::min(key_begin, row.lo);
      key_end = std::max(key_end, row.hi + 1);
    }
    std::memcpy(w.q + r * g.dim_pad,
                static_cast<const uint16_t*>(p.q) + p.q_stride.offset(b, row.query, row.head),
                static_cast<size_t>(p.head_dim) * 2);
    w.m[r] = neg_inf;
    w.l[r] = 0.0f;
  }
  std::memset(w.o, 0, static_cast<size_t>(rows_pad * g.dim_v_pad) * 4);

  // 2. Key blocks, aligned to kKeyStep, covering every visible key.
  const bool plain = p.softcap == 0 && !p.has_alibi() && !p.has_mask();
  const int64_t col_tiles = g.dim_v_pad / kColTile;
  for (int64_t k0 = key_begin / kKeyStep * kKeyStep; k0 < key_end; k0 += g.block_kv) {
    const int64_t k1 = std::min(k0 + g.block_kv, key_end);
    const int64_t n = k1 - k0;
    const int64_t n_pad = RoundUp(n, kKeyStep);
    for (int64_t r0 = 0; r0 < rows_pad; r0 += kGroupRows) {
      const int64_t rows = std::min(kGroupRows, n_rows - r0);  // real rows of the group
      bool any_visible = false, all_full = true;
      for (int64_t r = 0; r < rows; ++r) {
        const TileRow& row = w.rows[r0 + r];
        any_visible |= row.lo < k1 && row.hi >= k0 && row.lo <= row.hi;
        all_full &= row.lo <= k0 && row.hi >= k1 - 1;
      }
      if (!any_visible) continue;
      ScoresOnTiles(w.q + r0 * g.dim_pad, g.dim_pad, kp + (k0 / 16) * (g.dim_pad / kDimStep) * kTileElems,
                    n_pad, w.s, g.block_kv);
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = w.s + r * g.block_kv;
        ScaleRow(d, units.q_scale, sr, n_pad);
        if (!plain || !all_full || n < n_pad) {
          ApplyScoreOptions(d, p, units, w.rows[r0 + r], k0, n, n_pad, !all_full, sr);
        }
        const float alpha = OnlineSoftmaxRow(d, units, sr, n_pad, w.m[r0 + r], w.l[r0 + r]);
        SplitRow(sr, n_pad, w.p_hi + r * g.block_kv, w.p_lo + r * g.block_kv);
        if (alpha != 1.0f) ScaleRow(d, alpha, w.o + (r0 + r) * g.dim_v_pad, g.dim_v_pad);
      }
      for (int64_t r = rows; r < kGroupRows; ++r) {  // padding rows: P = 0
        std::memset(w.p_hi + r * g.block_kv, 0, static_cast<size_t>(n_pad) * 2);
        std::memset(w.p_lo + r * g.block_kv, 0, static_cast<size_t>(n_pad) * 2);
      }
      AccumulateOnTiles(w.p_hi, w.p_lo, g.block_kv, vp + (k0 / kKeyStep) * col_tiles * kTileElems,
                        col_tiles, n_pad, w.o + r0 * g.dim_v_pad, g.dim_v_pad);
    }
  }

  // 3. Normalize once; fold in the sink; store O and LSE.
  for (int64_t r = 0; r < n_rows; ++r) {
    StoreFinalRow(p, units, w.rows[r], w.m[r], w.l[r], w.o + r * g.dim_v_pad);
  }
}

}  // namespace

void AmxFlashForward(const AttentionProblem& p) {
  if (p.batch == 0 || p.seq_q == 0) return;
  const Geometry g(p);
  const int64_t pairs = p.batch * p.kv_heads;
  const int64_t head_elems = g.k_elems + g.v_elems;
  const int64_t pack_bytes = RoundUp(g.heads_per_round * head_elems * 2, 64);
  const int threads = std::max(1, p.num_threads);
  // One buffer (allocated before the parallel region, so std::bad_alloc
  // reaches the caller): the packed K/V of a round, then each thread's scratch.
  const ScratchLease lease = acquire_scratch(
      static_cast<size_t>((pack_bytes + threads * g.thread_bytes) / 4));
  uint16_t* const pack = reinterpret_cast<uint16_t*>(lease.data);
  char* const scratch_base = reinterpret_cast<char*>(lease.data) + pack_bytes;
  const int64_t chunks = std::max<int64_t>(1, CeilDiv(p.seq_kv, kPackChunkKeys));
  const bool heavy_last = p.causal;  // later query tiles see more keys

#pragma omp parallel num_threads(threads)
  {
    ScopedFlushDenormals flush_denormals;
    ScopedTiles tiles;
    Scratch scratch(g, scratch_base + omp_get_thread_num() * g.thread_bytes);
    for (int64_t first = 0; first < pairs; first += g.heads_per_round) {
      const int64_t round = std::min(g.heads_per_round, pairs - first);
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < round * chunks; ++t) {
        const int64_t pair = first + t / chunks;
        const int64_t j0 = (t % chunks) * kPackChunkKeys;
        uint16_t* base = pack + (pair - first) * head_elems;
        PackKeys(p, g, pair / p.kv_heads, pair % p.kv_heads, j0, j0 + kPackChunkKeys, base,
                 base + g.k_elems, scratch.row);
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < round * g.q_tiles; ++t) {
        // Head-major: the threads share one head's K/V in the last-level cache.
        const int64_t pair = first + t / g.q_tiles;
        const int64_t order = t % g.q_tiles;
        const int64_t tile = heavy_last ? g.q_tiles - 1 - order : order;
        const uint16_t* base = pack + (pair - first) * head_elems;
        RunTile(p, g, pair / p.kv_heads, pair % p.kv_heads, tile, base, base + g.k_elems, scratch);
      }
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

namespace qkv::internal {

bool amx_flash_available() { return amx_enabled(); }

bool amx_flash_supports(const AttentionProblem& problem) {
  return problem.dtype == DType::kBFloat16 && problem.kv_dtype == DType::kBFloat16 &&
         amx_flash_available();
}

void amx_flash_forward(const AttentionProblem& problem) { HWY_NAMESPACE::AmxFlashForward(problem); }

}  // namespace qkv::internal

#else  // !QKV_HAVE_AMX: this build has no AMX kernel.

namespace qkv::internal {

bool amx_flash_available() { return false; }
bool amx_flash_supports(const AttentionProblem&) { return false; }
void amx_flash_forward(const AttentionProblem&) {}

}  // namespace qkv::internal

#endif  // QKV_HAVE_AMX
