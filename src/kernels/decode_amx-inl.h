// The decode kernel's scores for int8 caches on AMX-INT8 (decode.cpp
// chooses them at run time; P.V stays on AVX512-VNNI): the same integers as
// the VNNI path (decode_fixed-inl.h), q as 16-bit fixed point split into two
// bytes so that the tile unit's byte products give it exactly:
//   q16 = 256 * hi + lo,  hi, lo in [-128, 127]  (q16 in [-32768, 32639])
// One tile product takes both halves at once: the hi rows and the lo rows of
// q side by side, combined as 256 * hi + lo in int32 afterwards (exact:
// |sum| < 2^31 for head_dim <= 256). So the scores are the VNNI path's, bit
// for bit.
//
// Tiles, all 16 rows x 64 bytes (R = rows per group, at most 8; a product
// takes as long for 2R columns as for 16, so the spare ones are zeros):
//   C = A.B, 16 keys x 16 int32 (columns 2R and up zero)
//     C  tmm0, tmm6 alternately (one computes while the other is finished)
//     A  tmm1, tmm2 for even and odd 64s of head_dim: 16 keys x 64 bytes of
//        K, loaded straight from the cache (keys as rows: no transpose)
//     B  tmm3, tmm4 likewise: 16 x (2R x 4 bytes), q's halves
// P.V on tiles too (the weights split the same way, V interleaved by 4 keys
// into B tiles per block) made a step take 22-26% longer than with VNNI's
// P.V at 32K and 128K tokens: the V interleaving's stores stall the tile
// loads that follow them, and the tile products of a 4-row group save
// little. Tried again with the tiles of every kv head packed before any
// product (the stores long done) and the accumulator kept in the tiles'
// column order until the task ends: still 13% slower (one thread, 32K
// tokens), the samples on the products themselves, each waiting for the
// tile store of the one before.
// Only the AVX3 pass of foreach_target holds it, with AMX-TILE and AMX-INT8
// added to that pass's target attributes for these functions alone.
// Per-target code.

#if defined(QKV_KERNELS_DECODE_AMX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_DECODE_AMX_INL_H_
#undef QKV_KERNELS_DECODE_AMX_INL_H_
#else
#define QKV_KERNELS_DECODE_AMX_INL_H_
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "kernels/target_attributes.h"
#include "kernels/decode_parts-inl.h"
#include "kernels/amx_scope.h"
#include "kernels/transpose-inl.h"

