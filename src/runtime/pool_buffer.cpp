// detail::PoolBuffer: anonymous memory mappings with a transparent-huge-page
// hint (see include/qkv/detail/pool_buffer.h).
#include <sys/mman.h>

#include <cstring>
#include <new>
#include <utility>

#include "qkv/detail/pool_buffer.h"

namespace qkv::detail {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}  // namespace

PoolBuffer::PoolBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  // Pools of a few huge pages or more are rounded up to whole huge pages and
  // aligned to one (mmap gives 4 KiB alignment: map one huge page more and
  // use the aligned part); smaller ones keep 4 KiB pages.
  const bool huge = bytes >= 2 * kHugePage;
  const size_t length = huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage : bytes;
  const size_t mapped = huge ? length + kHugePage : length;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  auto* base = static_cast<uint8_t*>(p);
  mapped_ = mapped;
  data_ = base;
  if (huge) {
    const size_t skip = (kHugePage - reinterpret_cast<uintptr_t>(base) % kHugePage) % kHugePage;
    data_ = base + skip;
#ifdef MADV_HUGEPAGE
    madvise(data_, length, MADV_HUGEPAGE);  // a hint: failure leaves 4 KiB pages
#endif
    // Give back the unaligned head and tail of the mapping.
    if (skip > 0) munmap(base, skip);
    const size_t tail = mapped - skip - length;
    if (tail > 0) munmap(data_ + length, tail);
    mapped_ = length;
  }
}

PoolBuffer::PoolBuffer(const PoolBuffer& other) : PoolBuffer(other.bytes_) {
  if (bytes_ > 0) std::memcpy(data_, other.data_, bytes_);
}

PoolBuffer::PoolBuffer(PoolBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

PoolBuffer& PoolBuffer::operator=(PoolBuffer other) noexcept {
  std::swap(data_, other.data_);
  std::swap(bytes_, other.bytes_);
  std::swap(mapped_, other.mapped_);
  return *this;
}

PoolBuffer::~PoolBuffer() {
  if (mapped_ > 0) munmap(data_, mapped_);
}

}  // namespace qkv::detail
