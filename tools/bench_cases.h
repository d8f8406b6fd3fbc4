// The shapes `qkv bench` sweeps: one BenchCase per (head_dim, heads/kv_heads,
// seq, causal, dtype), batch 1, seq_q = seq_kv = seq.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qkv/tensor.h"

namespace qkv::tools {

struct BenchCase {
  int64_t head_dim = 128;
  int64_t heads = 32;
  int64_t kv_heads = 8;
  int64_t seq = 2048;
  bool causal = true;
  DType dtype = DType::kFloat32;

  // "d128-h32/8-s2048-causal-fp32" (or "-full" when not causal, "-bf16");
  // --cases filters on it and the peers report under it.
  std::string name() const;
  // The block a case is printed in: every field but seq, e.g.
  // "head_dim 128, 32 query / 8 KV heads, causal, float32".
  std::string group_title() const;
  bool same_group(const BenchCase& other) const;
  // 4 * batch * heads * seq_q * seq_kv * head_dim (Q.K^T and P.V, 2 flops per
  // multiply-add), halved for causal masks: the work of an ideal kernel,
  // whatever an implementation really does.
  double flops() const;
};

// The default sweep: head_dim 64 and 128, heads 32/8 and 32/32, seq 512 to
// 16384, causal and not, float32 and bfloat16. quick: head_dim 128 and seq
// 512 to 2048 only. Ordered so that consecutive cases share their inputs
// (they differ only in causal and dtype).
std::vector<BenchCase> bench_sweep(bool quick);

// The cases whose name matches `pattern` (ECMAScript regex, searched, not
// anchored); all of them when it is empty. Throws CommandError for a bad regex.
std::vector<BenchCase> filter_cases(const std::vector<BenchCase>& cases, const std::string& pattern);

// "fp32" / "bf16" / "fp16", as in case names and peers.py.
const char* short_dtype_name(DType dtype);

}  // namespace qkv::tools
