// NumPy .npy files: a careful reader and an all-or-nothing writer.
//
// Format (numpy.lib.format): the magic "\x93NUMPY", a major and a minor
// version byte, the header length (uint16 for version 1.0, uint32 for 2.0 and
// 3.0, little-endian), then the header, a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces and ended by '\n', then the raw C-order data.
//
// The reader trusts nothing in the file: every error (missing file, truncated
// magic, header or data, malformed dict, unsupported dtype, Fortran order, a
// shape that disagrees with the file size) throws qkv::tools::CommandError
// with one line that starts with the path, e.g.
//   Q.npy: header claims shape (1000000, 1000, 8, 128) = 4096000000000 bytes
//   but the file holds 4096 data bytes
// The size is checked against the file before any allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace qkv::tools {

// The element types qkv reads and writes (little-endian where it matters).
enum class NpyType : uint8_t {
  kFloat32,  // '<f4'
  kFloat16,  // '<f2' (IEEE binary16)
  kBool,     // '|b1'
  kUInt8,    // '|u1'
  kInt8,     // '|i1'
};

size_t npy_type_size(NpyType type);
const char* npy_type_descr(NpyType type);  // "<f4", as written in the header
const char* npy_type_name(NpyType type);   // "float32"

// Bytes of an array of `shape` and `type`, or nullopt when a dimension is
// negative or the product overflows int64.
std::optional<int64_t> npy_byte_size(NpyType type, const std::vector<int64_t>& shape);

// "(2, 3)", "(5,)", "()": the shape as numpy prints it.
std::string npy_shape_string(const std::vector<int64_t>& shape);

// An owning byte buffer aligned to 64 bytes (a cache line, and the widest
// SIMD register). Never null, even when empty, so that a zero-size array is
// still a present qkv::Tensor.
class AlignedBytes {
 public:
  static constexpr size_t kAlignment = 64;
  AlignedBytes() = default;
  explicit AlignedBytes(size_t size);  // zero-filled
  void* data() { return data_.get(); }
  const void* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, Free> data_;
  size_t size_ = 0;
};

// What an array holds, pointing at memory owned elsewhere (for writing).
struct NpyView {
  NpyType type = NpyType::kFloat32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // npy_byte_size(type, shape) bytes, C order
};

// An array read from a file, or made to be written: C order, little-endian.
struct NpyArray {
  NpyType type = NpyType::kFloat32;
  std::vector<int64_t> shape;
  AlignedBytes bytes;

  // A zero-filled array; the caller checks that the size is sane.
  static NpyArray zeros(NpyType type, std::vector<int64_t> shape);

  int64_t numel() const;
  int rank() const { return static_cast<int>(shape.size()); }
  template <typename T>
  T* data() {
    return static_cast<T*>(bytes.data());
  }
  template <typename T>
  const T* data() const {
    return static_cast<const T*>(bytes.data());
  }
  NpyView view() const { return NpyView{type, shape, bytes.data()}; }
};

// Reads a .npy file (format 1.0, 2.0 or 3.0) of one of the NpyType dtypes.
NpyArray read_npy(const std::string& path);

// Writes `view` as a format 1.0 file: first to "<path>.tmp.<pid>" in the same
// directory, then renamed onto `path`, so a failure never leaves a partial or
// clobbered `path` (the temporary file is removed).
void write_npy(const std::string& path, const NpyView& view);

// Writes several files all-or-nothing: every file is written to its temporary
// first, and only when all are complete are they renamed onto their targets.
// On any failure before the renames no target is touched and no temporary is
// left. (The renames themselves run one after another; within one directory
// they fail only if the directory changes under us.)
struct NpyOutput {
  std::string path;
  NpyView view;
};
void write_npy_together(const std::vector<NpyOutput>& outputs);

// IEEE binary16 bits to float32 (exact: every half is a float).
float float16_to_float32(uint16_t bits);

// A float32 array from a float16 or float32 one (float32 is moved through).
// Throws CommandError naming `what` for any other type.
NpyArray to_float32(NpyArray array, const std::string& what);

}  // namespace qkv::tools
