// AVX512-BF16 products of the bfloat16 flash forward (bf16_forward.cpp), for
// CPUs with AVX512-BF16 but no AMX: the same packed K and V as the tile
// products (amx_tiles.h), read as vectors. Included only inside
// bf16_forward.cpp's region of AVX-512 + AVX512-BF16 target attributes.
//
// VDPBF16PS adds to each of 16 fp32 lanes the two products of a bf16 pair:
// acc[n] += a[2n] b[2n] + a[2n + 1] b[2n + 1], each product exact in fp32
// (8-bit significands), so a B tile row of pairs (X[2i][n], X[2i + 1][n]) is
// one vector operand, and the other is one broadcast pair of the A row.
// The loops over rows are unrolled by pragma: at -O2 (RelWithDebInfo) GCC
// otherwise keeps the accumulators in memory (2.4x slower in L1).
// Register blocks: kRows x 2 vectors of accumulators (24 of 32 zmm at 12
// rows), 2 vector loads and kRows broadcasts per 2 x kRows products, as the
// float32 micro-kernels (microkernel-inl.h), each product twice the work.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace qkv::internal::bf16dot {

inline constexpr int kMaxRows = 12;  // rows per register block (WithPanelRows, microkernel-inl.h)
// Row stride (bf16) of the P buffer: a compile-time constant, so the P.V
// kernel addresses all rows from one base register; 32 past the longest
// block (512 keys) keeps rows off the same 4 KiB-aliased sets.
inline constexpr int64_t kPStride = 512 + 32;

inline __m512bh AsPairs(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

// s[r][j] = q_r . k_j for kRows rows and n_pad keys: raw bf16 products, fp32
// sums (the score scale is applied by the softmax, as on tiles).
//   qt: [dim_pad / 2][32] bf16 pairs of the row group, transposed (qt[i][r] =
//       (q[r][2i], q[r][2i + 1])), offset to the panel's first row
//   kp: packed keys [n_pad / 16][dim_pad / 2][16 keys] pairs (amx_tiles.h)
//   s:  [kRows][s_stride] fp32; n_pad % 32 == 0, dim_pad % 2 == 0, dim_pad >= 2
template <int kRows>
inline void Scores(const uint32_t* __restrict qt, const uint16_t* __restrict kp, int64_t dim_pad,
                   int64_t n_pad, float* __restrict s, int64_t s_stride) {
  const int64_t pairs = dim_pad / 2;
  const int64_t group = pairs * 16;  // pairs per 16 keys
  const uint32_t* k = reinterpret_cast<const uint32_t*>(kp);
  for (int64_t j = 0; j < n_pad; j += 32, k += 2 * group) {
    __m512 acc0[kRows], acc1[kRows];
    for (int r = 0; r < kRows; ++r) {
      acc0[r] = _mm512_setzero_ps();
      acc1[r] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    do {  // pairs >= 1 (see Values)
      const __m512bh k0 = AsPairs(_mm512_loadu_si512(k + i * 16));
      const __m512bh k1 = AsPairs(_mm512_loadu_si512(k + group + i * 16));
#pragma GCC unroll 12
      for (int r = 0; r < kRows; ++r) {
        const __m512bh q = AsPairs(_mm512_set1_epi32(static_cast<int>(qt[i * 32 + r])));
        acc0[r] = _mm512_dpbf16_ps(acc0[r], q, k0);
        acc1[r] = _mm512_dpbf16_ps(acc1[r], q, k1);
      }
    } while (++i < pairs);
    for (int r = 0; r < kRows; ++r) {
      _mm512_storeu_ps(s + r * s_stride + j, acc0[r]);
      _mm512_storeu_ps(s + r * s_stride + j + 16, acc1[r]);
    }
  }
}

// o[r][16c, 16c + 16) = alpha[r] o[r][...] + sum_j p[r][j] v[j][...] for the
// kCols column tiles c of vp, kRows rows and n_pad keys.
//   p:  [kRows][kPStride] bf16 weights (zeros past the visible keys)
//   vp: packed V of the block's first key step, offset to the first column
//       tile: [n_pad / 32][col_tiles][16 key pairs][16 columns] pairs
//   o:  [kRows][o_stride] fp32; n_pad % 32 == 0, n_pad >= 32
// Invariant kept by the caller: o = sum_j 2^(s_j - m) v_j over the keys so far.
template <int kRows, int kCols>
inline void Values(const uint16_t* __restrict p, const uint16_t* __restrict vp, int64_t col_tiles,
                   int64_t n_pad, const float* __restrict alpha, float* __restrict o,
                   int64_t o_stride) {
  __m512 acc[kRows][kCols];
  for (int r = 0; r < kRows; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
    for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_mul_ps(a, _mm512_loadu_ps(o + r * o_stride + 16 * c));
  }
  const uint32_t* pp = reinterpret_cast<const uint32_t*>(p);
  const uint32_t* v = reinterpret_cast<const uint32_t*>(vp);
  // n_pad >= 32: a do-while. (A loop that could run no time made GCC keep the
  // accumulators in a stack array, stored and reloaded around it.)
  int64_t step = 0;
  do {
    for (int i = 0; i < 16; ++i) {
      __m512bh vc[kCols];
      for (int c = 0; c < kCols; ++c) vc[c] = AsPairs(_mm512_loadu_si512(v + c * 256 + i * 16));
#pragma GCC unroll 12
      for (int r = 0; r < kRows; ++r) {
        const __m512bh w = AsPairs(_mm512_set1_epi32(static_cast<int>(pp[r * (kPStride / 2) + i])));
        for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], w, vc[c]);
      }
    }
    pp += 16;
    v += col_tiles * 256;
  } while (++step < n_pad / 32);
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) _mm512_storeu_ps(o + r * o_stride + 16 * c, acc[r][c]);
  }
}

}  // namespace qkv::internal::bf16dot
