// Rotary position embedding. Pair i of a row turns by the angle
// position * theta^(-2i / rotary_dim); pairs are (2i, 2i+1) interleaved or
// (i, i + rotary_dim/2) in halves. Angles in double: at a million tokens a
// float angle would already be off by ~0.06 rad.
#include "cache/rope.h"

#include <cmath>
#include <string>

#include "api/tensor_access.h"
#include "qkv/error.h"

namespace qkv::internal {

void validate_rope(const Rope& rope, int64_t head_dim) {
  const int64_t rd = rope.rotary_dim == 0 ? head_dim : rope.rotary_dim;
  if (rd < 0 || rd > head_dim || rd % 2 != 0) {
    throw Error("rope rotary_dim (" + std::to_string(rope.rotary_dim) +
                ") must be even and in [0, head_dim (" + std::to_string(head_dim) + ")]");
  }
  if (!(rope.theta > 0) || !std::isfinite(rope.theta)) {
    throw Error("rope theta (" + std::to_string(rope.theta) + ") must be finite and > 0");
  }
}

RopeTable::RopeTable(const Rope& rope, int64_t head_dim)
    : style_(rope.style), rotary_dim_(rope.rotary_dim == 0 ? head_dim : rope.rotary_dim) {
  inv_freq_.resize(static_cast<size_t>(rotary_dim_ / 2));
  for (int64_t i = 0; i < rotary_dim_ / 2; ++i) {
    inv_freq_[i] = std::pow(static_cast<double>(rope.theta),
                            -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim_));
  }
}

void RopeTable::rotate(float* row, int64_t position) const {
  const int64_t half = rotary_dim_ / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(position) * inv_freq_[i];
    const double c = std::cos(angle), s = std::sin(angle);
    const int64_t a = style_ == Rope::Style::kInterleaved ? 2 * i : i;
    const int64_t b = style_ == Rope::Style::kInterleaved ? 2 * i + 1 : i + half;
    const double x = row[a], y = row[b];
    row[a] = static_cast<float>(x * c - y * s);
    row[b] = static_cast<float>(x * s + y * c);
  }
}

}  // namespace qkv::internal

namespace qkv {

void apply_rope(const Tensor& x, const int64_t* positions, const Rope& rope) {
  using namespace internal;
  check_bshd_float(x, "x");
  if (positions == nullptr) throw Error("positions must not be null");
  validate_rope(rope, x.shape[3]);
  for (int64_t b = 0; b < x.shape[0]; ++b) {
    if (positions[b] < 0) {
      throw Error("positions[" + std::to_string(b) + "] (" + std::to_string(positions[b]) +
                  ") must be >= 0");
    }
  }
  const RopeTable table(rope, x.shape[3]);
  std::vector<float> row(static_cast<size_t>(x.shape[3]));
  for (int64_t b = 0; b < x.shape[0]; ++b) {
    for (int64_t t = 0; t < x.shape[1]; ++t) {
      for (int64_t h = 0; h < x.shape[2]; ++h) {
        read_row(x, b, t, h, row.data());
        table.rotate(row.data(), positions[b] + t);
        write_row(x, b, t, h, row.data());
      }
    }
  }
}

}  // namespace qkv
