// The decode kernel's products for int8 caches in integer arithmetic
// (decode.cpp chooses them at run time): q and each block's weights as
// 16-bit fixed point, pairs of int16 products summed into exact int32 sums.
// Two passes of foreach_target hold them: AVX3 with vpdpwssd (AVX512-VNNI
// added to that pass's target attributes for these functions alone; every
// CPU with AVX512-VNNI has the rest of AVX3), and AVX2 with vpmaddwd + vpaddd
// (no VNNI needed). Both form the same integers, so the same scores and
// weights. Per-target code.

#if defined(QKV_KERNELS_DECODE_FIXED_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_DECODE_FIXED_INL_H_
#undef QKV_KERNELS_DECODE_FIXED_INL_H_
#else
#define QKV_KERNELS_DECODE_FIXED_INL_H_
#endif

#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "kernels/target_attributes.h"
#include "kernels/decode_parts-inl.h"

#if HWY_ARCH_X86 && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QKV_DECODE_FIXED 1  // the compiler can target AVX512-VNNI for one function
#endif
// Whether this pass of foreach_target has the fixed-point products.
#if defined(QKV_DECODE_FIXED)
#define QKV_DECODE_FIXED_TARGET (HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2)
#else
#define QKV_DECODE_FIXED_TARGET 0
#endif

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace decode_parts {
namespace hn = hwy::HWY_NAMESPACE;

#if QKV_DECODE_FIXED_TARGET
// The shapes the products take: head_dim a multiple of kFixedDims (and at
// most 256), head_dim_v of kFixedColumns for P.V.
inline constexpr int64_t kFixedDims = HWY_TARGET == HWY_AVX3 ? 32 : 16;
inline constexpr int64_t kFixedColumns = HWY_TARGET == HWY_AVX3 ? 64 : 16;

// Largest magnitudes of the 16-bit fixed point: q's (its AMX-INT8 split
// into two signed bytes needs q16 <= 32639; the VNNI path uses the same, so
// both give the same integers), a block's weights' (>= 0).
inline constexpr float kQuery16Limit = 32639.0f;
inline constexpr float kWeight16Limit = 32767.0f;

// out = round(x / scale) as int16 with scale = max|x| / limit over x[0, n)
// (0 for a zero row; the largest becomes +-limit), n a multiple of the
// vector length: the 16-bit fixed point of the integer paths (q rows; a
// block's weights, x >= 0). The same integers on every target.
// max_abs: max|x| over x[0, n), known to the caller.
HWY_INLINE void QuantizeRow16(const float* HWY_RESTRICT x, int64_t n, float limit, float max_abs,
                              int16_t* HWY_RESTRICT out, float& scale) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<int16_t, decltype(d)> d16;
  scale = max_abs / limit;
  const auto inv = hn::Set(d, max_abs > 0 ? limit / max_abs : 0.0f);
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t i = 0; i < n; i += N) {  // round to nearest even; |.| <= limit
    hn::StoreU(hn::DemoteTo(d16, hn::NearestInt(hn::Mul(hn::LoadU(d, x + i), inv))), d16, out + i);
  }
}
HWY_INLINE void QuantizeRow16(const float* HWY_RESTRICT x, int64_t n, float limit,
                              int16_t* HWY_RESTRICT out, float& scale) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto max_v = hn::Zero(d);
  for (int64_t i = 0; i < n; i += N) max_v = hn::Max(max_v, hn::Abs(hn::LoadU(d, x + i)));
  QuantizeRow16(x, n, limit, hn::GetLane(hn::MaxOfLanes(d, max_v)), out, scale);
}
#endif  // QKV_DECODE_FIXED_TARGET


