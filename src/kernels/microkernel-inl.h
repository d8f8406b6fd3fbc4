// Register-blocked micro-kernels of the flash forward: S = Q.K^T and
// O = alpha*O + P.V on panels of up to kMaxPanelRows query rows. Per-target code.
//
// Both kernels keep a kRows x 2-vector accumulator block in registers: at
// kRows = 6 on AVX2 that is 12 ymm accumulators + 2 loads + 1 broadcast = 15
// of 16 registers, and 12 independent FMA chains cover 2 FMA pipes x 4 cycles
// of latency. One k-step issues 2 vector loads and kRows broadcasts for
// 2 * kRows FMAs.

#if defined(QKV_KERNELS_MICROKERNEL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_MICROKERNEL_INL_H_
#undef QKV_KERNELS_MICROKERNEL_INL_H_
#else
#define QKV_KERNELS_MICROKERNEL_INL_H_
#endif

#include <cstdint>
#include <type_traits>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows per panel: 6 x 2 vectors = 12 accumulators fit 16 registers (AVX2,
// SSE4, 32-bit NEON); targets with 32 vector registers (AVX-512; NEON on
// 64-bit Arm, v0-v31) take 12 rows (24 accumulators), halving the K/V loads
// per FMA, and with 24 independent chains enough for four FMA pipes of 4
// cycles' latency (Neoverse V1/V2, Apple M cores), where 12 leave half idle.
// (On Arm this choice is not measured: no Arm hardware at hand; make test-arm
// checks its results under qemu-user.)
#undef QKV_KERNELS_32_VECTOR_REGISTERS
#if HWY_TARGET <= HWY_AVX3 || (HWY_ARCH_ARM_A64 && HWY_TARGET == HWY_NEON)
#define QKV_KERNELS_32_VECTOR_REGISTERS 1
#else
#define QKV_KERNELS_32_VECTOR_REGISTERS 0
#endif
#if QKV_KERNELS_32_VECTOR_REGISTERS
inline constexpr int kMaxPanelRows = 12;
#else
inline constexpr int kMaxPanelRows = 6;
#endif

// Calls f(std::integral_constant<int, rows>) for rows in [1, kMaxPanelRows].
template <class F>
HWY_INLINE void WithPanelRows(int rows, F&& f) {
  switch (rows) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
#if QKV_KERNELS_32_VECTOR_REGISTERS
    case 6: f(std::integral_constant<int, 6>()); break;
    case 7: f(std::integral_constant<int, 7>()); break;
    case 8: f(std::integral_constant<int, 8>()); break;
    case 9: f(std::integral_constant<int, 9>()); break;
    case 10: f(std::integral_constant<int, 10>()); break;
    case 11: f(std::integral_constant<int, 11>()); break;
    default: f(std::integral_constant<int, 12>()); break;
#else
    default: f(std::integral_constant<int, 6>()); break;
#endif
  }
}

// Row stride (floats) of the score panel: a compile-time constant so the
// kernels address all rows from one base register (12 row pointers would not
// fit the general-purpose registers next to the loop state). 16 floats of
// padding keep consecutive rows off the same 4 KiB-aliased cache sets.
inline constexpr int64_t kMaxBlockKv = 512;
inline constexpr int64_t kScoreStride = kMaxBlockKv + 16;

// s[r][0, 2N) = sum_k q[k][r] * kt[k][0, 2N) for r < kRows.
//   q:  [head_dim, kRows] (one packed query panel, transposed)
//   kt: [head_dim, 2N] (one packed key panel: 2N keys, transposed), aligned
//   s:  [kRows, kScoreStride], aligned
template <int kRows, class D>
HWY_INLINE void QKPanel(D d, const float* HWY_RESTRICT q, const float* HWY_RESTRICT kt,
                        int64_t head_dim, float* HWY_RESTRICT s) {
  using V = hn::Vec<D>;
  const size_t N = hn::Lanes(d);
  V acc0[kRows], acc1[kRows];
  for (int r = 0; r < kRows; ++r) {
    acc0[r] = hn::Zero(d);
    acc1[r] = hn::Zero(d);
  }
  for (int64_t k = 0; k < head_dim; ++k) {
    const V k0 = hn::Load(d, kt + k * 2 * N);
    const V k1 = hn::Load(d, kt + k * 2 * N + N);
    for (int r = 0; r < kRows; ++r) {
      const V qr = hn::Set(d, q[k * kRows + r]);
      acc0[r] = hn::MulAdd(qr, k0, acc0[r]);
      acc1[r] = hn::MulAdd(qr, k1, acc1[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    hn::Store(acc0[r], d, s + r * kScoreStride);
    hn::Store(acc1[r], d, s + r * kScoreStride + N);
  }
}

// o[r][c, c + kVecs*N) = alpha[r] * o[r][...] + sum_{j < n} p[r][j] * v[j][...]
//   p: p[r][j] at p + r * kPStride + j * kPStep ([kRows, kPStride] by
//      default; kPStride = 1, kPStep = the row stride reads p transposed)
//   v: [n, v_stride] (packed V rows), o: [kRows, o_stride]
// invariant kept by the forward: o = sum_j 2^(s_j - m) v_j for the keys so far.
// (The backward pass takes the same product with other operands: dQ += dS.K,
// and dV += P^T.dO, dK += dS^T.Q with P and dS read transposed.)
template <int kRows, int kVecs, int64_t kPStride = kScoreStride, int64_t kPStep = 1, class D>
HWY_INLINE void PVPanel(D d, const float* HWY_RESTRICT p, const float* HWY_RESTRICT v, int64_t v_stride, int64_t n,
                        const float* HWY_RESTRICT alpha, float* HWY_RESTRICT o,
                        int64_t o_stride) {
  using V = hn::Vec<D>;
  const size_t N = hn::Lanes(d);
  V acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    const V a = hn::Set(d, alpha[r]);
    for (int c = 0; c < kVecs; ++c) acc[r][c] = hn::Mul(a, hn::Load(d, o + r * o_stride + c * N));
  }
  for (int64_t j = 0; j < n; ++j) {
    V vj[kVecs];
    for (int c = 0; c < kVecs; ++c) vj[c] = hn::Load(d, v + j * v_stride + c * N);
    for (int r = 0; r < kRows; ++r) {
      const V pr = hn::Set(d, p[r * kPStride + j * kPStep]);
      for (int c = 0; c < kVecs; ++c) acc[r][c] = hn::MulAdd(pr, vj[c], acc[r][c]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kVecs; ++c) hn::Store(acc[r][c], d, o + r * o_stride + c * N);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_MICROKERNEL_INL_H_
