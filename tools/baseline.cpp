// Textbook attention with a materialized score matrix; see baseline.h.
#include "baseline.h"

#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "api/problem.h"
#include "api/validate.h"
#include "qkv/error.h"

// Part of OpenBLAS's cblas.h, but not of the reference CBLAS interface.
extern "C" void openblas_set_num_threads(int num_threads);

namespace qkv::tools {
namespace {

void check_supported(const AttentionParams& params) {
  const char* unsupported = nullptr;
  if (params.softcap != 0.0f) unsupported = "softcap";
  if (params.alibi_slopes.present()) unsupported = "alibi_slopes";
  if (params.sinks.present()) unsupported = "sinks";
  if (params.mask.present()) unsupported = "mask";
  if (params.lse.present()) unsupported = "lse";
  if (unsupported) {
    throw Error(std::string("the materialized baseline does not support ") + unsupported);
  }
}

// Leading dimension for BLAS of a matrix whose rows are `stride` elements
// apart: BLAS requires ld >= cols even when there is a single row.
blasint leading_dim(int64_t stride, int64_t rows, int64_t cols) {
  if (rows <= 1) return static_cast<blasint>(std::max<int64_t>(cols, 1));
  if (stride < cols) {
    throw Error("the materialized baseline needs a seq stride (" + std::to_string(stride) +
                ") of at least the head dimension (" + std::to_string(cols) + ")");
  }
  return static_cast<blasint>(stride);
}

// e^x for x <= 0, written so that `omp simd` loops vectorize it: the libm
// expf is a scalar call, and with it the softmax took a third of the
// baseline's time, which would flatter qkv (PyTorch's softmax is vectorized).
// x = n ln2 + r with |r| <= ln2/2; e^r by its degree-6 Taylor series (error
// r^7/7! < 2e-7 relative); 2^n built in the exponent bits. Where x < -87, e^x
// is below the smallest normal float and the result is exactly 0, which also
// covers masked (-inf) scores.
//
// The clamp and the flush are bit arithmetic, not comparisons: GCC (with its
// default -ftrapping-math) turns a `?:` into a branch and then refuses to
// vectorize the loop.
inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504f;
  constexpr float kLn2Hi = 0.693359375f;  // ln2 = kLn2Hi - kLn2Lo; n * kLn2Hi is exact
  constexpr float kLn2Lo = 2.12194440e-4f;
  constexpr float kRoundToInt = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  constexpr int32_t kSignBit = std::bit_cast<int32_t>(-0.0f);
  constexpr int32_t kLimit = std::bit_cast<int32_t>(87.0f);
  // x <= 0, so x = -|x|, and |x| compares like its bits (as int32).
  const int32_t magnitude = std::bit_cast<int32_t>(x) & ~kSignBit;
  const int32_t flush = (kLimit - magnitude) >> 31;  // all ones where x < -87
  const float xc = std::bit_cast<float>((magnitude & ~flush) | (kLimit & flush) | kSignBit);
  const float keep = std::bit_cast<float>(std::bit_cast<int32_t>(1.0f) & ~flush);  // 1 or 0

  const float n = (xc * kLog2e + kRoundToInt) - kRoundToInt;
  const float r = (xc - n * kLn2Hi) + n * kLn2Lo;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float two_to_n = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return p * two_to_n * keep;
}

// Max of x[0..n), -inf when n == 0, kept in kLanes running maxima: an
// element-wise select, which GCC and Clang both vectorize (Clang will not
// vectorize a float max *reduction* without -ffast-math).
inline float max_of(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float lane_max[kLanes];
  std::fill(lane_max, lane_max + kLanes, kNegInf);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) lane_max[l] = x[j + l] > lane_max[l] ? x[j + l] : lane_max[l];
  }
  for (; j < n; ++j) lane_max[0] = x[j] > lane_max[0] ? x[j] : lane_max[0];
  float result = kNegInf;
  for (float m : lane_max) result = m > result ? m : result;
  return result;
}

// Even vectorized, the softmax is about a fifth of the baseline's time at
// head_dim 128. Without -mavx2 the loops are SSE2, so on x86-64 an AVX2 clone
// is picked at load time (the baseline got about 8% faster with it), as a
// framework's runtime-dispatched softmax would be.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define QKV_BASELINE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define QKV_BASELINE_CLONES
#endif