#if defined(QKV_HAVE_AMX_INT8) && HWY_TARGET == HWY_AVX3
#include <immintrin.h>

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace decode_parts {

inline constexpr int64_t kAmxRows = 8;       // rows per group: 2R <= 16 tile rows
inline constexpr int64_t kAmxKeys = 16;      // keys per score tile
inline constexpr int64_t kAmxDims = 64;      // head_dim per score product
inline constexpr int64_t kAmxTileBytes = 1024;

QKV_PUSH_EXTRA_TARGET(",amx-tile,amx-int8")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// B tiles of one group's q rows: out[c] = [16][64 bytes], row i holding,
// for n < R: hi of row n, for R <= n < 2R: lo of row n - R, elements
// 64c + 4i .. 64c + 4i + 3 (rows past `rows` zero).
//   q16: [rows][q_stride], |q16| <= 32639; head_dim % 64 == 0
inline void PackQueryTiles(const int16_t* HWY_RESTRICT q16, int64_t q_stride, int64_t rows,
                           int64_t group_rows, int64_t head_dim, int8_t* HWY_RESTRICT out) {
  std::memset(out, 0, static_cast<size_t>(head_dim / kAmxDims * kAmxTileBytes));
  // m: [2 * group_rows][head_dim] bytes, hi of row n at row n, lo at row
  // group_rows + n (zeros past `rows`). Seen as 32-bit elements, tile c is
  // the transpose of m's columns [16c, 16c + 16).
  alignas(64) int8_t m[16 * 256];  // group_rows <= 8, head_dim <= 256
  std::memset(m, 0, static_cast<size_t>(2 * group_rows * head_dim));
  const __m512i half_step = _mm512_set1_epi16(128);
  const auto split = [&](const int16_t* q, __m256i& hi, __m256i& lo) {  // 32 elements
    const __m512i v = _mm512_loadu_si512(q);
    const __m512i h = _mm512_srai_epi16(_mm512_add_epi16(v, half_step), 8);  // floor((q + 128) / 256)
    hi = _mm512_cvtepi16_epi8(h);
    lo = _mm512_cvtepi16_epi8(_mm512_sub_epi16(v, _mm512_slli_epi16(h, 8)));  // in [-128, 127]
  };
  for (int64_t r = 0; r < rows; ++r) {
    // 64 elements per store, the span Transpose16x16 loads (so its loads
    // take the stored data forwarded, not after the stores complete).
    for (int64_t e = 0; e < head_dim; e += 64) {
      __m256i hi0, lo0, hi1, lo1;
      split(q16 + r * q_stride + e, hi0, lo0);
      split(q16 + r * q_stride + e + 32, hi1, lo1);
      _mm512_store_si512(m + r * head_dim + e, _mm512_inserti64x4(_mm512_castsi256_si512(hi0), hi1, 1));
      _mm512_store_si512(m + (group_rows + r) * head_dim + e,
                         _mm512_inserti64x4(_mm512_castsi256_si512(lo0), lo1, 1));
    }
  }
  for (int64_t c = 0; c < head_dim / kAmxDims; ++c) {
    Transpose16x16(reinterpret_cast<const uint32_t*>(m + c * kAmxDims), head_dim / 4,
                   reinterpret_cast<uint32_t*>(out + c * kAmxTileBytes), 16,
                   static_cast<int>(2 * group_rows));
  }
}

// Scores of 16 keys for one group of rows of one kv head, in two halves so
// that the tile unit computes one while the vector units finish another:
// IssueScoreTile<kC> runs the products into tile kC (0 or 6), and
// FinishScoreTile<kC> then stores it and writes
//   s[r * s_stride + t] = (q_scale[r] * (q16[r] . k_t)) * k_scale[t]
// for r < rows, t < 16 (the VNNI path's float operations, in its order).
//   k: the 16 keys' rows of this head: k + t * k_stride (k_stride may be
//      head_dim for a contiguous copy); q_tiles: PackQueryTiles
template <int kC>
HWY_INLINE void IssueScoreTile(const int8_t* k, int64_t k_stride, const int8_t* q_tiles,
                               int64_t head_dim) {
  // (The tile intrinsics take literal register numbers.)
  amx::CompilerFence();
  if constexpr (kC == 0) {
    _tile_zero(0);
  } else {
    _tile_zero(6);
  }
  for (int64_t c = 0; c < head_dim / kAmxDims; c += 2) {  // head_dim / 64 is 1, 2, 3 or 4
    _tile_loadd(1, k + c * kAmxDims, k_stride);
    _tile_loadd(3, q_tiles + c * kAmxTileBytes, 64);
    if constexpr (kC == 0) {
      _tile_dpbssd(0, 1, 3);
    } else {
      _tile_dpbssd(6, 1, 3);
    }
    if (c + 1 == head_dim / kAmxDims) break;
    _tile_loadd(2, k + (c + 1) * kAmxDims, k_stride);
    _tile_loadd(4, q_tiles + (c + 1) * kAmxTileBytes, 64);
    if constexpr (kC == 0) {
      _tile_dpbssd(0, 2, 4);
    } else {
      _tile_dpbssd(6, 2, 4);
    }
  }
}

//   scratch: 2 KiB
template <int kC>
HWY_INLINE void FinishScoreTile(int64_t rows, int64_t group_rows, const float* HWY_RESTRICT q_scale,
                                const float* HWY_RESTRICT k_scale, int32_t* HWY_RESTRICT scratch,
                                float* HWY_RESTRICT s, int64_t s_stride) {
  if constexpr (kC == 0) {
    _tile_stored(0, scratch, 64);
  } else {
    _tile_stored(6, scratch, 64);
  }
  amx::CompilerFence();
  // scratch[t][n] -> columns[n][t]: a row's hi and lo sums over the 16 keys.
  const __m512 ks = _mm512_loadu_ps(k_scale);
  __m512i first[8];
  uint32_t* columns = reinterpret_cast<uint32_t*>(scratch + 256);
  const bool narrow = group_rows <= 4;  // the hi and lo columns are the first 8
  if (narrow) {
    FirstColumns16x8(scratch, first);
  } else {
    Transpose16x16(reinterpret_cast<const uint32_t*>(scratch), 16, columns);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const __m512i hi = narrow ? first[r] : _mm512_loadu_si512(columns + 16 * r);
    const __m512i lo =
        narrow ? first[group_rows + r] : _mm512_loadu_si512(columns + 16 * (group_rows + r));
    const __m512 sum = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(hi, 8), lo));
    _mm512_storeu_ps(s + r * s_stride,
                     _mm512_mul_ps(_mm512_mul_ps(sum, _mm512_set1_ps(q_scale[r])), ks));
  }
}

