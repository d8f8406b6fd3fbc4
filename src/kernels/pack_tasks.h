// The packing tasks of the flash kernels (float32 and AMX): how one round of
// (batch, kv head) pairs is cut into parallel tasks. Target-independent.
#pragma once

#include <algorithm>
#include <cstdint>

#include "api/problem.h"

namespace qkv::internal {

// Pairs [first, first + count) of one round (pair = batch * kv_heads +
// kv head) are packed by tasks of (batch, chunk of keys), each over the
// round's kv heads of that batch: a token's rows of all kv heads lie
// together, so one task reads them together. A task is about target_keys
// keys x heads of work; chunks start at multiples of `granule` keys.
class PackTasks {
 public:
  struct Task {
    int64_t batch;
    int64_t head_begin, head_end;  // kv heads [head_begin, head_end) of the batch
    int64_t key_begin, key_end;    // key_begin % granule == 0; key_end may pass the keys
    int64_t slot;                  // head_begin's place in the round (its pair - first)
  };

  PackTasks(const AttentionProblem& p, int64_t first, int64_t count, int64_t target_keys,
            int64_t granule)
      : kv_heads_(p.kv_heads), first_(first), end_(first + count),
        batch_first_(first / p.kv_heads) {
    const int64_t heads = std::min(count, p.kv_heads);
    const int64_t keys = std::max<int64_t>(64, target_keys / std::max<int64_t>(1, heads));
    chunk_keys_ = (keys + granule - 1) / granule * granule;
    chunks_ = std::max<int64_t>(1, (p.seq_kv + chunk_keys_ - 1) / chunk_keys_);
    batches_ = (end_ - 1) / p.kv_heads - batch_first_ + 1;
  }

  int64_t size() const { return batches_ * chunks_; }

  Task operator[](int64_t t) const {
    const int64_t b = batch_first_ + t / chunks_;
    const int64_t pair_begin = std::max(first_, b * kv_heads_);
    const int64_t pair_end = std::min(end_, (b + 1) * kv_heads_);
    const int64_t key_begin = (t % chunks_) * chunk_keys_;
    return {b, pair_begin - b * kv_heads_, pair_end - b * kv_heads_, key_begin,
            key_begin + chunk_keys_, pair_begin - first_};
  }

 private:
  int64_t kv_heads_, first_, end_, batch_first_;
  int64_t chunk_keys_ = 0, chunks_ = 0, batches_ = 0;
};

}  // namespace qkv::internal
