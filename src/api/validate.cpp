// Validation at the public boundary: every check of the attention arguments
// lives here, so kernels can trust their input.
#include "api/validate.h"

#include <cmath>
#include <sstream>
#include <string>

#include "api/fail.h"
#include "qkv/error.h"
#include "runtime/threads.h"

namespace qkv::internal {
// Max elements of one tensor: keeps every offset computation in int64 range.
static constexpr int64_t kMaxElements = int64_t{1} << 50;

void check_view(const Tensor& t, const char* name, int rank) {
  // A view with no elements may have no data (e.g. an empty std::vector's).
  if (!t.present() && !(t.rank == rank && t.numel() == 0)) fail(name, " is required but has no data");
  if (t.rank != rank) {
    if (t.rank < 0 || t.rank > kMaxRank) fail(name, " must have rank ", rank, " but has rank ", t.rank);
    fail(name, " must have rank ", rank, " but has shape ", t.shape_string());
  }
  double elements = 1;
  for (int d = 0; d < rank; ++d) {
    if (t.shape[d] < 0) fail(name, " has a negative dimension: ", t.shape_string());
    if (t.strides[d] < 0) fail(name, " stride ", d, " (", t.strides[d], ") must not be negative");
    elements *= static_cast<double>(t.shape[d]);
  }
  if (elements > static_cast<double>(kMaxElements)) {
    fail(name, " is too large: ", t.shape_string());
  }
}

void check_float32_vector(const Tensor& t, const char* name) {
  if (t.dtype != DType::kFloat32) fail(name, " must be float32, not ", dtype_name(t.dtype));
}

void check_bshd(const Tensor& t, const char* name) {
  check_view(t, name, 4);
  if (t.strides[3] != 1 && t.shape[3] > 1) {
    fail(name, " must have a contiguous innermost dimension (stride 1), but its strides end in ",
         t.strides[3]);
  }
}

Bshd bshd_strides(const Tensor& t) { return Bshd{t.strides[0], t.strides[1], t.strides[2]}; }

AttentionProblem make_problem(const AttentionParams& p) {
  check_bshd(p.q, "q");
  check_bshd(p.k, "k");
  check_bshd(p.v, "v");
  check_bshd(p.o, "o");

  AttentionProblem pr;
  pr.batch = p.q.shape[0];
  pr.seq_q = p.q.shape[1];
  pr.heads = p.q.shape[2];
  pr.head_dim = p.q.shape[3];
  pr.seq_kv = p.k.shape[1];
  pr.kv_heads = p.k.shape[2];
  pr.head_dim_v = p.v.shape[3];

  if (p.q.dtype == DType::kBool || p.q.dtype == DType::kInt8) {
    fail("q dtype (", dtype_name(p.q.dtype), ") is not supported; use float32, float16 or bfloat16");
  }
  for (const auto& [t, name] : {std::pair{&p.k, "k"}, {&p.v, "v"}, {&p.o, "o"}}) {
    if (t->dtype != p.q.dtype) {
      fail(name, " dtype (", dtype_name(t->dtype), ") must match q dtype (", dtype_name(p.q.dtype), ")");
    }
  }
  if (pr.heads < 1) fail("heads (", pr.heads, ") must be at least 1; q has shape ", p.q.shape_string());
  if (pr.head_dim < 1) fail("head_dim (", pr.head_dim, ") must be at least 1; q has shape ", p.q.shape_string());
  if (p.k.shape[0] != pr.batch || p.v.shape[0] != pr.batch) {
    fail("batch must agree: q ", p.q.shape_string(), ", k ", p.k.shape_string(), ", v ",
         p.v.shape_string());
  }
  if (p.k.shape[3] != pr.head_dim) {
    fail("head_dim of k (", p.k.shape[3], ") must equal head_dim of q (", pr.head_dim, "): q ",
         p.q.shape_string(), ", k ", p.k.shape_string());
  }
  if (p.v.shape[1] != pr.seq_kv || p.v.shape[2] != pr.kv_heads) {
    fail("v must have the seq_kv and kv_heads of k: k ", p.k.shape_string(), ", v ",
         p.v.shape_string());
  }
  if (pr.kv_heads < 1) fail("kv_heads (", pr.kv_heads, ") must be at least 1; k has shape ", p.k.shape_string());
  if (pr.head_dim_v < 1) fail("head_dim_v (", pr.head_dim_v, ") must be at least 1; v has shape ", p.v.shape_string());
  if (pr.heads % pr.kv_heads != 0) {
    fail("kv_heads (", pr.kv_heads, ") must divide heads (", pr.heads, ")");
  }
  pr.group = pr.heads / pr.kv_heads;
  if (p.o.shape[0] != pr.batch || p.o.shape[1] != pr.seq_q || p.o.shape[2] != pr.heads ||
      p.o.shape[3] != pr.head_dim_v) {
    fail("o has shape ", p.o.shape_string(), " but must be [batch, seq_q, heads, head_dim_v] = [",
         pr.batch, ", ", pr.seq_q, ", ", pr.heads, ", ", pr.head_dim_v, "]");
  }
  pr.dtype = p.q.dtype;
  pr.kv_dtype = p.q.dtype;
  pr.q = p.q.data;
  pr.k = p.k.data;
  pr.v = p.v.data;
  pr.o = p.o.data;
  pr.q_stride = bshd_strides(p.q);
  pr.k_stride = bshd_strides(p.k);
  pr.v_stride = bshd_strides(p.v);
  pr.o_stride = bshd_strides(p.o);

  if (p.lse.present()) {
    check_view(p.lse, "lse", 3);
    check_float32_vector(p.lse, "lse");
    if (p.lse.shape[0] != pr.batch || p.lse.shape[1] != pr.heads || p.lse.shape[2] != pr.seq_q) {
      fail("lse has shape ", p.lse.shape_string(), " but must be [batch, heads, seq_q] = [",
           pr.batch, ", ", pr.heads, ", ", pr.seq_q, "]");
    }
    pr.lse = static_cast<float*>(p.lse.data);
    pr.lse_stride_b = p.lse.strides[0];
    pr.lse_stride_h = p.lse.strides[1];
    pr.lse_stride_s = p.lse.strides[2];
  }

  pr.scale = p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(pr.head_dim));
  if (!std::isfinite(pr.scale)) fail("scale (", pr.scale, ") must be finite");
  if (!std::isfinite(p.softcap) || p.softcap < 0) {
    fail("softcap (", p.softcap, ") must be finite and >= 0 (0 = off)");
  }
  pr.softcap = p.softcap;
  pr.causal = p.causal;
  pr.causal_align = p.causal_align;
  if (p.window.left < -1) fail("window left (", p.window.left, ") must be >= -1 (-1 = unbounded)");
  if (p.window.right < -1) fail("window right (", p.window.right, ") must be >= -1 (-1 = unbounded)");
  pr.window_left = p.window.left;
  pr.window_right = p.window.right;

