// The decode kernel's products for int8 caches on AVX512-VNNI (decode.cpp
// chooses them at run time): integer arithmetic with q and the weights as
// 16-bit fixed point, vpdpwssd summing pairs of int16 products into int32.
// Only the AVX3 pass of foreach_target holds them, with AVX512-VNNI added to
// that pass's target attributes for these functions alone (every CPU with
// AVX512-VNNI has the rest of AVX3). Per-target code.

#if defined(QKV_KERNELS_DECODE_VNNI_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_DECODE_VNNI_INL_H_
#undef QKV_KERNELS_DECODE_VNNI_INL_H_
#else
#define QKV_KERNELS_DECODE_VNNI_INL_H_
#endif

#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "kernels/decode_parts-inl.h"

#if HWY_ARCH_X86 && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QKV_DECODE_VNNI 1  // the compiler can target AVX512-VNNI for one function
#endif

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace decode_parts {
namespace hn = hwy::HWY_NAMESPACE;

#if defined(QKV_DECODE_VNNI) && HWY_TARGET == HWY_AVX3
// ScoreKeys for an int8 cache on AVX512-VNNI, in exact integer arithmetic:
// q as 16-bit fixed point, q16 = round(q / q_scale), |q16| <= 32639, the
// keys widened to int16, pairs of products summed into int32 by vpdpwssd
// (one instruction per 32 multiply-adds, no conversion to float).
//   s[r * s_stride + t] = q_scale[r] * (q16[r] . k_t)   (times the key's own
//   scale later, with the other int8 scales)
//   q16: [kRows][q_stride]; head_dim % 32 == 0 and <= 256 (the sums stay
//   below 2^31: 256 * 32767 * 128 < 2^31)
// (GCC 12 sees the undefined vector some intrinsics start from as an
// uninitialized read.)
HWY_PUSH_ATTRIBUTES(HWY_TARGET_STR ",avx512vnni")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int kRows>
HWY_NOINLINE void ScoreKeysVnni(const int16_t* HWY_RESTRICT q16, int64_t q_stride,
                                const float* HWY_RESTRICT q_scale, int64_t head_dim,
                                HeadRows k_rows, float* HWY_RESTRICT s, int64_t s_stride) {
  __m512i acc[kRows][kKeyGroup];
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kKeyGroup; ++t) acc[r][t] = _mm512_setzero_si512();
  }
  for (int64_t c = 0; c < head_dim; c += 32) {
    __m512i k[kKeyGroup];
    for (int t = 0; t < kKeyGroup; ++t) {
      k[t] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(static_cast<const int8_t*>(k_rows[t]) + c)));
    }
    for (int r = 0; r < kRows; ++r) {
      const __m512i q = _mm512_loadu_si512(q16 + r * q_stride + c);
      for (int t = 0; t < kKeyGroup; ++t) acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], q, k[t]);
    }
  }
  const hn::Full512<int32_t> d32;
  for (int r = 0; r < kRows; ++r) {
    HWY_ALIGN int32_t sums[4];
    StoreSumsOf4(d32, hn::Vec512<int32_t>{acc[r][0]}, hn::Vec512<int32_t>{acc[r][1]},
                 hn::Vec512<int32_t>{acc[r][2]}, hn::Vec512<int32_t>{acc[r][3]}, sums);
    for (int t = 0; t < kKeyGroup; ++t) s[r * s_stride + t] = static_cast<float>(sums[t]) * q_scale[r];
  }
}
#pragma GCC diagnostic pop
HWY_POP_ATTRIBUTES

// Largest magnitudes of the 16-bit fixed point: q's (its AMX-INT8 split
// into two signed bytes needs q16 <= 32639; the VNNI path uses the same, so
// both give the same integers), a block's weights' (>= 0).
inline constexpr float kQuery16Limit = 32639.0f;
inline constexpr float kWeight16Limit = 32767.0f;

// out = round(x / scale) as int16 with scale = max|x| / limit over x[0, n)
// (0 for a zero row; the largest becomes +-limit), n % 16 == 0: the 16-bit
// fixed point of the VNNI and AMX paths (q rows; a block's weights, x >= 0).
// max_abs: max|x| over x[0, n), known to the caller.
HWY_INLINE void QuantizeRow16(const float* HWY_RESTRICT x, int64_t n, float limit, float max_abs,
                              int16_t* HWY_RESTRICT out, float& scale) {
  const hn::Full512<float> d;
  const hn::Rebind<int16_t, decltype(d)> d16;
  scale = max_abs / limit;
  const auto inv = hn::Set(d, max_abs > 0 ? limit / max_abs : 0.0f);
  for (int64_t i = 0; i < n; i += 16) {  // round to nearest even; |.| <= limit
    hn::StoreU(hn::DemoteTo(d16, hn::NearestInt(hn::Mul(hn::LoadU(d, x + i), inv))), d16, out + i);
  }
}
HWY_INLINE void QuantizeRow16(const float* HWY_RESTRICT x, int64_t n, float limit,
                              int16_t* HWY_RESTRICT out, float& scale) {
  const hn::Full512<float> d;
  auto max_v = hn::Zero(d);
  for (int64_t i = 0; i < n; i += 16) max_v = hn::Max(max_v, hn::Abs(hn::LoadU(d, x + i)));
  QuantizeRow16(x, n, limit, hn::GetLane(hn::MaxOfLanes(d, max_v)), out, scale);
}