#if QKV_DECODE_FIXED_TARGET
// ScoreKeys for an int8 cache, in exact integer arithmetic: q as 16-bit fixed
// point, q16 = round(q / q_scale), |q16| <= 32639, the keys widened to int16,
// pairs of products summed into int32 (AVX3: vpdpwssd, one instruction per 32
// multiply-adds; AVX2: vpmaddwd then vpaddd), no conversion to float. Every
// target forms the same integer sums, so the same scores.
//   s[r * s_stride + t] = q_scale[r] * (q16[r] . k_t)   (times the key's own
//   scale later, with the other int8 scales)
//   q16: [kRows][q_stride]; head_dim a multiple of kFixedDims (the int16
//   lanes), <= 256 (the sums stay below 2^31: 256 * 32767 * 128 < 2^31)
// Rows kFixedScoreRows at a time: 4 x 4 accumulators in 32 registers, 2 x 4
// in 16 (AVX2; 4 rows x 2 keys per pass, each key widened once for all 4,
// was 2% slower there: 32K tokens, one thread, 7.32 against 7.17 ms).
// (GCC 12 sees the undefined vector some intrinsics start from as an
// uninitialized read.)
#if HWY_TARGET == HWY_AVX3
QKV_PUSH_EXTRA_TARGET(",avx512vnni")
#endif
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
inline constexpr int kFixedScoreRows = HWY_TARGET == HWY_AVX3 ? 4 : 2;

// acc + the pairwise sums of q * k: lane i gets q[2i] k[2i] + q[2i+1] k[2i+1].
template <class D32, class V16>
HWY_INLINE hn::Vec<D32> AddProductPairs(D32 d32, hn::Vec<D32> acc, V16 q, V16 k) {
#if HWY_TARGET == HWY_AVX3
  (void)d32;
  return hn::Vec<D32>{_mm512_dpwssd_epi32(acc.raw, q.raw, k.raw)};
#else
  (void)d32;
  // (The add as asm that writes acc's own register: from intrinsics GCC 12
  // wrote each sum of the score loop to the product's register and copied
  // it back, 8 of the loop's 32 instructions; callgrind, 4K tokens, 23
  // steps: 310 -> 289 M instructions. The same speed on the Intel VM, whose
  // cores drop the copies at rename.)
  __m256i sum = acc.raw;
  asm("vpaddd %1, %0, %0" : "+x"(sum) : "x"(_mm256_madd_epi16(q.raw, k.raw)));
  return hn::Vec<D32>{sum};
#endif
}

template <int kRows>
HWY_INLINE void ScoreKeysFixedRows(const int16_t* HWY_RESTRICT q16, int64_t q_stride,
                                   const float* HWY_RESTRICT q_scale, int64_t head_dim,
                                   HeadRows k_rows, float* HWY_RESTRICT s, int64_t s_stride) {
  const hn::ScalableTag<int16_t> d16;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  using V32 = hn::Vec<decltype(d32)>;
  V32 acc[kRows][kKeyGroup];
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kKeyGroup; ++t) acc[r][t] = hn::Zero(d32);
  }
  // (At least one pass, as a do-while: a loop that could run no time made
  // GCC keep the accumulators in a stack array, stored and reloaded around it.)
  int64_t c = 0;
  do {
    hn::Vec<decltype(d16)> k[kKeyGroup];
    for (int t = 0; t < kKeyGroup; ++t) {
      k[t] = hn::PromoteTo(d16, hn::LoadU(d8, static_cast<const int8_t*>(k_rows[t]) + c));
    }
    for (int r = 0; r < kRows; ++r) {
      const auto q = hn::LoadU(d16, q16 + r * q_stride + c);
      for (int t = 0; t < kKeyGroup; ++t) acc[r][t] = AddProductPairs(d32, acc[r][t], q, k[t]);
    }
    c += kFixedDims;
  } while (c < head_dim);
  for (int r = 0; r < kRows; ++r) {
    HWY_ALIGN int32_t sums[4];
    StoreSumsOf4(d32, acc[r][0], acc[r][1], acc[r][2], acc[r][3], sums);
    for (int t = 0; t < kKeyGroup; ++t) s[r * s_stride + t] = static_cast<float>(sums[t]) * q_scale[r];
  }
}