  if (p.alibi_slopes.present()) {
    const Tensor& a = p.alibi_slopes;
    check_float32_vector(a, "alibi_slopes");
    if (a.rank == 1 && a.shape[0] == pr.heads) {
      check_view(a, "alibi_slopes", 1);
      pr.alibi_stride_h = a.strides[0];
    } else if (a.rank == 2 && a.shape[0] == pr.batch && a.shape[1] == pr.heads) {
      check_view(a, "alibi_slopes", 2);
      pr.alibi_stride_b = a.strides[0];
      pr.alibi_stride_h = a.strides[1];
    } else {
      fail("alibi_slopes has shape ", a.shape_string(), " but must be [heads] = [", pr.heads,
           "] or [batch, heads] = [", pr.batch, ", ", pr.heads, "]");
    }
    pr.alibi = static_cast<const float*>(a.data);
  }
  if (p.sinks.present()) {
    check_float32_vector(p.sinks, "sinks");
    if (p.sinks.rank != 1 || p.sinks.shape[0] != pr.heads) {
      fail("sinks has shape ", p.sinks.shape_string(), " but must be [heads] = [", pr.heads, "]");
    }
    check_view(p.sinks, "sinks", 1);
    pr.sinks = static_cast<const float*>(p.sinks.data);
    pr.sinks_stride = p.sinks.strides[0];
  }
  if (p.mask.present()) {
    const Tensor& m = p.mask;
    if (m.dtype != DType::kBool && m.dtype != DType::kFloat32) {
      fail("mask must be bool or float32, not ", dtype_name(m.dtype));
    }
    if (m.rank < 1 || m.rank > 4) fail("mask must have rank 1 to 4 but has shape ", m.shape_string());
    check_view(m, "mask", m.rank);
    const int64_t full[4] = {pr.batch, pr.heads, pr.seq_q, pr.seq_kv};
    for (int d = 0; d < m.rank; ++d) {
      const int target = 4 - m.rank + d;
      if (m.shape[d] == full[target]) {
        pr.mask_stride[target] = full[target] == 1 ? 0 : m.strides[d];
      } else if (m.shape[d] == 1) {
        pr.mask_stride[target] = 0;
      } else {
        fail("mask of shape ", m.shape_string(), " does not broadcast to [batch, heads, seq_q, seq_kv] = [",
             pr.batch, ", ", pr.heads, ", ", pr.seq_q, ", ", pr.seq_kv, "]");
      }
    }
    pr.mask = m.data;
    pr.mask_dtype = m.dtype;
  }

  if (p.num_threads < 0) fail("num_threads (", p.num_threads, ") must be >= 0 (0 = all)");
  pr.num_threads = resolve_threads(p.num_threads);
  if (p.tiling.block_q < 0 || p.tiling.block_q > 4096) {
    fail("tiling.block_q (", p.tiling.block_q, ") must be in [0, 4096] (0 = auto)");
  }
  if (p.tiling.block_kv < 0 || p.tiling.block_kv > 65536) {
    fail("tiling.block_kv (", p.tiling.block_kv, ") must be in [0, 65536] (0 = auto)");
  }
  pr.tiling = p.tiling;
  pr.exact_bf16_probs = p.exact_bf16_probs;
  return pr;
}

}  // namespace qkv::internal
