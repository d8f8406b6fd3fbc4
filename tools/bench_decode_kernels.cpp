// The Highway parts of `qkv bench decode` (bench_decode.cpp): the baseline
// decode step and a pure read of the cache in the decode kernel's order.
// Per-target code with runtime dispatch.

#include "bench_decode_kernels.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/decode.h"
#include "qkv/kv_cache.h"
#include "runtime/threads.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench_decode_kernels.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

// ------------------------------------------- per-target: baseline, kernel-order stream
HWY_BEFORE_NAMESPACE();
namespace qkv::tools {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

constexpr int64_t kBaselineBlock = 128;  // keys per online-softmax step
constexpr int kBaselineValueVecs = 4;    // output vectors kept in registers per pass over a V block

// N floats from element i of a row stored as kDtype; int8 comes back unscaled.
template <DType kDtype, class D>
HWY_INLINE hn::Vec<D> LoadWide(D d, const void* HWY_RESTRICT row, int64_t i) {
  if constexpr (kDtype == DType::kFloat16) {
    return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, D>(), static_cast<const hwy::float16_t*>(row) + i));
  } else if constexpr (kDtype == DType::kBFloat16) {
    return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::bfloat16_t, D>(), static_cast<const hwy::bfloat16_t*>(row) + i));
  } else if constexpr (kDtype == DType::kInt8) {
    const hn::Rebind<int32_t, D> d32;
    return hn::ConvertTo(d, hn::PromoteTo(d32, hn::LoadU(hn::Rebind<int8_t, D>(), static_cast<const int8_t*>(row) + i)));
  } else {
    return hn::LoadU(d, static_cast<const float*>(row) + i);
  }
}

// One query head against all `n` tokens of its KV head.
//   q [head_dim] pre-scaled by the softmax scale; o [head_dim_v]
//   s [kBaselineBlock], acc [head_dim_v]: scratch
// invariant after each block: acc = sum_j e^(s_j - m) v_j, l = sum_j e^(s_j - m)
template <DType kDtype>
void DecodeOneHead(const KVCache& cache, int64_t kv_head, const float* HWY_RESTRICT q, float* HWY_RESTRICT s,
                   float* HWY_RESTRICT acc, float* HWY_RESTRICT o) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const KVCacheConfig& c = cache.config();
  const int64_t n = cache.lengths()[0];
  const int64_t elem = static_cast<int64_t>(dtype_size(c.dtype));
  // Contiguous cache: token j, KV head h is slot first + j * kv_heads + h.
  const int64_t first = cache.token_index(0, 0) * c.kv_heads + kv_head;
  const char* k_pool = static_cast<const char*>(cache.k_data());
  const char* v_pool = static_cast<const char*>(cache.v_data());
  const float* k_scales = cache.k_scales();
  const float* v_scales = cache.v_scales();

  float m = -std::numeric_limits<float>::infinity(), l = 0;
  std::fill(acc, acc + c.head_dim_v, 0.0f);
  for (int64_t k0 = 0; k0 < n; k0 += kBaselineBlock) {
    const int64_t nb = std::min(kBaselineBlock, n - k0);
    // 1. s_j = q . k_j, the K row converted in registers.
    float block_max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t slot = first + (k0 + j) * c.kv_heads;
      const void* row = k_pool + slot * c.head_dim * elem;
      V a0 = hn::Zero(d), a1 = hn::Zero(d);
      for (int64_t i = 0; i < c.head_dim; i += 2 * N) {
        a0 = hn::MulAdd(hn::LoadU(d, q + i), LoadWide<kDtype>(d, row, i), a0);
        a1 = hn::MulAdd(hn::LoadU(d, q + i + N), LoadWide<kDtype>(d, row, i + N), a1);
      }
      s[j] = hn::GetLane(hn::SumOfLanes(d, hn::Add(a0, a1))) * (k_scales ? k_scales[slot] : 1.0f);
      block_max = std::max(block_max, s[j]);
    }
    // 2. Online softmax: s_j becomes p_j = e^(s_j - m_new).
    const float m_new = std::max(m, block_max);  // finite: the block has a key
    const float alpha = std::exp(m - m_new);      // 0 on the first block
    V sum = hn::Zero(d);
    int64_t j = 0;
    for (; j + N <= nb; j += N) {
      const V p = hn::Exp(d, hn::Sub(hn::Load(d, s + j), hn::Set(d, m_new)));
      hn::Store(p, d, s + j);
      sum = hn::Add(sum, p);
    }
    float block_sum = hn::GetLane(hn::SumOfLanes(d, sum));
    for (; j < nb; ++j) block_sum += s[j] = std::exp(s[j] - m_new);
    l = alpha * l + block_sum;
    m = m_new;
    // 3. acc = alpha * acc + sum_j p_j v_j, kBaselineValueVecs vectors of columns per pass.
    for (int64_t c0 = 0; c0 < c.head_dim_v; c0 += kBaselineValueVecs * N) {
      V out[kBaselineValueVecs];
      for (int v = 0; v < kBaselineValueVecs; ++v) out[v] = hn::Mul(hn::Set(d, alpha), hn::Load(d, acc + c0 + v * N));
      for (int64_t jj = 0; jj < nb; ++jj) {
        const int64_t slot = first + (k0 + jj) * c.kv_heads;
        const void* row = v_pool + slot * c.head_dim_v * elem;
        const V p = hn::Set(d, s[jj] * (v_scales ? v_scales[slot] : 1.0f));
        for (int v = 0; v < kBaselineValueVecs; ++v) out[v] = hn::MulAdd(p, LoadWide<kDtype>(d, row, c0 + v * N), out[v]);
      }
      for (int v = 0; v < kBaselineValueVecs; ++v) hn::Store(out[v], d, acc + c0 + v * N);
    }
  }
  const float inv = l > 0 ? 1.0f / l : 0.0f;
  for (int64_t i = 0; i < c.head_dim_v; ++i) o[i] = acc[i] * inv;
}

}  // namespace

