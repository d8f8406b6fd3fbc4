// Vectorized 2^x for the softmax, x <= 0 (the argument after subtracting the
// row max). Per-target code: included once per SIMD target by foreach_target.
//
// Method: n = round(x), f = x - n in [-0.5, 0.5], 2^f by a degree-6
// polynomial (a relative-error least-squares fit on Chebyshev nodes, max
// relative error 2e-9 in exact arithmetic, < 1 ulp after float32 Horner),
// then 2^n by adding n into the exponent bits. Arguments below -126 give
// exactly 0: no denormals, and masked scores (-inf) become exact zeros.

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

// 2^x for x <= 0 (also x = -inf); results for x > 0 are unspecified.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V Exp2NonPositive(D d, V x) {
  const hn::RebindToSigned<D> di;
  const V lowest = hn::Set(d, -126.0f);
  const auto underflow = x < lowest;
  x = hn::Max(x, lowest);  // also maps -inf and NaN-free: keeps n in range
  const V n = hn::Round(x);
  const V f = hn::Sub(x, n);
  V p = hn::Set(d, 1.535349293e-04f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.339887269e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.618436918e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.550332367e-02f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.402264774e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.931471825e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  // 2^n for n in [-126, 0]: biased exponent n + 127 in bits 23..30.
  const auto bits = hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127)));
  const V result = hn::Mul(p, hn::BitCast(d, bits));
  return hn::IfThenZeroElse(underflow, result);
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_EXP2_INL_H_
