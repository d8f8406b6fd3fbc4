// Rotary embedding of one float row (internal; the public entry is apply_rope).
#pragma once

#include <cstdint>
#include <vector>

#include "qkv/rope.h"

namespace qkv::internal {

// Precomputed inverse frequencies of a Rope for one head_dim.
class RopeTable {
 public:
  RopeTable(const Rope& rope, int64_t head_dim);
  // Rotates row[0, head_dim) in place for `position`.
  void rotate(float* row, int64_t position) const;

 private:
  Rope::Style style_;
  int64_t rotary_dim_;
  std::vector<double> inv_freq_;  // [rotary_dim / 2]
};

// Checks a Rope against head_dim; throws qkv::Error naming the problem.
void validate_rope(const Rope& rope, int64_t head_dim);

}  // namespace qkv::internal
