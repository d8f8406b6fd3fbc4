#include "runtime/caches.h"

#include <unistd.h>

#include <atomic>

namespace qkv::internal {
namespace {
std::atomic<int64_t> g_l2_for_test{0};
}  // namespace

void set_l2_cache_bytes_for_test(int64_t bytes) { g_l2_for_test.store(bytes); }

int64_t l2_cache_bytes() {
  if (const int64_t forced = g_l2_for_test.load(std::memory_order_relaxed); forced > 0) return forced;
  static const int64_t bytes = [] {
    constexpr int64_t kFallback = int64_t{512} << 10;
    int64_t reported = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    reported = static_cast<int64_t>(sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
    // Some VMs and libcs report 0 or nonsense: keep to 64 KiB .. 64 MiB.
    return reported >= (int64_t{64} << 10) && reported <= (int64_t{64} << 20) ? reported : kFallback;
  }();
  return bytes;
}

}  // namespace qkv::internal