// The baseline decode step: o [heads, head_dim_v] for q [heads, head_dim]
// (float32) over every token of a contiguous cache, each query head on its
// own, threads over the heads. False if head_dim does not suit the vectors.
bool DecodeBaselineImpl(const KVCache& cache, const float* q, int64_t heads, float* o, int threads) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const KVCacheConfig& c = cache.config();
  if (c.head_dim % (2 * N) != 0 || c.head_dim_v % (kBaselineValueVecs * N) != 0) return false;
  const int64_t group = heads / c.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
#pragma omp parallel num_threads(threads)
  {
    internal::ScopedFlushDenormals flush_denormals;  // as qkv's kernels do
    auto q_scaled = hwy::AllocateAligned<float>(static_cast<size_t>(c.head_dim));
    auto s = hwy::AllocateAligned<float>(kBaselineBlock);
    auto acc = hwy::AllocateAligned<float>(static_cast<size_t>(c.head_dim_v));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < c.head_dim; ++i) q_scaled[i] = q[h * c.head_dim + i] * scale;
      const int64_t kv_head = h / group;
      float* out = o + h * c.head_dim_v;
      switch (c.dtype) {
        case DType::kFloat16: DecodeOneHead<DType::kFloat16>(cache, kv_head, q_scaled.get(), s.get(), acc.get(), out); break;
        case DType::kBFloat16: DecodeOneHead<DType::kBFloat16>(cache, kv_head, q_scaled.get(), s.get(), acc.get(), out); break;
        case DType::kInt8: DecodeOneHead<DType::kInt8>(cache, kv_head, q_scaled.get(), s.get(), acc.get(), out); break;
        default: DecodeOneHead<DType::kFloat32>(cache, kv_head, q_scaled.get(), s.get(), acc.get(), out); break;
      }
    }
  }
  return true;
}

