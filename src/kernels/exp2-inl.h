// Vectorized 2^x for the softmax, x <= 0 (the argument after subtracting the
// row max). Per-target code: included once per SIMD target by foreach_target.
//
// Method: n = round(x), f = x - n in [-0.5, 0.5], 2^f by a degree-6
// polynomial (a relative-error least-squares fit on Chebyshev nodes, max
// relative error 2e-9 in exact arithmetic; after float32 Horner < 1 ulp with
// FMA, 1.23 ulp without), then 2^n by adding n into the exponent bits
// (AVX-512: scalef). Arguments below -126 give exactly 0: no denormals, and
// masked scores (-inf) become exact zeros. tests/exp2_test.cpp checks every
// float of the range on every target.

#if defined(QKV_KERNELS_EXP2_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_EXP2_INL_H_
#undef QKV_KERNELS_EXP2_INL_H_
#else
#define QKV_KERNELS_EXP2_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// 2^f for f in [-0.5, 0.5]: the polynomial part of Exp2NonPositive.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V Exp2Fraction(D d, V f) {
  V p = hn::Set(d, 1.535349293e-04f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.339887269e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.618436918e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.550332367e-02f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.402264774e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.931471825e-01f));
  return hn::MulAdd(p, f, hn::Set(d, 1.0f));
}

// 2^x for x <= 0 (also x = -inf); results for x > 0 are unspecified.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V Exp2NonPositive(D d, V x) {
  const V lowest = hn::Set(d, -126.0f);
#if HWY_TARGET <= HWY_AVX3
  if constexpr (hn::MaxLanes(d) == 16) {
    // AVX-512: 2^n and the underflow in one instruction, p * 2^n with the
    // lanes below -126 zeroed (scalef); n = round(x) as a float. Where x is
    // -inf, f is NaN, and that lane is zeroed. Same bits as below.
    const __mmask16 keep = hn::Ge(x, lowest).raw;
    const V magic = hn::Set(d, 12582912.0f);
    const V n = hn::Sub(hn::Add(x, magic), magic);
    const V p = Exp2Fraction(d, hn::Sub(x, n));
    return V{_mm512_maskz_scalef_ps(keep, p.raw, n.raw)};
  }
#endif
  const hn::RebindToSigned<D> di;
  const auto underflow = x < lowest;
  x = hn::Max(x, lowest);  // maps -inf too: keeps n in [-126, 0]
  // Adding 1.5 * 2^23 rounds x to an integer n (ties to even) held in the low
  // mantissa bits of t; the +127 bias makes those bits the biased exponent of
  // 2^n. Cheaper than round + convert, and exact for |x| < 2^22.
  const V magic = hn::Set(d, 12582912.0f + 127.0f);
  const V t = hn::Add(x, magic);
  const V n = hn::Sub(t, magic);
  const V p = Exp2Fraction(d, hn::Sub(x, n));  // f in [-0.5, 0.5]
  // Low bits of t = n + 127 in [1, 127]; shifted into bits 23..30 they are 2^n.
  const V pow2n = hn::BitCast(d, hn::ShiftLeft<23>(hn::BitCast(di, t)));
  return hn::IfThenZeroElse(underflow, hn::Mul(p, pow2n));
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_EXP2_INL_H_
