// Large zero-filled buffers backed by huge pages where the OS allows it: an
// implementation detail of KVCache (the type of its pools), not an API.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qkv::detail {

// Zero-filled storage for a cache pool, page-aligned, and backed by 2 MiB
// pages where the OS allows it (Linux transparent huge pages) once it spans
// two of them: every decode step streams the whole pool, and huge pages mean
// fewer TLB misses and hardware prefetch streams that do not stop at every
// 4 KiB boundary. Pages become resident when first written. Copies are deep.
class PoolBuffer {
 public:
  PoolBuffer() = default;
  explicit PoolBuffer(size_t bytes);
  PoolBuffer(const PoolBuffer& other);
  PoolBuffer(PoolBuffer&& other) noexcept;
  PoolBuffer& operator=(PoolBuffer other) noexcept;
  ~PoolBuffer();
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return bytes_; }

 private:
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
  size_t mapped_ = 0;  // bytes mapped (a multiple of the page size), 0 = none
};

}  // namespace qkv::detail
