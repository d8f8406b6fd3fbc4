// Rotary position embedding (RoPE).
#pragma once

#include <cstdint>

#include "qkv/tensor.h"

namespace qkv {

struct Rope {
  enum class Style : uint8_t {
    kHalves,       // pairs (i, i + rotary_dim / 2): GPT-NeoX, Llama (HF), FlashAttention default
    kInterleaved,  // pairs (2i, 2i + 1): GPT-J, the original RoFormer
  };
  Style style = Style::kHalves;
  float theta = 10000.0f;    // base: pair i turns by position * theta^(-2i / rotary_dim)
  int64_t rotary_dim = 0;    // leading dims rotated; 0 = head_dim; must be even
};

// Rotates x [batch, seq, heads, head_dim] (float32, float16 or bfloat16) in
// place: token t of batch b is at position positions[b] + t. Angles are
// computed in double. Throws qkv::Error on bad arguments (x unchanged).
void apply_rope(const Tensor& x, const int64_t* positions, const Rope& rope);

}  // namespace qkv
