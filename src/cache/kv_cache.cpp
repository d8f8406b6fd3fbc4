// KVCache: page pool, block table, lengths, and append (with RoPE and int8
// quantization). Every check happens before the first write.
#include "qkv/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "api/tensor_access.h"
#include "cache/rope.h"
#include "api/fail.h"
#include "qkv/error.h"
#include "runtime/half.h"
#include "runtime/threads.h"

namespace qkv {
namespace {

using internal::fail;

// Rows (tokens x kv heads) from which append uses every thread.
constexpr int64_t kParallelAppendRows = 256;

// Stores row[0, n) as `dtype` at dst; int8 rows get scale = max|x| / 127.
void store_row(DType dtype, const float* row, int64_t n, void* dst, float* scale) {
  switch (dtype) {
    case DType::kFloat16:
      for (int64_t d = 0; d < n; ++d) static_cast<uint16_t*>(dst)[d] = internal::f16_from_f32(row[d]);
      break;
    case DType::kBFloat16:
      for (int64_t d = 0; d < n; ++d) static_cast<uint16_t*>(dst)[d] = internal::bf16_from_f32(row[d]);
      break;
    case DType::kInt8: {
      float amax = 0;
      for (int64_t d = 0; d < n; ++d) amax = std::max(amax, std::fabs(row[d]));
      const float s = amax / 127.0f;
      const float inv = s > 0 ? 1.0f / s : 0.0f;
      for (int64_t d = 0; d < n; ++d) {
        const float q = std::clamp(std::nearbyint(row[d] * inv), -127.0f, 127.0f);
        static_cast<int8_t*>(dst)[d] = static_cast<int8_t>(q);
      }
      *scale = s;
      break;
    }
    default:
      std::copy(row, row + n, static_cast<float*>(dst));
      break;
  }
}

void load_row(DType dtype, const void* src, float scale, int64_t n, float* out) {
  switch (dtype) {
    case DType::kFloat16:
      for (int64_t d = 0; d < n; ++d) out[d] = internal::f32_from_f16(static_cast<const uint16_t*>(src)[d]);
      break;
    case DType::kBFloat16:
      for (int64_t d = 0; d < n; ++d) out[d] = internal::f32_from_bf16(static_cast<const uint16_t*>(src)[d]);
      break;
    case DType::kInt8:
      for (int64_t d = 0; d < n; ++d) out[d] = scale * static_cast<const int8_t*>(src)[d];
      break;
    default:
      std::copy(static_cast<const float*>(src), static_cast<const float*>(src) + n, out);
      break;
  }
}

}  // namespace

KVCache::KVCache(const KVCacheConfig& config) : config_(config) {
  KVCacheConfig& c = config_;
  if (c.head_dim_v == 0) c.head_dim_v = c.head_dim;
  if (c.batch < 1) fail("cache batch (", c.batch, ") must be at least 1");
  if (c.capacity < 1) fail("cache capacity (", c.capacity, ") must be at least 1");
  if (c.kv_heads < 1) fail("cache kv_heads (", c.kv_heads, ") must be at least 1");
  if (c.head_dim < 1 || c.head_dim_v < 1) {
    fail("cache head_dim (", c.head_dim, ") and head_dim_v (", c.head_dim_v, ") must be at least 1");
  }
  if (c.dtype != DType::kFloat32 && c.dtype != DType::kFloat16 && c.dtype != DType::kBFloat16 &&
      c.dtype != DType::kInt8) {
    fail("cache dtype (", dtype_name(c.dtype), ") must be float32, float16, bfloat16 or int8");
  }
  if (c.page_size < 0) fail("cache page_size (", c.page_size, ") must be >= 0 (0 = contiguous)");
  page_size_ = c.page_size > 0 ? c.page_size : c.capacity;
  pages_per_seq_ = (c.capacity + page_size_ - 1) / page_size_;
  num_pages_ = c.page_size > 0 && c.num_pages > 0 ? c.num_pages : c.batch * pages_per_seq_;
  if (c.num_pages < 0) fail("cache num_pages (", c.num_pages, ") must be >= 0");
  const double bytes = static_cast<double>(num_pages_) * page_size_ * c.kv_heads *
                       (c.head_dim + c.head_dim_v) * dtype_size(c.dtype);
  if (bytes > 0x1p46) fail("cache of ", bytes / 0x1p30, " GiB is too large");

  lengths_.assign(static_cast<size_t>(c.batch), 0);
  block_table_.resize(static_cast<size_t>(c.batch * pages_per_seq_));
  for (int64_t i = 0; i < c.batch * pages_per_seq_; ++i) {
    block_table_[i] = static_cast<int32_t>(i % num_pages_);
  }
  const int64_t slots = num_pages_ * page_size_ * c.kv_heads;
  k_ = detail::PoolBuffer(static_cast<size_t>(slots * c.head_dim * dtype_size(c.dtype)));
  v_ = detail::PoolBuffer(static_cast<size_t>(slots * c.head_dim_v * dtype_size(c.dtype)));
  if (c.dtype == DType::kInt8) {
    k_scale_ = detail::PoolBuffer(static_cast<size_t>(slots) * sizeof(float));
    v_scale_ = detail::PoolBuffer(static_cast<size_t>(slots) * sizeof(float));
  }
}

int64_t KVCache::bytes_per_token_head() const {
  const int64_t scales = config_.dtype == DType::kInt8 ? 8 : 0;
  return (config_.head_dim + config_.head_dim_v) * static_cast<int64_t>(dtype_size(config_.dtype)) + scales;
}

void KVCache::set_lengths(const std::vector<int64_t>& lengths) {
  if (static_cast<int64_t>(lengths.size()) != config_.batch) {
    fail("lengths has ", lengths.size(), " entries but the cache batch is ", config_.batch);
  }
  for (size_t b = 0; b < lengths.size(); ++b) {
    if (lengths[b] < 0 || lengths[b] > config_.capacity) {
      fail("lengths[", b, "] (", lengths[b], ") must be in [0, capacity (", config_.capacity, ")]");
    }
  }
  lengths_ = lengths;
}

void KVCache::set_block_table(const std::vector<int32_t>& table) {
  if (static_cast<int64_t>(table.size()) != config_.batch * pages_per_seq_) {
    fail("block_table has ", table.size(), " entries but must be [batch, pages_per_sequence] = [",
         config_.batch, ", ", pages_per_seq_, "]");
  }
  for (size_t i = 0; i < table.size(); ++i) {
    if (table[i] < 0 || table[i] >= num_pages_) {
      fail("block_table[", i / pages_per_seq_, ", ", i % pages_per_seq_, "] (", table[i],
           ") must be in [0, num_pages (", num_pages_, "))");
    }
  }
  block_table_ = table;
}

void KVCache::append(const Tensor& k_new, const Tensor& v_new, const std::optional<Rope>& rope) {
  const KVCacheConfig& c = config_;
  internal::check_bshd_float(k_new, "k_new");
  internal::check_bshd_float(v_new, "v_new");
  const int64_t n = k_new.shape[1];
  if (k_new.shape[0] != c.batch || k_new.shape[2] != c.kv_heads || k_new.shape[3] != c.head_dim) {
    fail("k_new has shape ", k_new.shape_string(), " but the cache needs [batch, n, kv_heads, head_dim] = [",
         c.batch, ", n, ", c.kv_heads, ", ", c.head_dim, "]");
  }
  if (v_new.shape[0] != c.batch || v_new.shape[1] != n || v_new.shape[2] != c.kv_heads ||
      v_new.shape[3] != c.head_dim_v) {
    fail("v_new has shape ", v_new.shape_string(), " but must be [", c.batch, ", ", n, ", ",
         c.kv_heads, ", ", c.head_dim_v, "] to match k_new ", k_new.shape_string());
  }
  for (int64_t b = 0; b < c.batch; ++b) {
    if (lengths_[b] + n > c.capacity) {
      fail("appending ", n, " tokens to sequence ", b, " (length ", lengths_[b],
           ") exceeds the cache capacity (", c.capacity, ")");
    }
  }
  if (rope) internal::validate_rope(*rope, c.head_dim);

  const std::optional<internal::RopeTable> table =
      rope ? std::optional<internal::RopeTable>(std::in_place, *rope, c.head_dim) : std::nullopt;
  const size_t elem = dtype_size(c.dtype);
  // Every (sequence, token) writes its own slots: the tokens are shared out
  // over the threads once there are enough rows to pay for starting them.
  const int64_t tokens = c.batch * n;
  const int threads = tokens * c.kv_heads >= kParallelAppendRows ? internal::resolve_threads(0) : 1;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> row(static_cast<size_t>(std::max(c.head_dim, c.head_dim_v)));
#pragma omp for schedule(static)
    for (int64_t bt = 0; bt < tokens; ++bt) {
      const int64_t b = bt / n, t = bt % n;
      const int64_t slot_token = token_index(b, lengths_[b] + t);
      for (int64_t h = 0; h < c.kv_heads; ++h) {
        const int64_t slot = slot_token * c.kv_heads + h;
        internal::read_row(k_new, b, t, h, row.data());
        if (table) table->rotate(row.data(), lengths_[b] + t);
        store_row(c.dtype, row.data(), c.head_dim, k_.data() + slot * c.head_dim * elem,
                  k_scale_.size() ? reinterpret_cast<float*>(k_scale_.data()) + slot : nullptr);
        internal::read_row(v_new, b, t, h, row.data());
        store_row(c.dtype, row.data(), c.head_dim_v, v_.data() + slot * c.head_dim_v * elem,
                  v_scale_.size() ? reinterpret_cast<float*>(v_scale_.data()) + slot : nullptr);
      }
    }
  }
  for (int64_t& length : lengths_) length += n;
}

void KVCache::read_key(int64_t b, int64_t j, int64_t kv_head, float* out) const {
  const int64_t slot = token_index(b, j) * config_.kv_heads + kv_head;
  load_row(config_.dtype, k_.data() + slot * config_.head_dim * dtype_size(config_.dtype),
           k_scales() ? k_scales()[slot] : 1.0f, config_.head_dim, out);
}

void KVCache::read_value(int64_t b, int64_t j, int64_t kv_head, float* out) const {
  const int64_t slot = token_index(b, j) * config_.kv_heads + kv_head;
  load_row(config_.dtype, v_.data() + slot * config_.head_dim_v * dtype_size(config_.dtype),
           v_scales() ? v_scales()[slot] : 1.0f, config_.head_dim_v, out);
}

}  // namespace qkv
