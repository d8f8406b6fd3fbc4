// attention_varlen: each packed sequence becomes a batch-1 view of the same
// buffers (no copies), validated like qkv::attention; all are validated before
// the first one runs.
#include "qkv/varlen.h"

#include <string>
#include <vector>

#include "api/dispatch.h"
#include "api/validate.h"
#include "qkv/error.h"

namespace qkv {
namespace {

void check_offsets(std::span<const int32_t> cu, const char* name, int64_t batch, int64_t total) {
  const std::string n(name);
  if (static_cast<int64_t>(cu.size()) != batch + 1) {
    throw Error(n + " has " + std::to_string(cu.size()) + " entries but must have batch + 1 = " +
                std::to_string(batch + 1));
  }
  if (cu.empty() || cu[0] != 0) throw Error(n + "[0] must be 0");
  for (size_t s = 1; s < cu.size(); ++s) {
    if (cu[s] < cu[s - 1]) {
      throw Error(n + " must be non-decreasing: " + n + "[" + std::to_string(s) + "] (" +
                  std::to_string(cu[s]) + ") < " + n + "[" + std::to_string(s - 1) + "] (" +
                  std::to_string(cu[s - 1]) + ")");
    }
  }
  if (cu.back() != total) {
    throw Error(n + " ends at " + std::to_string(cu.back()) + " but the tensor holds " +
                std::to_string(total) + " rows");
  }
}

void check_packed(const Tensor& t, const char* name) {
  if (!t.present()) throw Error(std::string(name) + " is required but has no data");
  if (t.rank != 3) {
    throw Error(std::string(name) + " must be [total, heads, dim] (rank 3) but has shape " +
                t.shape_string());
  }
}

// Rows [begin, end) of a packed [total, heads, dim] tensor as [1, end - begin, heads, dim].
Tensor rows_of(const Tensor& t, int64_t begin, int64_t end) {
  Tensor view = t;
  view.rank = 4;
  view.data = static_cast<char*>(t.data) + begin * t.strides[0] * dtype_size(t.dtype);
  view.shape = {1, end - begin, t.shape[1], t.shape[2]};
  view.strides = {0, t.strides[0], t.strides[1], t.strides[2]};
  return view;
}

}  // namespace

void attention_varlen(const VarlenAttentionParams& params) {
  const AttentionParams& options = params.options;
  if (options.q.present() || options.k.present() || options.v.present() || options.o.present() ||
      options.lse.present()) {
    throw Error("options.q/k/v/o/lse must be empty: pass the packed tensors in VarlenAttentionParams");
  }
  if (options.mask.present()) throw Error("mask is not supported with varlen attention");
  check_packed(params.q, "q");
  check_packed(params.k, "k");
  check_packed(params.v, "v");
  check_packed(params.o, "o");
  const int64_t batch = static_cast<int64_t>(params.cu_seqlens_q.size()) - 1;
  if (batch < 0) throw Error("cu_seqlens_q must have batch + 1 >= 1 entries");
  check_offsets(params.cu_seqlens_q, "cu_seqlens_q", batch, params.q.shape[0]);
  check_offsets(params.cu_seqlens_k, "cu_seqlens_k", batch, params.k.shape[0]);
  if (params.o.shape[0] != params.q.shape[0]) {
    throw Error("o has shape " + params.o.shape_string() + " but q has " +
                std::to_string(params.q.shape[0]) + " rows");
  }
  if (params.lse.present() && (params.lse.rank != 2 || params.lse.shape[1] != params.q.shape[0])) {
    throw Error("lse must be [heads, total_q] but has shape " + params.lse.shape_string());
  }
  const Tensor& alibi = options.alibi_slopes;
  if (alibi.present() && alibi.rank == 2 && alibi.shape[0] != batch) {
    throw Error("alibi_slopes has shape " + alibi.shape_string() + " but there are " +
                std::to_string(batch) + " sequences");
  }

  std::vector<internal::AttentionProblem> problems;
  problems.reserve(static_cast<size_t>(batch));
  for (int64_t s = 0; s < batch; ++s) {
    AttentionParams p = options;
    const int64_t q0 = params.cu_seqlens_q[s], q1 = params.cu_seqlens_q[s + 1];
    const int64_t k0 = params.cu_seqlens_k[s], k1 = params.cu_seqlens_k[s + 1];
    p.q = rows_of(params.q, q0, q1);
    p.k = rows_of(params.k, k0, k1);
    p.v = rows_of(params.v, k0, k1);
    p.o = rows_of(params.o, q0, q1);
    if (params.lse.present()) {
      p.lse = params.lse;
      p.lse.rank = 3;
      p.lse.data = static_cast<char*>(params.lse.data) + q0 * params.lse.strides[1] * 4;
      p.lse.shape = {1, params.lse.shape[0], q1 - q0, 0};
      p.lse.strides = {0, params.lse.strides[0], params.lse.strides[1], 0};
    }
    if (alibi.present() && alibi.rank == 2) {
      p.alibi_slopes = alibi;
      p.alibi_slopes.rank = 1;
      p.alibi_slopes.data = static_cast<char*>(alibi.data) + s * alibi.strides[0] * 4;
      p.alibi_slopes.shape = {alibi.shape[1], 0, 0, 0};
      p.alibi_slopes.strides = {alibi.strides[1], 0, 0, 0};
    }
    try {
      problems.push_back(internal::make_problem(p));
    } catch (const Error& e) {
      throw Error("sequence " + std::to_string(s) + ": " + e.what());
    }
  }
  for (const internal::AttentionProblem& problem : problems) {
    internal::run_attention(problem, options.backend);
  }
}

}  // namespace qkv
