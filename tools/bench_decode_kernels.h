// The Highway parts of `qkv bench decode`.
#pragma once

#include <cstdint>

#include "qkv/kv_cache.h"

namespace qkv::tools {

// The baseline decode step: o [heads, head_dim_v] for q [heads, head_dim]
// (float32, pre-scaled) over every token of sequence 0 of a contiguous cache,
// each query head streaming its KV head's K and V on its own (every KV byte
// read heads / kv_heads times), threads over the heads. False if head_dim
// does not suit the vectors.
bool decode_baseline(const KVCache& cache, const float* q, int64_t heads, float* o, int threads);

// Reads every K/V byte (and int8 scale) of sequence 0 of a contiguous cache
// in the decode kernel's order and tasks of `chunk` keys, with no arithmetic
// but an integer sum, which it returns.
uint32_t stream_cache(const KVCache& cache, int threads, int64_t chunk);

}  // namespace qkv::tools