// A score tile issued and not yet finished.
struct PendingScores {
  int64_t rows = 0;
  const float* q_scale = nullptr;
  const float* k_scale = nullptr;
  float* s = nullptr;
};

// Issues a score tile into tile 0 or 6 (by parity) and finishes the one
// issued before it (in the other), if any.
class ScoreTilePipe {
 public:
  ScoreTilePipe(int64_t group_rows, int32_t* scratch, int64_t s_stride)
      : group_rows_(group_rows), scratch_(scratch), s_stride_(s_stride) {}

  void Push(const int8_t* k, int64_t k_stride, const int8_t* q_tiles, int64_t head_dim,
            const PendingScores& scores) {
    if (parity_) {
      IssueScoreTile<6>(k, k_stride, q_tiles, head_dim);
    } else {
      IssueScoreTile<0>(k, k_stride, q_tiles, head_dim);
    }
    Finish();
    pending_ = scores;
    parity_ ^= 1;
  }

  // Finishes the last tile issued.
  void Finish() {
    if (pending_.s == nullptr) return;
    if (parity_) {  // the pending tile is the other one
      FinishScoreTile<0>(pending_.rows, group_rows_, pending_.q_scale, pending_.k_scale, scratch_,
                         pending_.s, s_stride_);
    } else {
      FinishScoreTile<6>(pending_.rows, group_rows_, pending_.q_scale, pending_.k_scale, scratch_,
                         pending_.s, s_stride_);
    }
    pending_.s = nullptr;
  }

 private:
  int64_t group_rows_;
  int32_t* scratch_;
  int64_t s_stride_;
  PendingScores pending_;
  int parity_ = 0;  // the tile the next Push issues into: 0 -> tmm0, 1 -> tmm6
};

// A kv head's rows in groups of at most kAmxRows (the last may be shorter;
// its missing rows are zeros in the tiles).
struct AmxGroups {
  int64_t rows;        // per kv head
  int64_t group_rows;  // R
  int64_t groups;
  int64_t dim_tiles;   // head_dim / 64
  AmxGroups(int64_t rows_per_head, int64_t head_dim)
      : rows(rows_per_head), group_rows(std::min(rows_per_head, kAmxRows)),
        groups((rows_per_head + group_rows - 1) / group_rows), dim_tiles(head_dim / kAmxDims) {}
  int64_t rows_of(int64_t group) const { return std::min(group_rows, rows - group * group_rows); }
  int64_t head_tile_bytes() const { return groups * dim_tiles * kAmxTileBytes; }
};

