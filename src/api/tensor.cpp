// Tensor view helpers.
#include "qkv/tensor.h"

#include <sstream>

namespace qkv {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kBool: return 1;
    case DType::kInt8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kBool: return "bool";
    case DType::kInt8: return "int8";
  }
  return "unknown";
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank && i < kMaxRank; ++i) n *= shape[i];
  return n;
}

std::string Tensor::shape_string() const {
  if (rank < 0 || rank > kMaxRank) return "<rank " + std::to_string(rank) + ">";
  std::ostringstream out;
  out << '[';
  for (int i = 0; i < rank; ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

Tensor Tensor::contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t;
  t.data = const_cast<void*>(data);
  t.dtype = dtype;
  t.rank = static_cast<int>(shape.size());
  if (t.rank > kMaxRank) return t;  // rejected by validation, shape left empty
  int i = 0;
  for (int64_t s : shape) t.shape[i++] = s;
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.strides[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

Tensor Tensor::strided(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                       std::initializer_list<int64_t> strides) {
  Tensor t = contiguous(data, dtype, shape);
  int i = 0;
  for (int64_t s : strides) {
    if (i < kMaxRank) t.strides[i] = s;
    ++i;
  }
  return t;
}

}  // namespace qkv