template <int kRows>
HWY_NOINLINE void ScoreKeysFixed(const int16_t* HWY_RESTRICT q16, int64_t q_stride,
                                 const float* HWY_RESTRICT q_scale, int64_t head_dim,
                                 HeadRows k_rows, float* HWY_RESTRICT s, int64_t s_stride) {
  static_assert(kRows <= 2 * kFixedScoreRows, "at most two passes of rows");
  constexpr int kFirst = kRows < kFixedScoreRows ? kRows : kFixedScoreRows;
  ScoreKeysFixedRows<kFirst>(q16, q_stride, q_scale, head_dim, k_rows, s, s_stride);
  if constexpr (kRows > kFirst) {
    ScoreKeysFixedRows<kRows - kFirst>(q16 + kFirst * q_stride, q_stride, q_scale + kFirst,
                                       head_dim, k_rows, s + kFirst * s_stride, s_stride);
  }
}

// The int16 pairs of keys j and j + 1 at columns [c, c + kFixedColumns):
// v[i] lane 2m, 2m + 1 = (row_j[col], row_j+1[col]) for the columns of
// part i. AVX3: the bytes interleaved per 128-bit lane, then halves widened,
// so the parts hold columns {0-7, 16-23}, {32-39, 48-55}, {8-15, 24-31},
// {40-47, 56-63}; AVX2: columns 0-7 and 8-15 in order.
template <class D16>
HWY_INLINE void WidenKeyPair(D16, const int8_t* HWY_RESTRICT a, const int8_t* HWY_RESTRICT b,
                             hn::Vec<D16>* HWY_RESTRICT v) {
#if HWY_TARGET == HWY_AVX3
  const __m512i x = _mm512_loadu_si512(a), y = _mm512_loadu_si512(b);
  const __m512i lo = _mm512_unpacklo_epi8(x, y), hi = _mm512_unpackhi_epi8(x, y);
  v[0].raw = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(lo));
  v[1].raw = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(lo, 1));
  v[2].raw = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(hi));
  v[3].raw = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(hi, 1));
#else
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
  const __m128i y = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  v[0].raw = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x, y));
  v[1].raw = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(x, y));
#endif
}

// The column sums of WidenKeyPair's parts, in column order: 16 (AVX3) or 8
// (AVX2) consecutive columns per vector.
template <class D32>
HWY_INLINE void ColumnOrder(D32, hn::Vec<D32>* HWY_RESTRICT sum) {
#if HWY_TARGET == HWY_AVX3
  const __m512i s0 = sum[0].raw, s1 = sum[1].raw, s2 = sum[2].raw, s3 = sum[3].raw;
  sum[0].raw = _mm512_shuffle_i32x4(s0, s2, 0x44);  // 128-bit lanes of two parts
  sum[1].raw = _mm512_shuffle_i32x4(s0, s2, 0xEE);
  sum[2].raw = _mm512_shuffle_i32x4(s1, s3, 0x44);
  sum[3].raw = _mm512_shuffle_i32x4(s1, s3, 0xEE);
#else
  (void)sum;  // already in order
#endif
}

