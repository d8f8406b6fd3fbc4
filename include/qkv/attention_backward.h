// Gradients of scaled dot-product attention, for training: FlashAttention's
// backward pass, recomputing the scores from the forward's log-sum-exp.
//
// Shapes (the glossary of include/qkv/attention.h):
//   forward  the AttentionParams of the forward call, every option as it was;
//            its o and lse (required) are read here: the forward's outputs
//   dout   [batch, seq_q,  heads,    head_dim_v]  dL/do            (read)
//   dq     [batch, seq_q,  heads,    head_dim]    dL/dq            (written)
//   dk     [batch, seq_kv, kv_heads, head_dim]    dL/dk            (written)
//   dv     [batch, seq_kv, kv_heads, head_dim_v]  dL/dv            (written)
//   dsinks [heads] float32, optional              dL/dsinks        (written; needs forward.sinks)
// dout, dq, dk and dv have the storage type of q (float32, float16 or
// bfloat16); every sum is accumulated in float32 or wider. The outputs must
// not overlap the inputs or each other.
//
// Semantics, for query row i of head h and visible key j of its kv head
// (u = scale * q_i . k_j, s the score after every option, as in the forward):
//   P_ij  = exp(s_ij - lse_i)          D_i = dout_i . o_i
//   dv_j  = sum over i (and over the heads of j's group) of P_ij dout_i
//   ds_ij = P_ij (dout_i . v_j - D_i)
//   du_ij = ds_ij (1 - tanh^2(u_ij / c)) with softcap c > 0, else ds_ij
//   dq_i  = scale sum_j du_ij k_j      dk_j = scale sum_i du_ij q_i (group summed)
//   dsink_h = -sum over b, i of exp(sink_h - lse_i) D_i
// ALiBi slopes and masks are constants: they shift s, they get no gradient.
// A row with lse = -inf (no visible key) contributes nothing; finite inputs
// never give NaN or Inf.
//
// forward.backend picks the implementation: kReference is the float64 oracle,
// which recomputes o and lse itself from q, k and v (the given o and lse are
// then not read: it is the exact gradient of the forward's inputs); every
// other value runs the tiled kernel, which reads o and lse as given.
#pragma once

#include "qkv/attention.h"
#include "qkv/tensor.h"

namespace qkv {

struct AttentionBackwardParams {
  AttentionParams forward;  // the forward call; o and lse are inputs here
  Tensor dout;
  Tensor dq, dk, dv;
  Tensor dsinks;  // optional float32 [heads]
};

// Writes dq, dk, dv (and dsinks) as described above. Throws qkv::Error
// (nothing written) when the arguments are inconsistent.
void attention_backward(const AttentionBackwardParams& params);

}  // namespace qkv