// Reads every K and V byte of the cache (and the int8 scales) in the order
// qkv's decode kernel does, with no arithmetic but an integer sum: tasks of
// `chunk` keys (all KV heads) over the threads; per block of the kernel's
// keys (decode_block_keys), the K rows token by token (one forward stream),
// then the V rows KV head by KV head. Returns the sum.
uint32_t StreamCacheImpl(const KVCache& cache, int threads, int64_t chunk) {
  const hn::ScalableTag<uint32_t> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t vec_bytes = static_cast<int64_t>(hn::Lanes(d) * sizeof(uint32_t));
  const KVCacheConfig& c = cache.config();
  const int64_t n = cache.lengths()[0];
  const int64_t block = internal::decode_block_keys(c.kv_heads, c.head_dim, c.head_dim_v, c.dtype, n);
  const int64_t elem = static_cast<int64_t>(dtype_size(c.dtype));
  const int64_t k_bytes = c.head_dim * elem, v_bytes = c.head_dim_v * elem;
  const int64_t first = cache.token_index(0, 0) * c.kv_heads;
  const char* k_pool = static_cast<const char*>(cache.k_data());
  const char* v_pool = static_cast<const char*>(cache.v_data());
  const float* k_scales = cache.k_scales();
  const float* v_scales = cache.v_scales();
  const int64_t chunks = (n + chunk - 1) / chunk;
  uint32_t total = 0;
  const auto read_row = [&](const char* row, int64_t bytes, V& acc, uint32_t& tail) {
    int64_t i = 0;
    for (; i + vec_bytes <= bytes; i += vec_bytes) acc = hn::Add(acc, hn::LoadU(d, reinterpret_cast<const uint32_t*>(row + i)));
    for (; i < bytes; ++i) tail += static_cast<uint8_t>(row[i]);
  };
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(+ : total)
  for (int64_t t = 0; t < chunks; ++t) {
    const int64_t j1 = std::min(n, (t + 1) * chunk);
    V acc = hn::Zero(d);
    uint32_t tail = 0;
    float scales = 0;
    for (int64_t k0 = t * chunk; k0 < j1; k0 += block) {
      const int64_t k1 = std::min(j1, k0 + block);
      for (int64_t j = k0; j < k1; ++j) {
        const int64_t slot = first + j * c.kv_heads;
        read_row(k_pool + slot * k_bytes, c.kv_heads * k_bytes, acc, tail);
        if (k_scales) {
          for (int64_t h = 0; h < c.kv_heads; ++h) scales += k_scales[slot + h];
        }
      }
      for (int64_t h = 0; h < c.kv_heads; ++h) {
        for (int64_t j = k0; j < k1; ++j) {
          const int64_t slot = first + j * c.kv_heads + h;
          read_row(v_pool + slot * v_bytes, v_bytes, acc, tail);
          if (v_scales) scales += v_scales[slot];
        }
      }
    }
    // Lane by lane in uint32 (wrapping is defined there): GCC's 512-bit
    // integer reduction adds in int, where the checksum's wrap is overflow.
    HWY_ALIGN uint32_t lanes[hn::MaxLanes(d)];
    hn::Store(acc, d, lanes);
    for (size_t i = 0; i < hn::Lanes(d); ++i) total += lanes[i];
    total += tail + (scales != 0);
  }
  return total;
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::tools
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::tools {
HWY_EXPORT(DecodeBaselineImpl);
HWY_EXPORT(StreamCacheImpl);

bool decode_baseline(const KVCache& cache, const float* q, int64_t heads, float* o, int threads) {
  return HWY_DYNAMIC_DISPATCH(DecodeBaselineImpl)(cache, q, heads, o, threads);
}

uint32_t stream_cache(const KVCache& cache, int threads, int64_t chunk) {
  return HWY_DYNAMIC_DISPATCH(StreamCacheImpl)(cache, threads, chunk);
}

}  // namespace qkv::tools
#endif  // HWY_ONCE
