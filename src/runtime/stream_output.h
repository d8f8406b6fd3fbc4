// Whether a kernel writes its output with streaming (non-temporal) stores.
#pragma once

#include <cstdint>

namespace qkv::internal {

// A large output is written past the caches: a normal store first reads
// each line it writes (rows a token apart, so one miss per line), where a
// streaming store of whole lines reads nothing. The lines are then not in
// the cache for whoever reads the output next, so small outputs keep normal
// stores. Measured (flash forward, float32, 32 heads, head_dim 128, seq
// 2048, 2 threads; docs/design.md): 2-4% faster a call.
inline constexpr int64_t kStreamOutputBytes = int64_t{16} << 20;

// output_bytes >= the threshold (kStreamOutputBytes unless a test set one).
bool stream_output(int64_t output_bytes);

// Tests: the threshold is `bytes` from now on (0: kStreamOutputBytes again),
// so that small outputs take the streaming path.
void set_stream_output_bytes_for_test(int64_t bytes);

}  // namespace qkv::internal
