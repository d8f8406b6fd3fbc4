// The task structure shared by the flash kernels (float32 and bfloat16): how the
// (batch, kv head) pairs are scheduled (rounds of shared packing and query
// tiles, or one pair per task), how a round is cut into packing tasks and
// query-tile tasks, and the order a packing task walks its keys.
// Target-independent.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "api/problem.h"
#include "hwy/cache_control.h"
#include "runtime/caches.h"

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

// The query-tile tasks of a round: t in [0, count * q_tiles), head-major (the
// threads share one head's packed K/V in the last-level cache), the heaviest
// tile first under a causal mask (later query tiles see more keys).
struct TileTask {
  int64_t batch, kv_head, tile;
  int64_t slot;  // the pair's place in the round
};
inline TileTask tile_task(const AttentionProblem& p, int64_t first, int64_t q_tiles, int64_t t) {
  const int64_t pair = first + t / q_tiles;
  const int64_t order = t % q_tiles;
  return {pair / p.kv_heads, pair % p.kv_heads, p.causal ? q_tiles - 1 - order : order,
          pair - first};
}

// Walks a packing task: pack(j, h) for the steps j = j0, j0 + step, ... < j1
// and, per step, every kv head h in [h0, h1) in turn (a token's rows of all kv
// heads lie together, so a step's pages serve every head). Before each call
// the rows of the next (step, head) below `keys` are requested: they lie a
// token apart (a page apart with many kv heads) and arrive while this one is
// packed; requesting a whole step of every head at once overran L1.
template <class Pack>
void walk_pack_steps(const AttentionProblem& p, int64_t b, int64_t h0, int64_t h1, int64_t j0,
                     int64_t j1, int64_t step, int64_t keys, Pack&& pack) {
  const int64_t elem = static_cast<int64_t>(dtype_size(p.kv_dtype));
  const int64_t k_bytes = p.head_dim * elem, v_bytes = p.head_dim_v * elem;
  const auto prefetch = [&](int64_t j_begin, int64_t h) {
    for (int64_t j = j_begin; j < std::min(j_begin + step, keys); ++j) {
      const char* k = static_cast<const char*>(p.key_row(b, j, h).data);
      const char* v = static_cast<const char*>(p.value_row(b, j, h).data);
      for (int64_t at = 0; at < k_bytes; at += 64) hwy::Prefetch(k + at);
      for (int64_t at = 0; at < v_bytes; at += 64) hwy::Prefetch(v + at);
    }
  };
  for (int64_t j = j0; j < j1; j += step) {
    for (int64_t h = h0; h < h1; ++h) {
      if (h + 1 < h1) {
        prefetch(j, h + 1);
      } else if (j + step < j1) {
        prefetch(j + step, h0);
      }
      pack(j, h);
    }
  }
}

// Whether a kernel takes one (batch, kv head) pair per task (run_pairs):
// many pairs, each small. A thread then packs a pair's K/V into its own
// buffer and runs all of the pair's query tiles while that buffer is in its
// L2, with no barrier between packing and tiles; the pairs cost the same
// (the same keys), so with 8 or more per thread the dynamic split stays even.
// Measured (float32, 32/32 heads, seq 512, no mask, 2 threads): 4-5% faster
// than rounds; with 4 pairs per thread (32/8 heads) rounds were faster. Up
// to a whole L2 per pair (2 MiB L2, 32/32 heads, 2 threads, 7 alternating
// rounds): float32 seq 2048 causal 95.2 -> 93.4 ms, no mask 175.5 -> 173.8;
// bfloat16 (AMX) seq 4096 causal 91.1 -> 88.0, no mask the same.
// `head_bytes`: one pair's packed K and V.
inline bool pair_per_task(const AttentionProblem& p, int64_t head_bytes) {
  return p.num_threads > 1 && p.batch * p.kv_heads >= 8 * p.num_threads &&
         head_bytes <= l2_cache_bytes();
}

// The schedule of a flash kernel, run by every thread of its parallel region.
// Pack slots: places for one pair's packed K/V each.
//   pair per task: slot = the thread's number (p.num_threads slots);
//     pack(b, h, h + 1, 0, seq_kv, slot), then tile(b, h, t, slot) for every t.
//   rounds of heads_per_round pairs (that many slots): the round's packing
//     tasks (PackTasks, chunk_keys keys x heads, chunks at multiples of
//     granule), pack(b, h0, h1, j0, j1, slot of h0) with h0's K/V at slot and
//     the next heads' at the next slots; a barrier; then the round's tile
//     tasks (tile_task), tile(b, h, t, slot).
template <class Pack, class Tile>
void run_pairs(const AttentionProblem& p, bool per_task, int64_t heads_per_round, int64_t q_tiles,
               int64_t chunk_keys, int64_t granule, Pack&& pack, Tile&& tile) {
  const int64_t pairs = p.batch * p.kv_heads;
  if (per_task) {
    const int64_t slot = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t b = pair / p.kv_heads, h = pair % p.kv_heads;
      pack(b, h, h + 1, int64_t{0}, p.seq_kv, slot);
      for (int64_t t = 0; t < q_tiles; ++t) tile(b, h, t, slot);
    }
    return;
  }
  for (int64_t first = 0; first < pairs; first += heads_per_round) {
    const int64_t round = std::min(heads_per_round, pairs - first);
    const PackTasks pack_tasks(p, first, round, chunk_keys, granule);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < pack_tasks.size(); ++t) {
      const PackTasks::Task task = pack_tasks[t];
      pack(task.batch, task.head_begin, task.head_end, task.key_begin, task.key_end, task.slot);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < round * q_tiles; ++t) {
      const TileTask task = tile_task(p, first, q_tiles, t);
      tile(task.batch, task.kv_head, task.tile, task.slot);
    }
  }
}

}  // namespace qkv::internal
