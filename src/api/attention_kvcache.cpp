// attention_with_kvcache: validate everything, append (the only write to the
// cache, itself validated before it writes), then attend over the cache.
#include <cstring>
#include <string>
#include <vector>

#include "api/dispatch.h"
#include "api/tensor_access.h"
#include "api/validate.h"
#include "cache/rope.h"
#include "qkv/error.h"
#include "qkv/kv_cache.h"

namespace qkv {

void attention_with_kvcache(const KVCacheAttentionParams& params) {
  using namespace internal;
  if (params.cache == nullptr) throw Error("cache is required but is null");
  KVCache& cache = *params.cache;
  const KVCacheConfig& c = cache.config();
  check_bshd_float(params.q, "q");
  const Tensor& q = params.q;
  const int64_t seq_q = q.shape[1];
  if (q.shape[0] != c.batch || q.shape[3] != c.head_dim) {
    throw Error("q has shape " + q.shape_string() + " but the cache has batch " +
                std::to_string(c.batch) + " and head_dim " + std::to_string(c.head_dim));
  }
  const bool appending = params.k_new.present() || params.v_new.present();
  if (appending && !(params.k_new.present() && params.v_new.present())) {
    throw Error("k_new and v_new must be given together");
  }
  const int64_t n_new = appending ? params.k_new.shape[1] : 0;
  if (params.rope) validate_rope(*params.rope, c.head_dim);
  if (params.num_splits < 0) {
    throw Error("num_splits (" + std::to_string(params.num_splits) + ") must be >= 0 (0 = auto)");
  }

  // Validated as a dense call over [batch, capacity, kv_heads, head_dim] keys
  // (the same checks as qkv::attention), then redirected to the cache pages.
  AttentionParams dense;
  dense.q = q;
  dense.k = Tensor::contiguous(cache.k_data(), q.dtype, {c.batch, c.capacity, c.kv_heads, c.head_dim});
  dense.v = Tensor::contiguous(cache.v_data(), q.dtype, {c.batch, c.capacity, c.kv_heads, c.head_dim_v});
  dense.o = params.o;
  dense.lse = params.lse;
  dense.scale = params.scale;
  dense.causal = params.causal;
  dense.window = params.window;
  dense.softcap = params.softcap;
  dense.alibi_slopes = params.alibi_slopes;
  dense.sinks = params.sinks;
  dense.num_threads = params.num_threads;
  dense.exact_bf16_probs = params.exact_bf16_probs;
  AttentionProblem problem = make_problem(dense);
  for (int64_t b = 0; params.rope && b < c.batch; ++b) {
    if (cache.lengths()[b] + n_new < seq_q) {
      // Bottom-right alignment puts the queries at the last seq_q positions:
      // with RoPE they need a position >= 0.
      throw Error("rope: "
                  "sequence " + std::to_string(b) + " will hold " +
                  std::to_string(cache.lengths()[b] + n_new) + " tokens, fewer than seq_q (" +
                  std::to_string(seq_q) + "), so its queries have no position");
    }
  }

  // Rotated queries: token t of batch b sits at position length - seq_q + t.
  std::vector<uint8_t> q_rotated;
  std::vector<int64_t> positions(static_cast<size_t>(c.batch));
  if (appending) cache.append(params.k_new, params.v_new, params.rope);  // validates, then writes
  for (int64_t b = 0; b < c.batch; ++b) positions[b] = cache.lengths()[b] - seq_q;
  if (params.rope) {
    q_rotated.resize(static_cast<size_t>(q.numel()) * dtype_size(q.dtype));
    const Tensor rotated = Tensor::contiguous(q_rotated.data(), q.dtype,
                                              {q.shape[0], q.shape[1], q.shape[2], q.shape[3]});
    std::vector<float> row(static_cast<size_t>(c.head_dim));
    for (int64_t b = 0; b < q.shape[0]; ++b) {
      for (int64_t t = 0; t < q.shape[1]; ++t) {
        for (int64_t h = 0; h < q.shape[2]; ++h) {
          read_row(q, b, t, h, row.data());
          write_row(rotated, b, t, h, row.data());
        }
      }
    }
    apply_rope(rotated, positions.data(), *params.rope);
    problem.q = q_rotated.data();
    problem.q_stride = Bshd{rotated.strides[0], rotated.strides[1], rotated.strides[2]};
  }

  problem.cache = &cache;
  problem.kv_len = cache.lengths().data();
  problem.kv_dtype = c.dtype;
  run_attention(problem, params.backend, params.num_splits);
}

}  // namespace qkv
