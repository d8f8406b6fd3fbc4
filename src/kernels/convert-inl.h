// Row conversion between the storage types (float32, float16, bfloat16) and
// the float32 the kernels compute in. Per-target code.

#if defined(QKV_KERNELS_CONVERT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_CONVERT_INL_H_
#undef QKV_KERNELS_CONVERT_INL_H_
#else
#define QKV_KERNELS_CONVERT_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"
#include "qkv/tensor.h"
#include "runtime/half.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// N floats from element i of a row of storage type kDtype (any but kBool);
// int8 values come back unscaled.
template <DType kDtype, class D>
HWY_INLINE hn::Vec<D> LoadAsFloat(D d, const void* HWY_RESTRICT row, int64_t i) {
  if constexpr (kDtype == DType::kFloat16) {
    const hn::Rebind<hwy::float16_t, D> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, static_cast<const hwy::float16_t*>(row) + i));
  } else if constexpr (kDtype == DType::kBFloat16) {
    const hn::Rebind<hwy::bfloat16_t, D> db;
    return hn::PromoteTo(d, hn::LoadU(db, static_cast<const hwy::bfloat16_t*>(row) + i));
  } else if constexpr (kDtype == DType::kInt8) {
    const hn::Rebind<int8_t, D> d8;
    const hn::Rebind<int32_t, D> d32;
    return hn::ConvertTo(d, hn::PromoteTo(d32, hn::LoadU(d8, static_cast<const int8_t*>(row) + i)));
  } else {
    return hn::LoadU(d, static_cast<const float*>(row) + i);
  }
}

// Element i of a row of storage type kDtype as float (int8 unscaled).
template <DType kDtype>
HWY_INLINE float ElementAsFloat(const void* HWY_RESTRICT row, int64_t i) {
  if constexpr (kDtype == DType::kFloat16) {
    return f32_from_f16(static_cast<const uint16_t*>(row)[i]);
  } else if constexpr (kDtype == DType::kBFloat16) {
    return f32_from_bf16(static_cast<const uint16_t*>(row)[i]);
  } else if constexpr (kDtype == DType::kInt8) {
    return static_cast<float>(static_cast<const int8_t*>(row)[i]);
  } else {
    return static_cast<const float*>(row)[i];
  }
}

template <DType kDtype>
HWY_INLINE void LoadRowScaledAs(const void* HWY_RESTRICT row, int64_t n, float scale,
                                float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vscale = hn::Set(d, scale);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(LoadAsFloat<kDtype>(d, row, i), vscale), d, out + i);
  for (; i < n; ++i) out[i] = ElementAsFloat<kDtype>(row, i) * scale;
}

// out[0, n) = scale * row[0, n), row of storage type `dtype` (not kBool; for
// kInt8 `scale` carries the row's quantization scale).
HWY_INLINE void LoadRowScaled(DType dtype, const void* row, int64_t n, float scale,
                              float* HWY_RESTRICT out) {
  switch (dtype) {
    case DType::kFloat32: return LoadRowScaledAs<DType::kFloat32>(row, n, scale, out);
    case DType::kFloat16: return LoadRowScaledAs<DType::kFloat16>(row, n, scale, out);
    case DType::kBFloat16: return LoadRowScaledAs<DType::kBFloat16>(row, n, scale, out);
    case DType::kInt8: return LoadRowScaledAs<DType::kInt8>(row, n, scale, out);
    case DType::kBool: return;
  }
}

// Where a row of `elem_size`-byte elements at `row` may take streaming
// stores: elements [lead, end) are the whole 64-byte lines it covers (lead =
// the elements before its first line boundary); {0, 0} if it covers none or
// `row` is not aligned to its elements.
struct LineSpan {
  int64_t lead = 0, end = 0;
};
HWY_INLINE LineSpan WholeLines(const void* row, size_t elem_size, int64_t n) {
  constexpr uintptr_t kLine = 64;
  const uintptr_t at = reinterpret_cast<uintptr_t>(row);
  if (at % elem_size != 0) return {};
  const auto per_line = static_cast<int64_t>(kLine / elem_size);
  const auto lead = static_cast<int64_t>((kLine - at % kLine) % kLine / elem_size);
  if (lead >= n) return {};
  return {lead, lead + (n - lead) / per_line * per_line};
}

