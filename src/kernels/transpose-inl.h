// A 16 x 16 transpose of 32-bit elements in AVX-512 registers, for the
// kernels that lay data out (amx_forward.cpp and flash_forward.cpp pack
// keys, the AMX decode path turns a tile of scores around). Per-target code: only
// the AVX3 pass of foreach_target defines it.

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

// dst[i][n] = src[n][i] for a 16 x 16 block of 32-bit elements:
//   src: 16 rows of 16 at src_stride elements; dst: 16 rows of 16 at
//   dst_stride elements (16: contiguous).
// A narrower block: src_rows < 16 reads only that many rows (the others are
// zeros) and writes dst rows of src_rows elements (dst_stride >= src_rows).
// Pairs of rows interleaved (32-bit, then 64-bit), which leaves 4 x 4
// blocks transposed within each 128-bit lane, then the lanes of every four
// vectors transposed.
// (GCC 12 sees the undefined vector its unpack intrinsics start from as a
// maybe-uninitialized read.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
HWY_INLINE void Transpose16x16(const uint32_t* HWY_RESTRICT src, int64_t src_stride,
                               uint32_t* HWY_RESTRICT dst, int64_t dst_stride = 16,
                               int src_rows = 16) {
  __m512i r[16], a[16];
  for (int i = 0; i < 16; ++i) {
    r[i] = i < src_rows ? _mm512_loadu_si512(src + i * src_stride) : _mm512_setzero_si512();
  }
  const __mmask16 lanes = static_cast<__mmask16>((1u << src_rows) - 1);
  for (int k = 0; k < 8; ++k) {
    a[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    a[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  // r[4m + c], lane L: column 4L + c of rows 4m .. 4m + 3.
  for (int m = 0; m < 4; ++m) {
    r[4 * m + 0] = _mm512_unpacklo_epi64(a[4 * m], a[4 * m + 2]);
    r[4 * m + 1] = _mm512_unpackhi_epi64(a[4 * m], a[4 * m + 2]);
    r[4 * m + 2] = _mm512_unpacklo_epi64(a[4 * m + 1], a[4 * m + 3]);
    r[4 * m + 3] = _mm512_unpackhi_epi64(a[4 * m + 1], a[4 * m + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i lo01 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44);
    const __m512i hi01 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xEE);
    const __m512i lo23 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
    const __m512i hi23 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xEE);
    _mm512_mask_storeu_epi32(dst + dst_stride * c, lanes, _mm512_shuffle_i32x4(lo01, lo23, 0x88));
    _mm512_mask_storeu_epi32(dst + dst_stride * (4 + c), lanes,
                             _mm512_shuffle_i32x4(lo01, lo23, 0xDD));
    _mm512_mask_storeu_epi32(dst + dst_stride * (8 + c), lanes,
                             _mm512_shuffle_i32x4(hi01, hi23, 0x88));
    _mm512_mask_storeu_epi32(dst + dst_stride * (12 + c), lanes,
                             _mm512_shuffle_i32x4(hi01, hi23, 0xDD));
  }
}
#pragma GCC diagnostic pop

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();
#endif  // HWY_TARGET == HWY_AVX3

#endif  // QKV_KERNELS_TRANSPOSE_INL_H_
