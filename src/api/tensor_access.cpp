#include "api/tensor_access.h"

#include <string>

#include "qkv/error.h"
#include "runtime/half.h"

namespace qkv::internal {

void check_bshd_float(const Tensor& t, const char* name) {
  const std::string n(name);
  if (!t.present()) throw Error(n + " is required but has no data");
  if (t.rank != 4) throw Error(n + " must have rank 4 but has shape " + t.shape_string());
  if (t.dtype != DType::kFloat32 && t.dtype != DType::kFloat16 && t.dtype != DType::kBFloat16) {
    throw Error(n + " must be float32, float16 or bfloat16, not " + dtype_name(t.dtype));
  }
  for (int d = 0; d < 4; ++d) {
    if (t.shape[d] < 0 || t.strides[d] < 0) {
      throw Error(n + " has a negative size or stride: shape " + t.shape_string());
    }
  }
  if (t.strides[3] != 1 && t.shape[3] > 1) {
    throw Error(n + " must have a contiguous innermost dimension (stride 1)");
  }
}

namespace {
int64_t offset(const Tensor& t, int64_t b, int64_t s, int64_t h) {
  return b * t.strides[0] + s * t.strides[1] + h * t.strides[2];
}
}  // namespace

void read_row(const Tensor& t, int64_t b, int64_t s, int64_t h, float* out) {
  const int64_t base = offset(t, b, s, h), n = t.shape[3];
  switch (t.dtype) {
    case DType::kFloat16:
      for (int64_t d = 0; d < n; ++d) out[d] = f32_from_f16(static_cast<const uint16_t*>(t.data)[base + d]);
      break;
    case DType::kBFloat16:
      for (int64_t d = 0; d < n; ++d) out[d] = f32_from_bf16(static_cast<const uint16_t*>(t.data)[base + d]);
      break;
    default:
      for (int64_t d = 0; d < n; ++d) out[d] = static_cast<const float*>(t.data)[base + d];
      break;
  }
}

void write_row(const Tensor& t, int64_t b, int64_t s, int64_t h, const float* in) {
  const int64_t base = offset(t, b, s, h), n = t.shape[3];
  switch (t.dtype) {
    case DType::kFloat16:
      for (int64_t d = 0; d < n; ++d) static_cast<uint16_t*>(t.data)[base + d] = f16_from_f32(in[d]);
      break;
    case DType::kBFloat16:
      for (int64_t d = 0; d < n; ++d) static_cast<uint16_t*>(t.data)[base + d] = bf16_from_f32(in[d]);
      break;
    default:
      for (int64_t d = 0; d < n; ++d) static_cast<float*>(t.data)[base + d] = in[d];
      break;
  }
}

}  // namespace qkv::internal