// PackQueryTiles for every group of one kv head's rows.
//   q16: [rows][head_dim]; out: [groups][dim_tiles][1 KiB]
inline void PackHeadQueryTiles(const AmxGroups& a, const int16_t* HWY_RESTRICT q16,
                               int64_t head_dim, int8_t* HWY_RESTRICT out) {
  for (int64_t gi = 0; gi < a.groups; ++gi) {
    PackQueryTiles(q16 + gi * a.group_rows * head_dim, head_dim, a.rows_of(gi), a.group_rows,
                   head_dim, out + gi * a.dim_tiles * kAmxTileBytes);
  }
}

// Scores of a block's n_pad keys for every kv head and row group, 16 keys at
// a time for all kv heads in turn (a token's K rows of all kv heads are
// adjacent: the block's K is read as one forward stream):
//   s[(kvh * rows + r) * kBlock + j] for the rows of kv head kvh, keys j
// Half of the next block's lines are requested around the tile work.
//   k_tokens: per key, where its token's K rows start (padded to n_pad with
//   stand-ins); q_tiles: PackHeadQueryTiles per kv head; k_scale:
//   [kv_heads][kBlock]; k_copy: 2 x 16 x head_dim bytes; scratch: 2 KiB
inline void BlockScoresAmx(const AmxGroups& a, const char* const* k_tokens, int64_t n_pad,
                           int64_t kv_heads, int64_t k_head_bytes, const int8_t* q_tiles,
                           const float* q16_scale, const float* k_scale, int8_t* k_copy,
                           int32_t* scratch, float* s, NextBlockPrefetch& next) {
  const int64_t head_dim = a.dim_tiles * kAmxDims;
  const int64_t steps = n_pad / kAmxKeys * kv_heads;
  const int64_t per_step = (next.lines() / 2 + steps - 1) / steps;
  ScoreTilePipe pipe(a.group_rows, scratch, kBlock);
  for (int64_t j = 0; j < n_pad; j += kAmxKeys) {
    // Keys equally spaced in memory (a contiguous cache, a page): tile loads
    // straight from the cache; else a copy of the rows first.
    const int64_t stride = k_tokens[j + 1] - k_tokens[j];
    bool even = true;
    for (int64_t t = 2; t < kAmxKeys; ++t) even &= k_tokens[j + t] - k_tokens[j + t - 1] == stride;
    for (int64_t kvh = 0; kvh < kv_heads; ++kvh) {
      next.Issue(per_step / 2);
      const int8_t* k = reinterpret_cast<const int8_t*>(k_tokens[j] + kvh * k_head_bytes);
      int64_t k_stride = stride;
      if (!even) {
        // Two copies in turn: the pipe's pending tile may come from the other.
        int8_t* copy = k_copy + (kvh % 2) * kAmxKeys * head_dim;
        for (int64_t t = 0; t < kAmxKeys; ++t) {
          std::memcpy(copy + t * head_dim, k_tokens[j + t] + kvh * k_head_bytes,
                      static_cast<size_t>(head_dim));
        }
        k = copy;
        k_stride = head_dim;
      }
      for (int64_t gi = 0; gi < a.groups; ++gi) {
        const int64_t row = kvh * a.rows + gi * a.group_rows;
        const int8_t* q = q_tiles + kvh * a.head_tile_bytes() + gi * a.dim_tiles * kAmxTileBytes;
        pipe.Push(k, k_stride, q, head_dim,
                  {a.rows_of(gi), q16_scale + row, k_scale + kvh * kBlock + j,
                   s + row * kBlock + j});
      }
      next.Issue(per_step - per_step / 2);  // half before the tile work, half after
    }
  }
  pipe.Finish();
}

#pragma GCC diagnostic pop
QKV_POP_EXTRA_TARGET

}  // namespace decode_parts
}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();
#endif  // QKV_HAVE_AMX_INT8 && HWY_TARGET == HWY_AVX3

#endif  // QKV_KERNELS_DECODE_AMX_INL_H_
