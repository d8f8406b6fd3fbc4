// merge_attention (include/qkv/merge.h): validation, then one row at a time.
#include "qkv/merge.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "api/fail.h"
#include "api/tensor_access.h"
#include "runtime/threads.h"

namespace qkv {
namespace {

using internal::fail;

void check_lse(const Tensor& lse, const std::string& name, int64_t batch, int64_t heads,
               int64_t seq_q) {
  if (!lse.present() && lse.numel() != 0) fail(name, " is required but has no data");
  if (lse.rank != 3) fail(name, " must have rank 3 ([batch, heads, seq_q]) but has shape ", lse.shape_string());
  if (lse.dtype != DType::kFloat32) fail(name, " must be float32, not ", dtype_name(lse.dtype));
  for (int d = 0; d < 3; ++d) {
    if (lse.strides[d] < 0) fail(name, " stride ", d, " (", lse.strides[d], ") must not be negative");
  }
  if (lse.shape[0] != batch || lse.shape[1] != heads || lse.shape[2] != seq_q) {
    fail(name, " has shape ", lse.shape_string(), " but must be [batch, heads, seq_q] = [", batch,
         ", ", heads, ", ", seq_q, "]");
  }
}

float& lse_at(const Tensor& lse, int64_t b, int64_t h, int64_t s) {
  return static_cast<float*>(lse.data)[b * lse.strides[0] + h * lse.strides[1] + s * lse.strides[2]];
}

}  // namespace

void merge_attention(const MergeAttentionParams& params) {
  const std::vector<AttentionPart>& parts = params.parts;
  if (parts.empty()) fail("parts is empty: merge_attention needs at least one part");
  internal::check_bshd_float(params.o, "o");
  const int64_t batch = params.o.shape[0], seq_q = params.o.shape[1], heads = params.o.shape[2],
                dim = params.o.shape[3];
  for (size_t p = 0; p < parts.size(); ++p) {
    const std::string at = "parts[" + std::to_string(p) + "]";
    internal::check_bshd_float(parts[p].o, (at + ".o").c_str());
    if (parts[p].o.shape != params.o.shape) {
      fail(at, ".o has shape ", parts[p].o.shape_string(), " but o has ", params.o.shape_string());
    }
    check_lse(parts[p].lse, at + ".lse", batch, heads, seq_q);
  }
  if (params.lse.present() || params.lse.rank != 0) check_lse(params.lse, "lse", batch, heads, seq_q);
  const bool write_lse = params.lse.present();
  const int64_t rows = batch * seq_q * heads;
  if (rows == 0) return;

  const int64_t n = static_cast<int64_t>(parts.size());
  const int threads = internal::resolve_threads(params.num_threads);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> row(static_cast<size_t>(dim));
    std::vector<double> acc(static_cast<size_t>(dim));
    std::vector<double> lse(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / (seq_q * heads), s = r / heads % seq_q, h = r % heads;
      // The largest lse (NaN wins, so that it reaches the row).
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t p = 0; p < n; ++p) {
        lse[p] = lse_at(parts[p].lse, b, h, s);
        if (!(lse[p] <= m)) m = lse[p];
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double total = 0.0;
      if (m != -std::numeric_limits<double>::infinity()) {  // else: no part saw a key
        for (int64_t p = 0; p < n; ++p) {
          if (lse[p] == -std::numeric_limits<double>::infinity()) continue;
          const double w = std::exp(lse[p] - m);
          total += w;
          internal::read_row(parts[p].o, b, s, h, row.data());
          for (int64_t d = 0; d < dim; ++d) acc[d] += w * row[d];
        }
        for (int64_t d = 0; d < dim; ++d) row[d] = static_cast<float>(acc[d] / total);
      } else {
        std::fill(row.begin(), row.end(), 0.0f);
      }
      internal::write_row(params.o, b, s, h, row.data());
      if (write_lse) {
        lse_at(params.lse, b, h, s) = total > 0.0 ? static_cast<float>(m + std::log(total))
                                      : (m != m ? static_cast<float>(m)
                                                : -std::numeric_limits<float>::infinity());
      }
    }
  }
}

}  // namespace qkv
