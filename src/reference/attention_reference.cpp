// The oracle. Every option is applied literally, in the order of the
// semantics table in include/qkv/attention.h, in double precision. Kept plain
// on purpose: every fast path is tested against it, and it stays selectable at
// run time (Backend::kReference) so a fast-path bug can be bisected in the field.
#include "reference/attention_reference.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "runtime/half.h"

namespace qkv::internal {
namespace {

bool visible(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j);

}  // namespace

double reference_load(const void* base, DType dtype, int64_t offset) {
  switch (dtype) {
    case DType::kFloat16: return f32_from_f16(static_cast<const uint16_t*>(base)[offset]);
    case DType::kBFloat16: return f32_from_bf16(static_cast<const uint16_t*>(base)[offset]);
    case DType::kInt8: return static_cast<const int8_t*>(base)[offset];
    default: return static_cast<const float*>(base)[offset];
  }
}

void reference_store(void* base, DType dtype, int64_t offset, double value) {
  const float f = static_cast<float>(value);
  switch (dtype) {
    case DType::kFloat16: static_cast<uint16_t*>(base)[offset] = f16_from_f32(f); break;
    case DType::kBFloat16: static_cast<uint16_t*>(base)[offset] = bf16_from_f32(f); break;
    default: static_cast<float*>(base)[offset] = f; break;
  }
}

namespace {

bool visible(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (j >= p.keys(b)) return false;
  const int64_t diag = p.keys(b) - p.seq_q;
  if (p.causal) {
    const int64_t last = p.causal_align == CausalAlign::kBottomRight ? i + diag : i;
    if (j > last) return false;
  }
  if (p.window_left >= 0 && j < i + diag - p.window_left) return false;
  if (p.window_right >= 0 && j > i + diag + p.window_right) return false;
  if (p.mask && p.mask_dtype == DType::kBool) {
    if (static_cast<const uint8_t*>(p.mask)[p.mask_offset(b, h, i, j)] == 0) return false;
  }
  return true;
}

}  // namespace

double reference_scores(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, double* s,
                        double* u) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  const int64_t diag = p.keys(b) - p.seq_q;
  const int64_t kvh = h / p.group;
  const int64_t q_off = p.q_stride.offset(b, i, h);
  double row_max = kNegInf;
  for (int64_t j = 0; j < p.seq_kv; ++j) {
    if (!visible(p, b, h, i, j)) {
      s[j] = kNegInf;
      if (u) u[j] = 0;
      continue;
    }
    const AttentionProblem::Row key = p.key_row(b, j, kvh);
    double dot = 0;
    for (int64_t d = 0; d < p.head_dim; ++d) {
      dot += reference_load(p.q, p.dtype, q_off + d) *
             (key.scale * reference_load(key.data, p.kv_dtype, d));
    }
    double score = static_cast<double>(p.scale) * dot;
    if (u) u[j] = score;
    if (p.softcap > 0) score = p.softcap * std::tanh(score / p.softcap);
    if (p.alibi) score -= p.alibi_slope(b, h) * std::fabs(static_cast<double>(i + diag - j));
    if (p.mask && p.mask_dtype == DType::kFloat32) {
      score += static_cast<const float*>(p.mask)[p.mask_offset(b, h, i, j)];
    }
    s[j] = score;
    if (score > row_max) row_max = score;
  }
  return row_max;
}

void attention_reference(const AttentionProblem& p) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<double> s(static_cast<size_t>(p.seq_kv));
  std::vector<double> acc(static_cast<size_t>(p.head_dim_v));

  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t kvh = h / p.group;
      for (int64_t i = 0; i < p.seq_q; ++i) {
        // 1. Scores of the visible keys; -inf elsewhere.
        double row_max = reference_scores(p, b, h, i, s.data(), nullptr);

        // 2. Softmax relative to the row max (no overflow), then P.V.
        std::fill(acc.begin(), acc.end(), 0.0);
        double sum = 0;
        if (row_max != kNegInf) {
          for (int64_t j = 0; j < p.seq_kv; ++j) {
            if (s[j] == kNegInf) continue;
            const double w = std::exp(s[j] - row_max);
            sum += w;
            const AttentionProblem::Row value = p.value_row(b, j, kvh);
            for (int64_t d = 0; d < p.head_dim_v; ++d) {
              acc[d] += w * (value.scale * reference_load(value.data, p.kv_dtype, d));
            }
          }
        }
        double lse = kNegInf;
        if (sum > 0) {
          if (p.sinks) {
            const double sink = p.sinks[h * p.sinks_stride];
            // sum * e^max + e^sink, kept relative to the larger exponent.
            const double m = std::max(row_max, sink);
            sum = sum * std::exp(row_max - m) + std::exp(sink - m);
            for (double& a : acc) a *= std::exp(row_max - m);
            row_max = m;
          }
          lse = row_max + std::log(sum);
        }

        // 3. Normalize and store. An empty row stays 0 with lse -inf.
        const int64_t o_off = p.o_stride.offset(b, i, h);
        for (int64_t d = 0; d < p.head_dim_v; ++d) {
          reference_store(p.o, p.dtype, o_off + d, sum > 0 ? acc[d] / sum : 0.0);
        }
        if (p.lse) {
          p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i * p.lse_stride_s] = static_cast<float>(lse);
        }
      }
    }
  }
}

}  // namespace qkv::internal
