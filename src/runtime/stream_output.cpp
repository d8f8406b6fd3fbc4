#include "runtime/stream_output.h"

#include <atomic>

namespace qkv::internal {
namespace {
std::atomic<int64_t> g_threshold_for_test{0};
}  // namespace

void set_stream_output_bytes_for_test(int64_t bytes) { g_threshold_for_test.store(bytes); }

bool stream_output(int64_t output_bytes) {
  const int64_t forced = g_threshold_for_test.load(std::memory_order_relaxed);
  return output_bytes >= (forced > 0 ? forced : kStreamOutputBytes);
}

}  // namespace qkv::internal
