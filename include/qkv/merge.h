// Attention over a union of disjoint key sets, from the attention over each
// set: the log-sum-exp merge that qkv's split-KV decoding does inside one call,
// for splits the caller makes itself (keys spread over processes or machines,
// as in ring attention, or a prefix cached apart from new tokens).
//
// For parts p = 0 .. n-1, each the attention of the same queries over its own
// keys (by qkv or by anything that returns o and a natural-log lse):
//   parts[p].o    [batch, seq_q, heads, head_dim_v]  float32, float16 or bfloat16
//   parts[p].lse  [batch, heads, seq_q]  float32; -inf for a row that saw no key
// merge_attention writes the attention over all the parts' keys:
//   lse = log(sum_p exp(lse_p)),   o = sum_p exp(lse_p - lse) o_p
//   o    [batch, seq_q, heads, head_dim_v]  float32, float16 or bfloat16 (written)
//   lse  [batch, heads, seq_q]  float32, optional (written)
// computed in double precision per row and rounded once to o's type. A row
// whose parts all have lse -inf gives o = 0 and lse = -inf. o (and lse) may be
// one part's own o (lse), with the same strides, to merge in place: each row is
// read before it is written. Other overlaps of the output with the parts are
// not allowed. A NaN lse gives NaN in its row.
//
// Sinks: a sink belongs to the softmax once; pass it to one part's call only.
#pragma once

#include <vector>

#include "qkv/tensor.h"

namespace qkv {

struct AttentionPart {
  Tensor o;    // [batch, seq_q, heads, head_dim_v]
  Tensor lse;  // [batch, heads, seq_q] float32
};

struct MergeAttentionParams {
  std::vector<AttentionPart> parts;  // at least one
  Tensor o;                          // output
  Tensor lse;                        // optional output
  int num_threads = 0;               // 0 = all the process may use; 1 inside a parallel region
};

// Throws qkv::Error (nothing written) when the arguments are inconsistent.
void merge_attention(const MergeAttentionParams& params);

}  // namespace qkv
