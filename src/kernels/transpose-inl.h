// 16 x 16 (and 16 x 8) transposes of 32-bit elements in AVX-512 registers,
// for the kernels that lay data out (bf16_forward.cpp and flash_forward.cpp
// pack keys and Q panels, the AMX decode path turns a tile of scores around,
// the int8 decode path a block's scales), and an 8 x 8 one in AVX2
// registers (the int8 decode path's scales there). Per-target code: only
// the AVX3 and AVX2 passes of foreach_target define them.

#if defined(QKV_KERNELS_TRANSPOSE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_TRANSPOSE_INL_H_
#undef QKV_KERNELS_TRANSPOSE_INL_H_
#else
#define QKV_KERNELS_TRANSPOSE_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"

#if HWY_TARGET == HWY_AVX3
#include <immintrin.h>

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {

// (GCC 12 sees the undefined vector its unpack intrinsics start from as a
// maybe-uninitialized read.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The first two steps of both turns below: four rows of 16 32-bit elements
// in, out[c] holding in 128-bit lane L column 4L + c of the four rows (4 x 4
// blocks transposed within each lane): pairs of rows interleaved by 32 bits,
// then by 64.
HWY_INLINE void Transpose4x4InLanes(const __m512i* HWY_RESTRICT in, __m512i* HWY_RESTRICT out) {
  const __m512i a0 = _mm512_unpacklo_epi32(in[0], in[1]), a1 = _mm512_unpackhi_epi32(in[0], in[1]);
  const __m512i a2 = _mm512_unpacklo_epi32(in[2], in[3]), a3 = _mm512_unpackhi_epi32(in[2], in[3]);
  out[0] = _mm512_unpacklo_epi64(a0, a2);
  out[1] = _mm512_unpackhi_epi64(a0, a2);
  out[2] = _mm512_unpacklo_epi64(a1, a3);
  out[3] = _mm512_unpackhi_epi64(a1, a3);
}

// dst[i][n] = src[n][i] for a 16 x 16 block of 32-bit elements:
//   src: 16 rows of 16 at src_stride elements; dst: 16 rows of 16 at
//   dst_stride elements (16: contiguous).
// A narrower block: src_rows < 16 reads only that many rows (the others are
// zeros) and writes dst rows of src_rows elements (dst_stride >= src_rows).
// Pairs of rows interleaved (32-bit, then 64-bit), which leaves 4 x 4
// blocks transposed within each 128-bit lane, then the lanes of every four
// vectors transposed.
HWY_INLINE void Transpose16x16(const uint32_t* HWY_RESTRICT src, int64_t src_stride,
                               uint32_t* HWY_RESTRICT dst, int64_t dst_stride = 16,
                               int src_rows = 16) {
  __m512i r[16], a[16];
  for (int i = 0; i < 16; ++i) {
    r[i] = i < src_rows ? _mm512_loadu_si512(src + i * src_stride) : _mm512_setzero_si512();
  }
  const __mmask16 lanes = static_cast<__mmask16>((1u << src_rows) - 1);
  // a[4m + c], lane L: column 4L + c of rows 4m .. 4m + 3.
  for (int m = 0; m < 4; ++m) Transpose4x4InLanes(r + 4 * m, a + 4 * m);
  for (int c = 0; c < 4; ++c) {
    const __m512i lo01 = _mm512_shuffle_i32x4(a[c], a[4 + c], 0x44);
    const __m512i hi01 = _mm512_shuffle_i32x4(a[c], a[4 + c], 0xEE);
    const __m512i lo23 = _mm512_shuffle_i32x4(a[8 + c], a[12 + c], 0x44);
    const __m512i hi23 = _mm512_shuffle_i32x4(a[8 + c], a[12 + c], 0xEE);
    _mm512_mask_storeu_epi32(dst + dst_stride * c, lanes, _mm512_shuffle_i32x4(lo01, lo23, 0x88));
    _mm512_mask_storeu_epi32(dst + dst_stride * (4 + c), lanes,
                             _mm512_shuffle_i32x4(lo01, lo23, 0xDD));
    _mm512_mask_storeu_epi32(dst + dst_stride * (8 + c), lanes,
                             _mm512_shuffle_i32x4(hi01, hi23, 0x88));
    _mm512_mask_storeu_epi32(dst + dst_stride * (12 + c), lanes,
                             _mm512_shuffle_i32x4(hi01, hi23, 0xDD));
  }
}

// col[j][t] = c[t][j] for the first 8 columns of 16 rows of 32-bit elements
// (rows `row_stride` >= 8 elements apart; 16 for a 16 x 16 block): rows t and
// t + 8 share a vector, and one 8 x 8 turn runs in both 256-bit halves at
// once; 24 shuffles where the whole 16 x 16 turn takes 64, and the columns
// stay in registers.
HWY_INLINE void FirstColumns16x8(const int32_t* HWY_RESTRICT c, __m512i col[8],
                                 int64_t row_stride = 16) {
  __m512i z[8], b[8];
  for (int k = 0; k < 8; ++k) {  // 128-bit lanes: row k cols 0-3, 4-7, row k + 8 cols 0-3, 4-7
    z[k] = _mm512_inserti64x4(
        _mm512_castsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + row_stride * k))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + row_stride * (k + 8))), 1);
  }
  // b[4n + i], 128-bit lane L: rows 4n .. 4n + 3 (plus 8 in lanes 2, 3) of
  // column i (lanes 0, 2) or 4 + i (lanes 1, 3).
  for (int n = 0; n < 2; ++n) Transpose4x4InLanes(z + 4 * n, b + 4 * n);
  const __m512i even = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
  const __m512i odd = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  for (int i = 0; i < 4; ++i) {
    col[i] = _mm512_permutex2var_epi64(b[i], even, b[4 + i]);
    col[4 + i] = _mm512_permutex2var_epi64(b[i], odd, b[4 + i]);
  }
}
#pragma GCC diagnostic pop

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();
#endif  // HWY_TARGET == HWY_AVX3