// row[0, n) (storage type `dtype`: float32, float16 or bfloat16) = scale * in[0, n),
// rounded to nearest. `stream`: the row's whole cache lines are written with
// streaming stores (no read of the lines first; the caller runs
// hwy::FlushStream() before anyone reads the row), the rest with normal ones.
HWY_INLINE void StoreRowScaled(const float* HWY_RESTRICT in, int64_t n, float scale, DType dtype,
                               void* row, bool stream = false) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vscale = hn::Set(d, scale);
  // (Stored vectors of 16 bytes to a line: whole vectors fill the lines,
  // and none is a partial vector, whose streaming store may write 16 bytes.)
  const size_t elem_size = dtype_size(dtype);
  const size_t vector_bytes = static_cast<size_t>(N) * elem_size;
  const LineSpan lines = stream && vector_bytes >= 16 && vector_bytes <= 64
                             ? WholeLines(row, elem_size, n)
                             : LineSpan{};
  int64_t i = 0;
  switch (dtype) {
    case DType::kFloat32: {
      float* dst = static_cast<float*>(row);
      if (lines.end > lines.lead) {
        for (; i < lines.lead; ++i) dst[i] = in[i] * scale;
        for (; i < lines.end; i += N) hn::Stream(hn::Mul(hn::LoadU(d, in + i), vscale), d, dst + i);
      }
      for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, in + i), vscale), d, dst + i);
      for (; i < n; ++i) dst[i] = in[i] * scale;
      break;
    }
    case DType::kFloat16: {
      hwy::float16_t* dst = static_cast<hwy::float16_t*>(row);
      uint16_t* dst_bits = reinterpret_cast<uint16_t*>(dst);  // (Arm: float16_t is __fp16)
#if (HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2) || HWY_ARCH_ARM
      // Hardware conversion (F16C, NEON) rounds to nearest even; Highway's
      // emulation on other targets truncates, so those take the scalar path.
      const hn::Rebind<hwy::float16_t, decltype(d)> dh;
      const hn::Rebind<uint16_t, decltype(d)> du16;
      if (lines.end > lines.lead) {
        for (; i < lines.lead; ++i) dst_bits[i] = f16_from_f32(in[i] * scale);
        for (; i < lines.end; i += N) {
          hn::Stream(hn::BitCast(du16, hn::DemoteTo(dh, hn::Mul(hn::LoadU(d, in + i), vscale))), du16,
                     dst_bits + i);
        }
      }
      for (; i + N <= n; i += N) {
        hn::StoreU(hn::DemoteTo(dh, hn::Mul(hn::LoadU(d, in + i), vscale)), dh, dst + i);
      }
#endif
      for (; i < n; ++i) dst_bits[i] = f16_from_f32(in[i] * scale);
      break;
    }
    case DType::kBFloat16: {
      hwy::bfloat16_t* dst = static_cast<hwy::bfloat16_t*>(row);
      uint16_t* bits_out = reinterpret_cast<uint16_t*>(dst);
      const hn::RebindToUnsigned<decltype(d)> du;
      const hn::RebindToSigned<decltype(d)> di;
      const hn::Rebind<uint16_t, decltype(d)> du16;
      const auto rounded_bf16 = [&](int64_t at) {
        // Round to nearest even on the bits: add 0x7fff + lsb of the kept half.
        const auto bits = hn::BitCast(du, hn::Mul(hn::LoadU(d, in + at), vscale));
        const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
        const auto rounded = hn::ShiftRight<16>(hn::Add(bits, hn::Add(lsb, hn::Set(du, 0x7fffu))));
        return hn::DemoteTo(du16, hn::BitCast(di, rounded));
      };
      if (lines.end > lines.lead) {
        for (; i < lines.lead; ++i) bits_out[i] = bf16_from_f32(in[i] * scale);
        for (; i < lines.end; i += N) hn::Stream(rounded_bf16(i), du16, bits_out + i);
      }
      for (; i + N <= n; i += N) hn::StoreU(rounded_bf16(i), du16, bits_out + i);
      for (; i < n; ++i) bits_out[i] = bf16_from_f32(in[i] * scale);
      break;
    }
    case DType::kInt8:
    case DType::kBool:
      break;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_CONVERT_INL_H_