// AccumulateValues for an int8 cache on AVX512-VNNI, in integer arithmetic
// per block: each row's weights (the value scales folded in) as 16-bit fixed
// point p16 = round(p / p_scale), p_scale = max p / 32767 (one per row and
// block), V rows of a key pair interleaved as int16 pairs, vpdpwssd summing
// p16_j v_j + p16_j+1 v_j+1 into int32 per column (exact: at most 64 * 32767
// * 128 per block); then acc = alpha * acc + p_scale * sum, in float.
//   p16: [rows][kBlock], zero past n (QuantizeRow16 of the weights, which
//   are 0 past the block's keys; for an odd n the key after the last is the
//   last's row again, v_rows has it); head_dim_v % 64 == 0
HWY_PUSH_ATTRIBUTES(HWY_TARGET_STR ",avx512vnni")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int kRows>
HWY_INLINE void ValueBlockVnni(const int16_t* HWY_RESTRICT p16, const float* HWY_RESTRICT p_scale,
                               HeadRows v_rows, int64_t n, int64_t c,
                               const float* HWY_RESTRICT alpha, float* HWY_RESTRICT acc,
                               int64_t acc_stride, NextBlockPrefetch& prefetch,
                               int64_t prefetch_per_key) {
  // acc_int[r][i], i = 0..3: columns c + {0-7, 16-23}, {32-39, 48-55},
  // {8-15, 24-31}, {40-47, 56-63} (the unpack order), int32.
  __m512i sum[kRows][4];
  for (int r = 0; r < kRows; ++r) {
    for (int i = 0; i < 4; ++i) sum[r][i] = _mm512_setzero_si512();
  }
  for (int64_t j0 = 0; j0 < n; j0 += kKeysPerRequestVnni) {
    prefetch.Issue(kKeysPerRequestVnni * prefetch_per_key);
    for (int64_t j = j0; j < std::min(n, j0 + kKeysPerRequestVnni); j += 2) {
      const __m512i a = _mm512_loadu_si512(static_cast<const int8_t*>(v_rows[j]) + c);
      const __m512i b = _mm512_loadu_si512(static_cast<const int8_t*>(v_rows[j + 1]) + c);
      const __m512i lo = _mm512_unpacklo_epi8(a, b), hi = _mm512_unpackhi_epi8(a, b);
      const __m512i v[4] = {_mm512_cvtepi8_epi16(_mm512_castsi512_si256(lo)),
                            _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(lo, 1)),
                            _mm512_cvtepi8_epi16(_mm512_castsi512_si256(hi)),
                            _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(hi, 1))};
      for (int r = 0; r < kRows; ++r) {
        int32_t pair;
        std::memcpy(&pair, p16 + r * kBlock + j, sizeof(pair));
        const __m512i pr = _mm512_set1_epi32(pair);
        for (int i = 0; i < 4; ++i) sum[r][i] = _mm512_dpwssd_epi32(sum[r][i], pr, v[i]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]), ps = _mm512_set1_ps(p_scale[r]);
    float* o = acc + r * acc_stride + c;
    // Natural column order: 16 columns from the 128-bit lanes of two sums.
    const __m512i natural[4] = {_mm512_shuffle_i32x4(sum[r][0], sum[r][2], 0x44),
                                _mm512_shuffle_i32x4(sum[r][0], sum[r][2], 0xEE),
                                _mm512_shuffle_i32x4(sum[r][1], sum[r][3], 0x44),
                                _mm512_shuffle_i32x4(sum[r][1], sum[r][3], 0xEE)};
    for (int i = 0; i < 4; ++i) {
      const __m512 old = _mm512_mul_ps(a, _mm512_loadu_ps(o + 16 * i));
      _mm512_storeu_ps(o + 16 * i, _mm512_fmadd_ps(ps, _mm512_cvtepi32_ps(natural[i]), old));
    }
  }
}

// acc = alpha * acc + P.V over the block's n keys for every row, rows in
// groups of kValueRows, columns in passes of 64.
inline HWY_NOINLINE void AccumulateValuesVnni(const Layout& g, int64_t n,
                                              const int16_t* HWY_RESTRICT p16,
                                              const float* HWY_RESTRICT p_scale, HeadRows v_rows,
                                              const float* HWY_RESTRICT alpha_rows,
                                              float* HWY_RESTRICT acc,
                                              NextBlockPrefetch& prefetch,
                                              int64_t prefetch_per_key) {
  for (int64_t r0 = 0; r0 < g.rows; r0 += kValueRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kValueRows, g.rows - r0));
    WithRows<kValueRows>(rows, [&](auto kRows) {
      for (int64_t c = 0; c < g.dv_pad; c += 64) {
        ValueBlockVnni<kRows()>(p16 + r0 * kBlock, p_scale + r0, v_rows, n, c, alpha_rows + r0,
                                acc + r0 * g.dv_pad, g.dv_pad, prefetch, prefetch_per_key);
      }
    });
  }
}
#pragma GCC diagnostic pop
HWY_POP_ATTRIBUTES
#endif  // QKV_DECODE_VNNI && HWY_TARGET == HWY_AVX3

}  // namespace decode_parts
}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_DECODE_VNNI_INL_H_
