// qkv::attention_backward: validate the forward's arguments (o and lse as
// inputs) and the gradients, then run the oracle or the tiled kernel.
#include "qkv/attention_backward.h"

#include "api/backward_problem.h"
#include "api/fail.h"
#include "api/validate.h"
#include "kernels/flash_backward.h"
#include "reference/attention_backward_reference.h"

namespace qkv {
namespace {

// name must have `like`'s shape and q's storage type.
void check_like(const Tensor& t, const char* name, const Tensor& like, const char* like_name,
                DType dtype) {
  internal::check_bshd(t, name);
  if (t.dtype != dtype) {
    internal::fail(name, " dtype (", dtype_name(t.dtype), ") must match q dtype (",
                   dtype_name(dtype), ")");
  }
  for (int d = 0; d < 4; ++d) {
    if (t.shape[d] != like.shape[d]) {
      internal::fail(name, " has shape ", t.shape_string(), " but must have the shape of ",
                     like_name, " ", like.shape_string());
    }
  }
}

internal::BackwardProblem make_backward_problem(const AttentionBackwardParams& p) {
  internal::BackwardProblem pr;
  if (!p.forward.lse.present()) {
    internal::fail("forward.lse is required: the backward pass reads the forward's log-sum-exp");
  }
  pr.fwd = internal::make_problem(p.forward);
  const DType dtype = pr.fwd.dtype;
  check_like(p.dout, "dout", p.forward.o, "o", dtype);
  check_like(p.dq, "dq", p.forward.q, "q", dtype);
  check_like(p.dk, "dk", p.forward.k, "k", dtype);
  check_like(p.dv, "dv", p.forward.v, "v", dtype);
  pr.dout = p.dout.data;
  pr.dq = p.dq.data;
  pr.dk = p.dk.data;
  pr.dv = p.dv.data;
  pr.dout_stride = internal::bshd_strides(p.dout);
  pr.dq_stride = internal::bshd_strides(p.dq);
  pr.dk_stride = internal::bshd_strides(p.dk);
  pr.dv_stride = internal::bshd_strides(p.dv);
  if (p.dsinks.present()) {
    if (!p.forward.sinks.present()) internal::fail("dsinks is given but forward.sinks is not");
    internal::check_float32_vector(p.dsinks, "dsinks");
    if (p.dsinks.rank != 1 || p.dsinks.shape[0] != pr.fwd.heads) {
      internal::fail("dsinks has shape ", p.dsinks.shape_string(), " but must be [heads] = [",
                     pr.fwd.heads, "]");
    }
    internal::check_view(p.dsinks, "dsinks", 1);
    pr.dsinks = static_cast<float*>(p.dsinks.data);
    pr.dsinks_stride = p.dsinks.strides[0];
  }
  return pr;
}

}  // namespace

void attention_backward(const AttentionBackwardParams& params) {
  const internal::BackwardProblem problem = make_backward_problem(params);
  if (params.forward.backend == Backend::kReference) {
    internal::attention_backward_reference(problem);
  } else {
    internal::flash_backward(problem);
  }
}

}  // namespace qkv