#if HWY_TARGET == HWY_AVX2
#include <immintrin.h>

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {

// col[j][t] = c[t][j] for 8 rows of 8 32-bit elements (rows `row_stride`
// elements apart): pairs of rows interleaved by 32 bits, then by 64, which
// leaves 4 x 4 blocks transposed within each 128-bit lane, then the lanes of
// rows 0-3 and 4-7 joined. 24 shuffles.
HWY_INLINE void Columns8x8(const int32_t* HWY_RESTRICT c, __m256i col[8], int64_t row_stride) {
  __m256i r[8], a[8];
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + row_stride * k));
  }
  for (int n = 0; n < 2; ++n) {  // a[4n + i], lane L: column 4L + i of rows 4n .. 4n + 3
    const __m256i* in = r + 4 * n;
    const __m256i t0 = _mm256_unpacklo_epi32(in[0], in[1]), t1 = _mm256_unpackhi_epi32(in[0], in[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(in[2], in[3]), t3 = _mm256_unpackhi_epi32(in[2], in[3]);
    a[4 * n + 0] = _mm256_unpacklo_epi64(t0, t2);
    a[4 * n + 1] = _mm256_unpackhi_epi64(t0, t2);
    a[4 * n + 2] = _mm256_unpacklo_epi64(t1, t3);
    a[4 * n + 3] = _mm256_unpackhi_epi64(t1, t3);
  }
  for (int i = 0; i < 4; ++i) {
    col[i] = _mm256_permute2x128_si256(a[i], a[4 + i], 0x20);
    col[4 + i] = _mm256_permute2x128_si256(a[i], a[4 + i], 0x31);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();
#endif  // HWY_TARGET == HWY_AVX2

#endif  // QKV_KERNELS_TRANSPOSE_INL_H_
