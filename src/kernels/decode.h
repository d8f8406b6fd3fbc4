// Decode attention: a few query rows per (batch, kv head) against a long K/V
// stream, split along the sequence with a log-sum-exp merge (Flash-Decoding).
#pragma once

#include <cstdint>

#include "api/problem.h"

namespace qkv::internal {

// Rows per (batch, kv head) up to which decode_forward is the faster kernel.
inline constexpr int64_t kDecodeMaxRows = 16;

// Writes o (and lse) for a validated problem with seq_q * group <=
// kDecodeMaxRows. Reads every K/V byte once per call, converting float16,
// bfloat16 and int8 in registers. num_splits = chunks per (batch, kv head),
// 0 = enough for every thread. Extra memory: the partial results,
// batch * kv_heads * splits * rows * (head_dim_v + 2) floats, and each
// thread's scratch (scores, q, token pointers, prefetch spans, the AMX
// path's tiles: tens of KiB). Both together, measured by `qkv bench
// decode`'s "step adds" at 32/8 heads, head_dim 128, 2 threads: 140-220 KiB.
void decode_forward(const AttentionProblem& problem, int num_splits) noexcept;

// int8 caches in integer arithmetic (docs/design.md): q and each block's
// weights as 16-bit fixed point (their errors about 2^-16 of the row's or
// block's largest, ~250x below the int8 rounding of the keys), the products
// exact in int32: on AMX-INT8 tiles where the CPU has them (unless
// set_dot_units_enabled(false)), else AVX512-VNNI, else AVX2's vpmaddwd; all
// form the same integers. decode_fixed_point_on(target): whether the path
// exists for that Highway target on this CPU (AVX3 with AVX512-VNNI, or AVX2;
// 0 = the target dispatch picks now). It runs where it exists, the shapes fit
// (head_dim a multiple of 32 on AVX3, 16 on AVX2, at most 256; P.V: head_dim_v
// a multiple of 64, 16; AMX: head_dim and head_dim_v % 64 == 0, at most 16
// rows per kv head) and it is enabled (tests compare with the float path).
bool decode_fixed_point_on(int64_t target);
bool decode_fixed_point_enabled();
void set_decode_fixed_point_enabled(bool enabled);

// What an int8 cache's products run on now (the target dispatch picks, the
// switches above, the shapes): e.g. "AVX512-VNNI (16-bit fixed point)".
//   rows: query rows per kv head (seq_q * heads / kv_heads)
const char* decode_int8_engine(int64_t head_dim, int64_t head_dim_v, int64_t rows);

// Keys per block of the decode kernel over a cache of these rows, for a step
// that reads `step_keys` keys (all sequences together): 64, or 32 or 16 where
//  - two blocks' K and V of every kv head (the block computing and the next
//    one streaming into the L2) would take more than half the L2 (Zen 3, 512
//    KiB L2, 8 kv heads of 128 in float16: 32; 2 threads, 128K tokens, steps
//    alternating in one process: 28.1 -> 25.7 ms against 64 keys), or
//  - the step streams from memory (its K and V more than a quarter of the L3)
//    and a block's K and V rows would pass kDecodeStreamBlockBytes: the next
//    block is requested one block ahead, and a lead of about 128 KiB per
//    thread keeps memory busiest (Intel Xeon VM with 2 MiB L2, float16 at 8
//    kv heads: 32 keys 5-7% faster than 64 from 32K to 1M tokens, 3-4% slower
//    at 4K and 16K, where the cache is in the L3; float32 at 1M: 16 keys).
inline constexpr int64_t kDecodeMaxBlockKeys = 64, kDecodeMinBlockKeys = 16;
inline constexpr int64_t kDecodeStreamBlockBytes = int64_t{128} << 10;
int64_t decode_block_keys(int64_t kv_heads, int64_t head_dim, int64_t head_dim_v, DType kv_dtype,
                          int64_t step_keys);
// Forces decode_block_keys' answer (16, 32 or 64) from now on; 0 (the
// default): chosen as above. For tests and tuning.
void set_decode_block_keys(int64_t keys);

// Decode tasks that have run on AMX-INT8 tiles in this process (tests check
// that the path they compare ran).
int64_t decode_amx_tasks();

}  // namespace qkv::internal
