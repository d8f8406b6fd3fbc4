// Scaled dot-product attention: the public entry point.
//
// Shapes (the glossary used everywhere in qkv):
//   q   [batch, seq_q,  heads,    head_dim]
//   k   [batch, seq_kv, kv_heads, head_dim]
//   v   [batch, seq_kv, kv_heads, head_dim_v]
//   o   [batch, seq_q,  heads,    head_dim_v]          (written)
//   lse [batch, heads,  seq_q]  float32, optional      (written, natural log)
// kv_heads must divide heads; query head h reads KV head h / (heads / kv_heads)
// (GQA; MQA when kv_heads == 1), without copying K or V.
//
// q, k, v and o share one storage type: float32, float16 or bfloat16
// (accumulation is float32 or wider whatever the storage).
//
// Semantics, for query row i of head h and key j:
//   s = scale * q_i . k_j
//   softcap c > 0:  s = c * tanh(s / c)
//   visible(i, j):  causal bottom-right  j <= i + seq_kv - seq_q
//                   causal top-left      j <= i
//                   window (left, right) i + seq_kv - seq_q - left <= j
//                                        j <= i + seq_kv - seq_q + right
//                                        (-1 = unbounded on that side)
//                   boolean mask         mask[b, h, i, j] is true
//   ALiBi:          s -= slope[b, h] * |i + seq_kv - seq_q - j|
//   float mask:     s += mask[b, h, i, j]
//   o_i   = sum_j softmax_j(s) v_j over visible j; a sink adds exp(sink[h]) to
//           the softmax denominator
//   lse_i = log(sum_j exp(s_j) [+ exp(sink[h])])
// A row with no visible key gives o = 0 and lse = -inf (with or without a
// sink). Finite inputs never give NaN or Inf, whatever the logits' magnitude.
#pragma once

#include <optional>

#include "qkv/tensor.h"

namespace qkv {

enum class CausalAlign : uint8_t {
  kBottomRight,  // FlashAttention: the last query sees the last key
  kTopLeft,      // PyTorch is_causal: query i sees keys 0..i
};

enum class Backend : uint8_t {
  kAuto,       // the fastest implementation for the call (flash or decode)
  kReference,  // the oracle: plain loops in double precision
  kFlash,      // tiled online-softmax kernel, SIMD with runtime dispatch
  kDecode,     // split-KV streaming kernel for few query rows (what kAuto picks
               // when seq_q * heads / kv_heads <= 16)
};

// Sliding window around the diagonal; -1 = unbounded on that side.
struct Window {
  int64_t left = -1;
  int64_t right = -1;
};

// Tile sizes of the flash kernel; 0 = chosen from head_dim and the caches.
struct Tiling {
  int block_q = 0;   // query positions per task (times the GQA group = rows)
  int block_kv = 0;  // keys per inner block (rounded up to 2 SIMD vectors, at most 512)
};

struct AttentionParams {
  Tensor q, k, v;  // inputs, see the shapes above
  Tensor o;        // output
  Tensor lse;      // optional output

  std::optional<float> scale;  // default 1 / sqrt(head_dim)
  bool causal = false;
  CausalAlign causal_align = CausalAlign::kBottomRight;
  Window window;
  float softcap = 0.0f;  // 0 = off

  Tensor alibi_slopes;  // optional float32 [heads] or [batch, heads]
  Tensor sinks;         // optional float32 [heads]
  // Optional mask, bool (true = may attend) or float32 (added to s), of rank
  // <= 4, broadcastable (numpy rules, aligned right) to
  // [batch, heads, seq_q, seq_kv].
  Tensor mask;

  int num_threads = 0;  // 0 = all the process may use; 1 inside a parallel region
  Backend backend = Backend::kAuto;
  // bfloat16 q, k, v and o on AMX tiles or AVX512-BF16: the probabilities P
  // enter P.V rounded to bfloat16, as in FlashAttention and PyTorch (each off
  // by up to 2^-8 of itself, so o by up to 2^-8 max|v| beyond its own
  // rounding). true: P carried to 2^-16 by a second tile product on AMX
  // (about 1.3x the time), or in float32 by the float32 kernel where the CPU
  // has AVX512-BF16 but no AMX: o as close to the exact result as bfloat16
  // allows. Every other path keeps P in float32 and ignores this.
  bool exact_bf16_probs = false;
  Tiling tiling;
};

// Computes attention as described above. Throws qkv::Error (nothing written)
// when the arguments are inconsistent.
void attention(const AttentionParams& params);

}  // namespace qkv
