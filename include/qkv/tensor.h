// Tensor views: a pointer, an element type, a shape and strides. qkv never owns
// or copies the memory a view points to.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace qkv {

enum class DType : uint8_t {
  kFloat32,
  kFloat16,   // IEEE binary16
  kBFloat16,  // upper 16 bits of a float32
  kBool,      // one byte, nonzero = true (masks only)
  kInt8,      // signed byte with a float32 scale per (token, kv head) (KV cache only)
};

// Bytes per element, and a lower-case name ("float32", "float16", ...).
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

inline constexpr int kMaxRank = 4;

// A strided view of up to kMaxRank dimensions. Shape and strides are in
// elements (not bytes). The attention API requires the innermost dimension to
// be contiguous (stride 1) for Q, K, V and O; any other strides are allowed,
// so a [batch, heads, seq, head_dim] buffer is passed without a copy by
// permuting strides. A broadcast dimension of a mask may have stride 0.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};
  std::array<int64_t, kMaxRank> strides{};

  bool present() const { return data != nullptr; }
  int64_t numel() const;
  // "[2, 128, 8, 64]"
  std::string shape_string() const;

  // Row-major (C order) view of `shape`.
  static Tensor contiguous(const void* data, DType dtype,
                           std::initializer_list<int64_t> shape);
  // View with explicit strides (in elements), one per dimension.
  static Tensor strided(const void* data, DType dtype,
                        std::initializer_list<int64_t> shape,
                        std::initializer_list<int64_t> strides);
};

}  // namespace qkv