// AccumulateValues for an int8 cache in integer arithmetic, per block and
// kFixedColumns columns: each row's weights (the value scales folded in) as
// 16-bit fixed point p16 = round(p / p_scale), p_scale = max p / 32767 (one
// per row and block), the V rows of a key pair interleaved as int16 pairs
// (WidenKeyPair), AddProductPairs summing p16_j v_j + p16_j+1 v_j+1 into
// int32 per column (exact: at most 64 * 32767 * 128 per block); then
// acc = alpha * acc + p_scale * sum, in float.
//   p16: [rows][kBlock], zero past n (QuantizeRow16 of the weights, which
//   are 0 past the block's keys; for an odd n the key after the last is the
//   last's row again, v_rows has it); head_dim_v % kFixedColumns == 0
template <int kRows>
HWY_INLINE void ValueBlockFixed(const int16_t* HWY_RESTRICT p16, const float* HWY_RESTRICT p_scale,
                                HeadRows v_rows, int64_t n, int64_t c,
                                const float* HWY_RESTRICT alpha, float* HWY_RESTRICT acc,
                                int64_t acc_stride, NextBlockPrefetch& prefetch,
                                int64_t prefetch_per_key) {
  const hn::ScalableTag<int16_t> d16;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Repartition<float, decltype(d16)> df;
  constexpr size_t kParts = kFixedColumns / hn::MaxLanes(d32);
  hn::Vec<decltype(d32)> sum[kRows][kParts];
  for (int r = 0; r < kRows; ++r) {
    for (size_t i = 0; i < kParts; ++i) sum[r][i] = hn::Zero(d32);
  }
  // (n >= 1: a do-while, see ScoreKeysFixedRows.)
  int64_t j0 = 0;
  do {
    prefetch.Issue(kKeysPerRequestFixed * prefetch_per_key);
    for (int64_t j = j0; j < std::min(n, j0 + kKeysPerRequestFixed); j += 2) {
      hn::Vec<decltype(d16)> v[kParts];
      WidenKeyPair(d16, static_cast<const int8_t*>(v_rows[j]) + c,
                   static_cast<const int8_t*>(v_rows[j + 1]) + c, v);
      for (int r = 0; r < kRows; ++r) {
        int32_t pair;
        std::memcpy(&pair, p16 + r * kBlock + j, sizeof(pair));
        const auto pr = hn::BitCast(d16, hn::Set(d32, pair));
        for (size_t i = 0; i < kParts; ++i) sum[r][i] = AddProductPairs(d32, sum[r][i], pr, v[i]);
      }
    }
    j0 += kKeysPerRequestFixed;
  } while (j0 < n);
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int r = 0; r < kRows; ++r) {
    ColumnOrder(d32, sum[r]);
    const auto a = hn::Set(df, alpha[r]), ps = hn::Set(df, p_scale[r]);
    float* o = acc + r * acc_stride + c;
    for (size_t i = 0; i < kParts; ++i) {
      const auto old = hn::Mul(a, hn::LoadU(df, o + N * i));
      hn::StoreU(hn::MulAdd(ps, hn::ConvertTo(df, sum[r][i]), old), df, o + N * i);
    }
  }
}
#pragma GCC diagnostic pop
#if HWY_TARGET == HWY_AVX3
QKV_POP_EXTRA_TARGET
#endif
#endif  // QKV_DECODE_FIXED_TARGET

#if QKV_DECODE_FIXED_TARGET
// acc = alpha * acc + P.V over the block's n keys for every row, rows in
// groups of kValueRows, columns in passes of kFixedColumns.
#if HWY_TARGET == HWY_AVX3
QKV_PUSH_EXTRA_TARGET(",avx512vnni")
#endif
inline HWY_NOINLINE void AccumulateValuesFixed(const Layout& g, int64_t n,
                                               const int16_t* HWY_RESTRICT p16,
                                               const float* HWY_RESTRICT p_scale, HeadRows v_rows,
                                               const float* HWY_RESTRICT alpha_rows,
                                               float* HWY_RESTRICT acc,
                                               NextBlockPrefetch& prefetch,
                                               int64_t prefetch_per_key) {
  for (int64_t r0 = 0; r0 < g.rows; r0 += kValueRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kValueRows, g.rows - r0));
    WithRows<kValueRows>(rows, [&](auto kRows) {
      for (int64_t c = 0; c < g.dv_pad; c += kFixedColumns) {
        ValueBlockFixed<kRows()>(p16 + r0 * kBlock, p_scale + r0, v_rows, n, c, alpha_rows + r0,
                                 acc + r0 * g.dv_pad, g.dv_pad, prefetch, prefetch_per_key);
      }
    });
  }
}
#if HWY_TARGET == HWY_AVX3
QKV_POP_EXTRA_TARGET
#endif
#endif  // QKV_DECODE_FIXED_TARGET


}  // namespace decode_parts
}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_DECODE_FIXED_INL_H_
