// The backward oracle: every formula of include/qkv/attention_backward.h
// applied literally, per query row, in double precision. Kept plain on
// purpose: the tiled kernel is tested against it, and it is checked itself
// against finite differences of the forward oracle.
#include "reference/attention_backward_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "reference/attention_reference.h"

namespace qkv::internal {

void attention_backward_reference(const BackwardProblem& bp) {
  const AttentionProblem& p = bp.fwd;
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  const size_t kv = static_cast<size_t>(p.seq_kv);
  std::vector<double> s(kv), u(kv), prob(kv), dprob(kv);
  std::vector<double> dq(static_cast<size_t>(p.head_dim));
  // dk, dv of one batch: [seq_kv, kv_heads, dim].
  std::vector<double> dk(kv * p.kv_heads * p.head_dim), dv(kv * p.kv_heads * p.head_dim_v);
  std::vector<double> dsinks(static_cast<size_t>(p.heads), 0.0);
  const auto q_at = [&](int64_t b, int64_t i, int64_t h, int64_t d) {
    return reference_load(p.q, p.dtype, p.q_stride.offset(b, i, h) + d);
  };
  const auto dout_at = [&](int64_t b, int64_t i, int64_t h, int64_t d) {
    return reference_load(bp.dout, p.dtype, bp.dout_stride.offset(b, i, h) + d);
  };

  for (int64_t b = 0; b < p.batch; ++b) {
    std::fill(dk.begin(), dk.end(), 0.0);
    std::fill(dv.begin(), dv.end(), 0.0);
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t kvh = h / p.group;
      for (int64_t i = 0; i < p.seq_q; ++i) {
        std::fill(dq.begin(), dq.end(), 0.0);
        const double row_max = reference_scores(p, b, h, i, s.data(), u.data());
        if (row_max != kNegInf) {
          // lse as the forward defines it (the sink in the denominator).
          const double m = p.sinks ? std::max(row_max, static_cast<double>(p.sinks[h * p.sinks_stride]))
                                   : row_max;
          double sum = p.sinks ? std::exp(p.sinks[h * p.sinks_stride] - m) : 0.0;
          for (int64_t j = 0; j < p.seq_kv; ++j) {
            if (s[j] != kNegInf) sum += std::exp(s[j] - m);
          }
          const double lse = m + std::log(sum);
          // P, dP = dout . v, and D = sum_j P dP (= dout . o, exactly).
          double big_d = 0;
          for (int64_t j = 0; j < p.seq_kv; ++j) {
            prob[j] = s[j] == kNegInf ? 0.0 : std::exp(s[j] - lse);
            dprob[j] = 0;
            if (prob[j] == 0) continue;
            const AttentionProblem::Row value = p.value_row(b, j, kvh);
            for (int64_t d = 0; d < p.head_dim_v; ++d) {
              dprob[j] += dout_at(b, i, h, d) * reference_load(value.data, p.kv_dtype, d);
            }
            big_d += prob[j] * dprob[j];
          }
          if (p.sinks) dsinks[h] -= std::exp(p.sinks[h * p.sinks_stride] - lse) * big_d;
          for (int64_t j = 0; j < p.seq_kv; ++j) {
            if (prob[j] == 0) continue;
            double du = prob[j] * (dprob[j] - big_d);
            if (p.softcap > 0) {
              const double t = std::tanh(u[j] / p.softcap);
              du *= 1 - t * t;
            }
            const AttentionProblem::Row key = p.key_row(b, j, kvh);
            double* dk_row = &dk[(j * p.kv_heads + kvh) * p.head_dim];
            for (int64_t d = 0; d < p.head_dim; ++d) {
              dq[d] += p.scale * du * reference_load(key.data, p.kv_dtype, d);
              dk_row[d] += p.scale * du * q_at(b, i, h, d);
            }
            double* dv_row = &dv[(j * p.kv_heads + kvh) * p.head_dim_v];
            for (int64_t d = 0; d < p.head_dim_v; ++d) dv_row[d] += prob[j] * dout_at(b, i, h, d);
          }
        }
        const int64_t dq_off = bp.dq_stride.offset(b, i, h);
        for (int64_t d = 0; d < p.head_dim; ++d) reference_store(bp.dq, p.dtype, dq_off + d, dq[d]);
      }
    }
    for (int64_t j = 0; j < p.seq_kv; ++j) {
      for (int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
        const int64_t dk_off = bp.dk_stride.offset(b, j, kvh);
        const int64_t dv_off = bp.dv_stride.offset(b, j, kvh);
        for (int64_t d = 0; d < p.head_dim; ++d) {
          reference_store(bp.dk, p.dtype, dk_off + d, dk[(j * p.kv_heads + kvh) * p.head_dim + d]);
        }
        for (int64_t d = 0; d < p.head_dim_v; ++d) {
          reference_store(bp.dv, p.dtype, dv_off + d, dv[(j * p.kv_heads + kvh) * p.head_dim_v + d]);
        }
      }
    }
  }
  if (bp.dsinks) {
    for (int64_t h = 0; h < p.heads; ++h) bp.dsinks[h * bp.dsinks_stride] = static_cast<float>(dsinks[h]);
  }
}

}  // namespace qkv::internal