// One row of scores -> probabilities, in place. Keys outside [lo, hi] are
// masked with -inf first, as the textbook does, then the row is normalized
// relative to its max (so exp never overflows). A row whose max is -inf has no
// visible key and becomes 0 rather than exp(-inf - -inf) = NaN.
QKV_BASELINE_CLONES void softmax_row(float* s, int64_t seq_kv, int64_t lo, int64_t hi) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  std::fill(s, s + std::clamp<int64_t>(lo, 0, seq_kv), kNegInf);
  std::fill(s + std::clamp<int64_t>(hi + 1, 0, seq_kv), s + seq_kv, kNegInf);
  const float row_max = max_of(s, seq_kv);
  if (row_max == kNegInf) {
    std::fill(s, s + seq_kv, 0.0f);
    return;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < seq_kv; ++j) {
    s[j] = exp_nonpositive(s[j] - row_max);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < seq_kv; ++j) s[j] *= inv;
}

}  // namespace

int64_t materialized_attention_bytes(const AttentionParams& params) {
  const int64_t batch = params.q.shape[0], seq_q = params.q.shape[1];
  const int64_t heads = params.q.shape[2], seq_kv = params.k.shape[1];
  return batch * heads * seq_q * seq_kv * static_cast<int64_t>(sizeof(float));
}

void materialized_attention(const AttentionParams& params) {
  const internal::AttentionProblem p = internal::make_problem(params);
  check_supported(params);
  const blasint ld_q = leading_dim(p.q_stride.seq, p.seq_q, p.head_dim);
  const blasint ld_k = leading_dim(p.k_stride.seq, p.seq_kv, p.head_dim);
  const blasint ld_v = leading_dim(p.v_stride.seq, p.seq_kv, p.head_dim_v);
  const blasint ld_o = leading_dim(p.o_stride.seq, p.seq_q, p.head_dim_v);
  if (p.batch == 0 || p.seq_q == 0) return;

  const float* q = static_cast<const float*>(p.q);
  const float* k = static_cast<const float*>(p.k);
  const float* v = static_cast<const float*>(p.v);
  float* o = static_cast<float*>(p.o);
  const int threads = p.num_threads;
  openblas_set_num_threads(threads);

  // scores: [batch, heads, seq_q, seq_kv], the whole matrix at once.
  const int64_t head_size = p.seq_q * p.seq_kv;
  const int64_t rows = p.batch * p.heads * p.seq_q;
  std::unique_ptr<float[]> scores(new float[std::max<int64_t>(rows * p.seq_kv, 1)]);
  auto head_scores = [&](int64_t b, int64_t h) { return scores.get() + (b * p.heads + h) * head_size; };

  // 1. S = scale * Q K^T; query head h reads KV head h / group.
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads && p.seq_kv > 0; ++h) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(p.seq_q),
                  static_cast<blasint>(p.seq_kv), static_cast<blasint>(p.head_dim), p.scale,
                  q + p.q_stride.offset(b, 0, h), ld_q, k + p.k_stride.offset(b, 0, h / p.group),
                  ld_k, 0.0f, head_scores(b, h), static_cast<blasint>(p.seq_kv));
    }
  }

  // 2-3. Mask and softmax, row by row.
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r % p.seq_q, b = r / (p.seq_q * p.heads);
    softmax_row(scores.get() + r * p.seq_kv, p.seq_kv, p.key_lo(b, i), p.key_hi(b, i));
  }

  // 4. O = P V.
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      float* o_bh = o + p.o_stride.offset(b, 0, h);
      if (p.seq_kv == 0) {  // every row is empty
        for (int64_t i = 0; i < p.seq_q; ++i) std::fill_n(o_bh + i * p.o_stride.seq, p.head_dim_v, 0.0f);
        continue;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(p.seq_q),
                  static_cast<blasint>(p.head_dim_v), static_cast<blasint>(p.seq_kv), 1.0f,
                  head_scores(b, h), static_cast<blasint>(p.seq_kv),
                  v + p.v_stride.offset(b, 0, h / p.group), ld_v, 0.0f, o_bh, ld_o);
    }
  }
}

}  // namespace qkv::tools
