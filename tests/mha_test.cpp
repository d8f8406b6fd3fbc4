// The matmul of the layers (src/layers/matmul.cpp) against float64 on odd
// shapes, strides, bfloat16 B and every block edge, on every SIMD target; and
// MultiHeadAttention (include/qkv/mha.h) against a float64 layer written here
// from the definitions: MHA, GQA, MQA, bias, both RoPE styles, float32 and
// bfloat16 weights, every attention option, prefill without a cache, prefill
// into a cache then decode steps, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/flash_forward.h"
#include "layers/matmul.h"
#include "qkv/mha.h"
#include "qkv/qkv.h"
#include "runtime/half.h"
#include "test_util.h"

namespace qkv::test {
namespace {

using internal::MatmulBlocking;
using internal::MatmulParams;

std::vector<float> normal_floats(int64_t n, uint32_t seed, double stddev = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, stddev);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = static_cast<float>(normal(rng));
  return x;
}

// ===========================================================================
// Matmul
// ===========================================================================

// THE matmul tolerance: Higham's bound for a float32 dot product of length k
// in any summation order (blocked, FMA or not) plus the bias add,
//   |c_ij - exact_ij| <= gamma_{k+1} * (sum_p |a_ip| |b_pj| + |bias_j|),
//   gamma_n = n u / (1 - n u), u = 2^-24.
// A correct kernel can never exceed it; a missing, doubled or misplaced term
// of size |a_ip b_pj| exceeds it by orders of magnitude (gamma_101 ~ 6e-6).
// B in bfloat16 is compared against its exact float value, so the bound is
// the same.
double matmul_bound(int64_t k, double abs_sum) {
  const double nu = static_cast<double>(k + 1) * 0x1p-24;
  return nu / (1 - nu) * abs_sum;
}

struct MatmulCase {
  int64_t m = 1, n = 1, k = 1;
  DType b_dtype = DType::kFloat32;
  bool bias = false;
  int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // extra elements after each row
  MatmulBlocking blocking;
  int threads = 0;

  std::string describe() const {
    std::ostringstream s;
    s << "m " << m << " n " << n << " k " << k << " b " << dtype_name(b_dtype)
      << (bias ? " bias" : "") << " pads " << pad_a << "/" << pad_b << "/" << pad_c;
    if (blocking.m || blocking.n || blocking.k) {
      s << " blocks " << blocking.m << "x" << blocking.n << "x" << blocking.k;
    }
    if (threads) s << " threads " << threads;
    return s.str();
  }
};

// Seeded inputs of a case, the float64 product, and runs of the kernel.
class MatmulWorkload {
 public:
  MatmulWorkload(const MatmulCase& c, uint32_t seed) : c_(c) {
    lda_ = c.k + c.pad_a;
    ldb_ = c.n + c.pad_b;
    ldc_ = c.n + c.pad_c;
    a_ = normal_floats(std::max<int64_t>(1, c.m * lda_), seed);
    b_ = normal_floats(std::max<int64_t>(1, c.k * ldb_), seed + 1);
    if (c.b_dtype == DType::kBFloat16) {
      for (float& x : b_) {
        b_bits_.push_back(internal::bf16_from_f32(x));
        x = internal::f32_from_bf16(b_bits_.back());
      }
    }
    if (c.bias) bias_ = normal_floats(c.n, seed + 2);
    ref_.assign(static_cast<size_t>(c.m * c.n), 0.0);
    bound_.assign(ref_.size(), 0.0);
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        double sum = c.bias ? bias_[j] : 0.0, abs_sum = c.bias ? std::fabs(bias_[j]) : 0.0;
        for (int64_t p = 0; p < c.k; ++p) {
          const double t = static_cast<double>(a_[i * lda_ + p]) * b_[p * ldb_ + j];
          sum += t;
          abs_sum += std::fabs(t);
        }
        ref_[i * c.n + j] = sum;
        bound_[i * c.n + j] = matmul_bound(c.k, abs_sum);
      }
    }
  }

  // Runs the kernel into NaN-filled C; returns C with its padding.
  std::vector<float> run() const {
    std::vector<float> out(static_cast<size_t>(std::max<int64_t>(1, c_.m * ldc_)),
                           std::numeric_limits<float>::quiet_NaN());
    MatmulParams p;
    p.m = c_.m, p.n = c_.n, p.k = c_.k;
    p.a = a_.data(), p.lda = lda_;
    p.b = c_.b_dtype == DType::kBFloat16 ? static_cast<const void*>(b_bits_.data())
                                         : static_cast<const void*>(b_.data());
    p.b_dtype = c_.b_dtype, p.ldb = ldb_;
    p.bias = c_.bias ? bias_.data() : nullptr;
    p.c = out.data(), p.ldc = ldc_;
    p.num_threads = c_.threads;
    p.blocking = c_.blocking;
    internal::matmul(p);
    return out;
  }

  // Every element within the bound and every padding element still NaN;
  // the failure names the first bad [i, j].
  testing::AssertionResult check(const std::vector<float>& out, const std::string& target) const {
    int64_t bad = 0, first_i = -1, first_j = -1;
    double first_err = 0;
    for (int64_t i = 0; i < c_.m; ++i) {
      for (int64_t j = 0; j < ldc_; ++j) {
        const float got = out[i * ldc_ + j];
        bool ok;
        double err = 0;
        if (j >= c_.n) {
          ok = std::isnan(got);
        } else {
          err = std::fabs(got - ref_[i * c_.n + j]);
          ok = err <= bound_[i * c_.n + j];  // false for NaN
        }
        if (!ok && bad++ == 0) first_i = i, first_j = j, first_err = err;
      }
    }
    if (bad == 0) return testing::AssertionSuccess();
    return testing::AssertionFailure()
           << c_.describe() << " on " << target << ": " << bad << " bad elements, first [" << first_i
           << ", " << first_j << "]"
           << (first_j >= c_.n ? " (padding written)"
                               : " error " + std::to_string(first_err) + " > bound " +
                                     std::to_string(bound_[first_i * c_.n + first_j]));
  }

 private:
  MatmulCase c_;
  int64_t lda_ = 0, ldb_ = 0, ldc_ = 0;
  std::vector<float> a_, b_, bias_;
  std::vector<uint16_t> b_bits_;
  std::vector<double> ref_, bound_;
};

// The case on every SIMD target compiled in and supported here.
void expect_matmul_matches_double(const MatmulCase& c, uint32_t seed) {
  const MatmulWorkload w(c, seed);
  for (const int64_t target : internal::flash_targets()) {
    internal::flash_force_target(target);
    EXPECT_TRUE(w.check(w.run(), internal::flash_target_name(target)));
  }
  internal::flash_force_target(0);
}

TEST(Matmul, OddShapesStridesAndBFloat16OnEveryTarget) {
  const int64_t sizes[] = {1, 3, 17, 64, 100};
  uint32_t seed = 1;
  for (int64_t m : sizes) {
    for (int64_t n : sizes) {
      for (int64_t k : sizes) {
        for (DType b_dtype : {DType::kFloat32, DType::kBFloat16}) {
          MatmulCase c;
          c.m = m, c.n = n, c.k = k, c.b_dtype = b_dtype;
          c.bias = (seed % 2) == 0;
          // Half the cases dense, half with padded rows in A, B and C.
          if (seed % 4 >= 2) c.pad_a = 5, c.pad_b = 7, c.pad_c = 3;
          expect_matmul_matches_double(c, seed++);
        }
      }
    }
  }
}

TEST(Matmul, EveryBlockEdge) {
  // Blocks of 1 panel, 7 deep: every row, column and depth block edge of
  // a small product, with tails in each.
  for (DType b_dtype : {DType::kFloat32, DType::kBFloat16}) {
    MatmulCase c;
    c.m = 50, c.n = 70, c.k = 40, c.b_dtype = b_dtype, c.bias = true;
    c.pad_a = 1, c.pad_c = 2;
    c.blocking = {1, 1, 7};
    expect_matmul_matches_double(c, 5);
    c.blocking = {13, 40, 16};
    expect_matmul_matches_double(c, 6);
  }
  // The default blocks crossed: m > 96, n > 512, k > 2 * 256 (best target only).
  MatmulCase big;
  big.m = 101, big.n = 530, big.k = 520, big.bias = true;
  const MatmulWorkload w(big, 7);
  EXPECT_TRUE(w.check(w.run(), "default target"));
}

TEST(Matmul, ThreadCountsGiveTheSameBits) {
  MatmulCase c;
  c.m = 77, c.n = 300, c.k = 90, c.bias = true;
  c.blocking = {24, 64, 32};
  c.threads = 1;
  const MatmulWorkload one(c, 9);
  const std::vector<float> first = one.run();
  for (int threads : {2, 3}) {
    c.threads = threads;
    const MatmulWorkload w(c, 9);
    const std::vector<float> out = w.run();
    EXPECT_TRUE(w.check(out, "default target"));
    EXPECT_TRUE(bitwise_equal(out, first)) << c.describe();
  }
}

TEST(Matmul, ZeroDepthGivesTheBias) {
  for (bool bias : {false, true}) {
    MatmulCase c;
    c.m = 3, c.n = 5, c.k = 0, c.bias = bias;
    const MatmulWorkload w(c, 11);
    EXPECT_TRUE(w.check(w.run(), "default target"));
  }
}

// ===========================================================================
// MultiHeadAttention
// ===========================================================================

struct MhaCase {
  int64_t batch = 2, seq = 17, hidden = 40, heads = 4, kv_heads = 4, head_dim = 8;
  bool bias = false;
  std::optional<Rope> rope;
  DType weight_dtype = DType::kFloat32;  // the layer's storage
  DType input_dtype = DType::kFloat32;   // of the weight views it is built from
  bool causal = true;
  Window window;
  float softcap = 0.0f;
  std::optional<float> scale;
  uint32_t seed = 1;
  // forward's num_threads. These layers are tiny: waking a team per call
  // costs more than the work (seconds per test on a loaded 2-core machine);
  // ThreadCountsAgree runs 0 (all), 1, 2 and 3.
  int threads = 1;

  MhaConfig config() const {
    MhaConfig c;
    c.hidden = hidden, c.heads = heads, c.kv_heads = kv_heads, c.head_dim = head_dim;
    c.weight_dtype = weight_dtype;
    c.bias = bias;
    c.rope = rope;
    c.causal = causal;
    c.window = window;
    c.softcap = softcap;
    c.scale = scale;
    return c;
  }
  int64_t q_dim() const { return heads * head_dim; }
  int64_t qkv_dim() const { return (heads + 2 * kv_heads) * head_dim; }

  std::string describe() const {
    std::ostringstream s;
    s << "batch " << batch << " seq " << seq << " hidden " << hidden << " heads " << heads << "/"
      << kv_heads << " head_dim " << head_dim << " weights " << dtype_name(input_dtype) << "->"
      << dtype_name(weight_dtype) << (bias ? " bias" : "") << (causal ? " causal" : "");
    if (rope) {
      s << " rope " << (rope->style == Rope::Style::kHalves ? "halves" : "interleaved")
        << " dim " << rope->rotary_dim;
    }
    if (window.left >= 0 || window.right >= 0) s << " window " << window.left << "," << window.right;
    if (softcap > 0) s << " softcap " << softcap;
    if (scale) s << " scale " << *scale;
    return s.str();
  }
};

// The weights of a case: the values the layer holds (after rounding to the
// input and the weight dtype; the reference uses exactly these) and the
// views it is constructed from.
struct HostWeights {
  std::vector<float> qkv_w, qkv_b, out_w, out_b;  // [hidden, qkv_dim], [qkv_dim], [q_dim, hidden], [hidden]
  std::vector<float> qkv_w_in, out_w_in;          // float32 input storage
  std::vector<uint16_t> qkv_w_bits, out_w_bits;   // bfloat16 input storage
  MhaWeights views;
};

HostWeights make_weights(const MhaCase& c) {
  HostWeights w;
  // Scaled as a trained layer's: unit-variance x gives unit-variance outputs.
  w.qkv_w = normal_floats(c.hidden * c.qkv_dim(), c.seed * 101, 1.0 / std::sqrt(c.hidden));
  w.out_w = normal_floats(c.q_dim() * c.hidden, c.seed * 103, 1.0 / std::sqrt(c.q_dim()));
  if (c.bias) {
    w.qkv_b = normal_floats(c.qkv_dim(), c.seed * 107, 0.5);
    w.out_b = normal_floats(c.hidden, c.seed * 109, 0.5);
  }
  for (auto [values, in, bits] : {std::tuple{&w.qkv_w, &w.qkv_w_in, &w.qkv_w_bits},
                                  {&w.out_w, &w.out_w_in, &w.out_w_bits}}) {
    for (float& x : *values) {
      if (c.input_dtype == DType::kBFloat16) {
        bits->push_back(internal::bf16_from_f32(x));
        x = internal::f32_from_bf16(bits->back());
      } else {
        in->push_back(x);
      }
      x = round_to(c.weight_dtype, x);
    }
  }
  const auto matrix = [&](const std::vector<float>& f32, const std::vector<uint16_t>& bf16,
                          int64_t rows, int64_t cols) {
    return c.input_dtype == DType::kBFloat16
               ? Tensor::contiguous(bf16.data(), DType::kBFloat16, {rows, cols})
               : Tensor::contiguous(f32.data(), DType::kFloat32, {rows, cols});
  };
  w.views.qkv_weight = matrix(w.qkv_w_in, w.qkv_w_bits, c.hidden, c.qkv_dim());
  w.views.out_weight = matrix(w.out_w_in, w.out_w_bits, c.q_dim(), c.hidden);
  if (c.bias) {
    w.views.qkv_bias = Tensor::contiguous(w.qkv_b.data(), DType::kFloat32, {c.qkv_dim()});
    w.views.out_bias = Tensor::contiguous(w.out_b.data(), DType::kFloat32, {c.hidden});
  }
  return w;
}

// ---------------------------------------------------------------------------
// The float64 layer: plain loops from the definitions in qkv/mha.h (fused
// projection, head split), qkv/rope.h (pair i of a row turns by
// position * theta^(-2i / rotary_dim)) and qkv/attention.h (softcap, causal
// bottom-right, window), over the whole sequence at positions 0 .. seq-1.
//   x [batch, seq, hidden] -> y [batch, seq, hidden]
std::vector<double> reference_layer(const MhaCase& c, const HostWeights& w,
                                    const std::vector<float>& x) {
  const int64_t B = c.batch, S = c.seq, E = c.hidden, D = c.head_dim, W = c.qkv_dim();
  // 1. qkv [B, S, W] = x . qkv_w + qkv_b.
  std::vector<double> qkv(static_cast<size_t>(B * S * W));
  for (int64_t r = 0; r < B * S; ++r) {
    for (int64_t j = 0; j < W; ++j) {
      double sum = c.bias ? w.qkv_b[j] : 0.0;
      for (int64_t i = 0; i < E; ++i) sum += static_cast<double>(x[r * E + i]) * w.qkv_w[i * W + j];
      qkv[r * W + j] = sum;
    }
  }
  const auto q_at = [&](int64_t b, int64_t s, int64_t h) { return &qkv[(b * S + s) * W + h * D]; };
  const auto k_at = [&](int64_t b, int64_t s, int64_t h) { return q_at(b, s, c.heads + h); };
  const auto v_at = [&](int64_t b, int64_t s, int64_t h) { return q_at(b, s, c.heads + c.kv_heads + h); };
  // 2. RoPE on q and k heads at position s.
  if (c.rope) {
    const int64_t rd = c.rope->rotary_dim == 0 ? D : c.rope->rotary_dim;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t h = 0; h < c.heads + c.kv_heads; ++h) {
          double* row = q_at(b, s, h);
          for (int64_t i = 0; i < rd / 2; ++i) {
            const double angle =
                static_cast<double>(s) * std::pow(static_cast<double>(c.rope->theta), -2.0 * i / rd);
            const bool interleaved = c.rope->style == Rope::Style::kInterleaved;
            const int64_t i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + rd / 2;
            const double x0 = row[i0], x1 = row[i1];
            row[i0] = x0 * std::cos(angle) - x1 * std::sin(angle);
            row[i1] = x0 * std::sin(angle) + x1 * std::cos(angle);
          }
        }
      }
    }
  }
  // 3. o [B, S, heads, D]: softmax over the visible keys of each query.
  const double scale = c.scale ? *c.scale : 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t group = c.heads / c.kv_heads;
  std::vector<double> o(static_cast<size_t>(B * S * c.q_dim()), 0.0);
  std::vector<double> s_row(static_cast<size_t>(S));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < c.heads; ++h) {
      for (int64_t i = 0; i < S; ++i) {
        double max_s = -std::numeric_limits<double>::infinity();
        std::vector<bool> visible(static_cast<size_t>(S));
        for (int64_t j = 0; j < S; ++j) {
          visible[j] = (!c.causal || j <= i) && (c.window.left < 0 || j >= i - c.window.left) &&
                       (c.window.right < 0 || j <= i + c.window.right);
          if (!visible[j]) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q_at(b, i, h)[d] * k_at(b, j, h / group)[d];
          double s = scale * dot;
          if (c.softcap > 0) s = c.softcap * std::tanh(s / c.softcap);
          s_row[j] = s;
          max_s = std::max(max_s, s);
        }
        double sum = 0;
        double* out = &o[((b * S + i) * c.heads + h) * D];
        for (int64_t j = 0; j < S; ++j) {
          if (!visible[j]) continue;
          const double p = std::exp(s_row[j] - max_s);
          sum += p;
          for (int64_t d = 0; d < D; ++d) out[d] += p * v_at(b, j, h / group)[d];
        }
        for (int64_t d = 0; d < D && sum > 0; ++d) out[d] /= sum;
      }
    }
  }
  // 4. y [B, S, E] = o . out_w + out_b.
  std::vector<double> y(static_cast<size_t>(B * S * E));
  for (int64_t r = 0; r < B * S; ++r) {
    for (int64_t j = 0; j < E; ++j) {
      double sum = c.bias ? w.out_b[j] : 0.0;
      for (int64_t i = 0; i < c.q_dim(); ++i) sum += o[r * c.q_dim() + i] * w.out_w[i * E + j];
      y[r * E + j] = sum;
    }
  }
  return y;
}

// THE layer tolerance:  |y - y_ref| <= kLayerTolerance * max|y_ref|  for every element.
//
// The reference holds the very weights the layer holds (bfloat16 weights are
// rounded before it sees them), so the only difference is float32 arithmetic:
// two projections (dot products of length hidden and heads * head_dim, <= 64
// here), the attention (dot products of length head_dim, sums over <= 33
// keys) and the float32 roundings of qkv and o in between. Each stage's error
// is about u * sqrt(length) relative to the magnitude of its terms, at worst
// u * length; summed over the stages that is at worst ~ 3 * 64 * 2^-24 ~ 1e-5
// of the outputs' scale, for which max|y_ref| stands (inputs and weights are
// scaled so that outputs are O(1), with no cancellation to speak of). Measured
// errors are ~ 3e-7 of it. A bug (a wrong head, position, mask or bias) moves
// outputs by a sizable fraction of max|y_ref|.
constexpr double kLayerTolerance = 2e-5;

// Every element of `got` (rows given by a [batch, seq, hidden] view into a
// float buffer) within tolerance of ref; names the first bad [b, s, j].
testing::AssertionResult layer_close(const MhaCase& c, const std::string& what,
                                     const std::vector<float>& got, const std::vector<double>& ref,
                                     double relative = kLayerTolerance) {
  double max_ref = 0;
  for (double r : ref) max_ref = std::max(max_ref, std::fabs(r));
  const double tol = relative * max_ref;
  int64_t bad = 0, first = -1;
  double max_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(got[i] - ref[i]);
    if (!(err <= tol)) {
      if (bad++ == 0) first = static_cast<int64_t>(i);
      max_err = std::isnan(err) ? err : std::max(max_err, err);
    }
  }
  if (max_ref == 0) return testing::AssertionFailure() << c.describe() << ": reference is all zero";
  if (bad == 0) return testing::AssertionSuccess();
  const int64_t j = first % c.hidden, s = first / c.hidden % c.seq, b = first / c.hidden / c.seq;
  return testing::AssertionFailure() << c.describe() << " [" << what << "]: " << bad
                                     << " elements off, first [" << b << ", " << s << ", " << j
                                     << "] got " << got[first] << " want " << ref[first]
                                     << ", max error " << max_err << " > " << tol;
}

Tensor x_view(const std::vector<float>& x, const MhaCase& c) {
  return Tensor::contiguous(x.data(), DType::kFloat32, {c.batch, c.seq, c.hidden});
}

// Prefill without a cache, against the reference.
void expect_layer_matches_reference(const MhaCase& c) {
  const HostWeights w = make_weights(c);
  const MultiHeadAttention layer(c.config(), w.views);
  const std::vector<float> x = normal_floats(c.batch * c.seq * c.hidden, c.seed * 113);
  std::vector<float> y(x.size(), std::numeric_limits<float>::quiet_NaN());
  layer.forward(x_view(x, c), x_view(y, c), nullptr, c.threads);
  EXPECT_TRUE(layer_close(c, "prefill", y, reference_layer(c, w, x)));
}

std::vector<std::optional<Rope>> rope_options() {
  Rope halves;
  Rope interleaved;
  interleaved.style = Rope::Style::kInterleaved;
  interleaved.theta = 500.0f;
  return {std::nullopt, halves, interleaved};
}

TEST(MultiHeadAttention, MhaGqaMqaBiasRopeAndWeightTypesMatchTheReference) {
  uint32_t seed = 1;
  for (const auto& [heads, kv_heads] : {std::pair{4, 4}, {4, 2}, {4, 1}}) {
    for (bool bias : {false, true}) {
      for (const auto& rope : rope_options()) {
        for (const auto& [input, stored] : {std::pair{DType::kFloat32, DType::kFloat32},
                                            {DType::kFloat32, DType::kBFloat16},
                                            {DType::kBFloat16, DType::kBFloat16},
                                            {DType::kBFloat16, DType::kFloat32}}) {
          MhaCase c;
          c.heads = heads, c.kv_heads = kv_heads, c.bias = bias, c.rope = rope;
          c.input_dtype = input, c.weight_dtype = stored;
          c.seq = std::array<int64_t, 3>{1, 17, 33}[seed % 3];
          c.seed = seed++;
          expect_layer_matches_reference(c);
        }
      }
    }
  }
}

TEST(MultiHeadAttention, AttentionOptionsMatchTheReference) {
  MhaCase base;
  base.heads = 8, base.kv_heads = 2, base.head_dim = 5, base.seq = 33, base.bias = true;
  Rope partial;  // rotates the first 4 of 5 dims
  partial.rotary_dim = 4;
  for (int variant = 0; variant < 6; ++variant) {
    MhaCase c = base;
    c.seed = 40 + variant;
    switch (variant) {
      case 0: c.causal = false; break;
      case 1: c.window = {5, 0}; break;
      case 2: c.causal = false, c.window = {3, 2}; break;
      case 3: c.softcap = 0.5f, c.scale = 2.0f; break;  // logits up to ~+-0.5: the cap bends them
      case 4: c.rope = partial; break;
      case 5: c.heads = 5, c.kv_heads = 5, c.head_dim = 8; break;  // 40 = 5 x 8, odd heads
    }
    expect_layer_matches_reference(c);
  }
}

TEST(MultiHeadAttention, DefaultsResolve) {
  // kv_heads 0 = heads, head_dim 0 = hidden / heads.
  MhaCase c;
  c.heads = c.kv_heads = 5, c.head_dim = 8, c.bias = true, c.seed = 50;
  const HostWeights w = make_weights(c);
  MhaConfig config = c.config();
  config.kv_heads = 0, config.head_dim = 0;
  const MultiHeadAttention layer(config, w.views);
  EXPECT_EQ(layer.config().kv_heads, 5);
  EXPECT_EQ(layer.config().head_dim, 8);
  EXPECT_EQ(layer.qkv_dim(), 120);
  const std::vector<float> x = normal_floats(c.batch * c.seq * c.hidden, 51);
  std::vector<float> y(x.size());
  layer.forward(x_view(x, c), x_view(y, c));
  EXPECT_TRUE(layer_close(c, "defaults", y, reference_layer(c, w, x)));
}

TEST(MultiHeadAttention, ThreadCountsAgree) {
  MhaCase c;
  c.heads = 4, c.kv_heads = 2, c.seq = 33, c.bias = true, c.rope = Rope{};
  const HostWeights w = make_weights(c);
  const MultiHeadAttention layer(c.config(), w.views);
  const std::vector<float> x = normal_floats(c.batch * c.seq * c.hidden, 3);
  const std::vector<double> ref = reference_layer(c, w, x);
  for (int threads : {0, 1, 2, 3}) {
    std::vector<float> y(x.size());
    layer.forward(x_view(x, c), x_view(y, c), nullptr, threads);
    EXPECT_TRUE(layer_close(c, "threads " + std::to_string(threads), y, ref));
  }
}

TEST(MultiHeadAttention, StridedAndInPlaceActivations) {
  MhaCase c;
  c.heads = 4, c.kv_heads = 1, c.seq = 17, c.bias = true;
  const HostWeights w = make_weights(c);
  const MultiHeadAttention layer(c.config(), w.views);
  const std::vector<float> x = normal_floats(c.batch * c.seq * c.hidden, 4);
  const std::vector<double> ref = reference_layer(c, w, x);

  // x and y with padded rows and a gap between batches (one matmul per batch).
  const int64_t row = c.hidden + 3, batch_stride = c.seq * row + 11;
  std::vector<float> xs(static_cast<size_t>(c.batch * batch_stride), 1e30f);
  std::vector<float> ys(xs.size(), -1e30f);
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t s = 0; s < c.seq; ++s) {
      std::copy_n(&x[(b * c.seq + s) * c.hidden], c.hidden, &xs[b * batch_stride + s * row]);
    }
  }
  const auto strided = [&](std::vector<float>& v) {
    return Tensor::strided(v.data(), DType::kFloat32, {c.batch, c.seq, c.hidden}, {batch_stride, row, 1});
  };
  layer.forward(strided(xs), strided(ys));
  std::vector<float> y(x.size());
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t s = 0; s < c.seq; ++s) {
      for (int64_t j = 0; j < row; ++j) {
        const float got = ys[b * batch_stride + s * row + j];
        if (j < c.hidden) {
          y[(b * c.seq + s) * c.hidden + j] = got;
        } else {
          ASSERT_EQ(got, -1e30f) << "padding of y written at [" << b << ", " << s << ", " << j << "]";
        }
      }
    }
  }
  EXPECT_TRUE(layer_close(c, "strided", y, ref));
  EXPECT_EQ(ys.back(), -1e30f);

  // y may be x itself.
  std::vector<float> inout = x;
  layer.forward(x_view(inout, c), x_view(inout, c));
  EXPECT_TRUE(layer_close(c, "in place", inout, ref));
}

// ---------------------------------------------------------------------------
// With a cache: prefill of the first `prefill` tokens (in chunks), then one
// decode step (seq = 1) per remaining token, each writing its rows of y; the
// result must equal one prefill of the whole sequence without a cache, and
// the reference.
void expect_cached_steps_match(const MhaCase& c, const std::vector<int64_t>& chunks,
                               KVCacheConfig cache_config, double tolerance = kLayerTolerance) {
  const HostWeights w = make_weights(c);
  const MultiHeadAttention layer(c.config(), w.views);
  const std::vector<float> x = normal_floats(c.batch * c.seq * c.hidden, c.seed * 127);
  const std::vector<double> ref = reference_layer(c, w, x);

  std::vector<float> y_full(x.size());
  layer.forward(x_view(x, c), x_view(y_full, c), nullptr, c.threads);
  EXPECT_TRUE(layer_close(c, "one prefill", y_full, ref));

  KVCache cache(cache_config);
  std::vector<float> y(x.size(), std::numeric_limits<float>::quiet_NaN());
  int64_t t = 0;
  std::vector<int64_t> steps = chunks;
  while (std::accumulate(steps.begin(), steps.end(), int64_t{0}) < c.seq) steps.push_back(1);
  for (const int64_t n : steps) {
    // Tokens [t, t + n) of every sequence: strided views into x and y.
    const auto slice = [&](const std::vector<float>& v) {
      return Tensor::strided(v.data() + t * c.hidden, DType::kFloat32, {c.batch, n, c.hidden},
                             {c.seq * c.hidden, c.hidden, 1});
    };
    layer.forward(slice(x), slice(y), &cache, c.threads);
    t += n;
    for (int64_t b = 0; b < c.batch; ++b) ASSERT_EQ(cache.lengths()[b], t);
  }
  std::ostringstream what;
  what << "cache " << dtype_name(cache_config.dtype) << " page " << cache_config.page_size << " chunks";
  for (int64_t n : steps) what << " " << n;
  EXPECT_TRUE(layer_close(c, what.str(), y, ref, tolerance));
  if (cache_config.dtype == DType::kFloat32) {
    // The cached result is the one-prefill result (the last rows of each step).
    std::vector<double> full(y_full.begin(), y_full.end());
    EXPECT_TRUE(layer_close(c, what.str() + " vs one prefill", y, full));
  }
}

TEST(MultiHeadAttention, PrefillIntoACacheThenDecodeEqualsOnePrefill) {
  uint32_t seed = 60;
  for (const auto& [heads, kv_heads] : {std::pair{4, 4}, {4, 2}, {4, 1}}) {
    for (const auto& rope : rope_options()) {
      MhaCase c;
      c.heads = heads, c.kv_heads = kv_heads, c.rope = rope, c.bias = rope.has_value();
      c.weight_dtype = kv_heads == 2 ? DType::kBFloat16 : DType::kFloat32;
      c.seq = 17;
      c.seed = seed++;
      MultiHeadAttention probe(c.config(), make_weights(c).views);
      // Prefill 10 tokens, then a chunk of 3 (queries after cached keys), then decode.
      expect_cached_steps_match(c, {10, 3}, probe.cache_config(c.batch, 20, DType::kFloat32));
    }
  }
}

TEST(MultiHeadAttention, DecodeFromAnEmptyCacheAndPagedCaches) {
  MhaCase c;
  c.heads = 4, c.kv_heads = 2, c.seq = 33, c.rope = Rope{}, c.seed = 70;
  const MultiHeadAttention probe(c.config(), make_weights(c).views);
  // Every token decoded one by one, from the first.
  expect_cached_steps_match(c, {}, probe.cache_config(c.batch, 33, DType::kFloat32));
  // A paged cache with pages of 4 tokens.
  KVCacheConfig paged = probe.cache_config(c.batch, 40, DType::kFloat32);
  paged.page_size = 4;
  expect_cached_steps_match(c, {16}, paged);
}

TEST(MultiHeadAttention, HalfPrecisionCachesStayClose) {
  // K and V are rounded to the cache's type: a relative error of u (2^-11
  // float16, 2^-8 bfloat16) per element moves the outputs by about u of
  // their scale; 4u bounds it with room.
  MhaCase c;
  c.heads = 4, c.kv_heads = 1, c.seq = 17, c.bias = true, c.rope = Rope{}, c.seed = 80;
  const MultiHeadAttention probe(c.config(), make_weights(c).views);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    expect_cached_steps_match(c, {9}, probe.cache_config(c.batch, 17, dtype), 4 * unit_roundoff(dtype));
  }
}

// ---------------------------------------------------------------------------
// Bad input: qkv::Error naming the argument and values; nothing written.

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no exception)";
}

#define EXPECT_ERROR_WITH(statement, text)                                              \
  do {                                                                                  \
    const std::string message_ = error_of([&] { statement; });                          \
    EXPECT_NE(message_.find(text), std::string::npos)                                   \
        << #statement << " gave \"" << message_ << "\", expected it to contain \"" << text << "\""; \
  } while (0)

TEST(MultiHeadAttention, BadConfigsAndWeights) {
  MhaCase c;
  c.bias = true;
  const HostWeights w = make_weights(c);
  const auto build = [&](const MhaConfig& config, const MhaWeights& weights) {
    MultiHeadAttention layer(config, weights);
  };
  MhaConfig config = c.config();
  config.kv_heads = 3;
  EXPECT_ERROR_WITH(build(config, w.views), "kv_heads (3) must divide heads (4)");
  config = c.config();
  config.hidden = 0;
  EXPECT_ERROR_WITH(build(config, w.views), "hidden (0) must be at least 1");
  config = c.config();
  config.head_dim = 0, config.heads = 3, config.kv_heads = 3;
  EXPECT_ERROR_WITH(build(config, w.views), "heads (3) does not divide hidden (40)");
  config = c.config();
  config.weight_dtype = DType::kFloat16;
  EXPECT_ERROR_WITH(build(config, w.views), "weight_dtype (float16) must be float32 or bfloat16");
  config = c.config();
  config.rope = Rope{};
  config.rope->rotary_dim = 3;
  EXPECT_ERROR_WITH(build(config, w.views), "rotary_dim (3) must be even");
  config = c.config();
  config.softcap = -1;
  EXPECT_ERROR_WITH(build(config, w.views), "softcap (-1)");

  MhaWeights bad = w.views;
  bad.qkv_weight.shape[1] = 95;
  EXPECT_ERROR_WITH(build(c.config(), bad), "qkv_weight has shape [40, 95] but must be [40, 96]");
  bad = w.views;
  bad.out_weight = Tensor::contiguous(w.out_w.data(), DType::kFloat32, {40, 32});
  EXPECT_ERROR_WITH(build(c.config(), bad), "out_weight has shape [40, 32] but must be [32, 40]");
  bad = w.views;
  bad.out_weight.dtype = DType::kInt8;
  EXPECT_ERROR_WITH(build(c.config(), bad), "out_weight must be float32, float16 or bfloat16, not int8");
  bad = w.views;
  bad.qkv_bias = Tensor();
  EXPECT_ERROR_WITH(build(c.config(), bad), "qkv_bias is required but has no data; expected shape [96]");
  config = c.config();
  config.bias = false;
  EXPECT_ERROR_WITH(build(config, w.views), "config.bias is false");
  bad = w.views;
  bad.qkv_weight.strides[0] = -1;
  EXPECT_ERROR_WITH(build(c.config(), bad), "qkv_weight stride 0 (-1) must not be negative");
}

TEST(MultiHeadAttention, BadActivationsAndCachesChangeNothing) {
  MhaCase c;
  c.seq = 5, c.rope = Rope{};
  const HostWeights w = make_weights(c);
  const MultiHeadAttention layer(c.config(), w.views);
  std::vector<float> x = normal_floats(c.batch * c.seq * c.hidden, 5);
  std::vector<float> y(x.size(), 7.0f);
  const auto unchanged = [&] { return std::all_of(y.begin(), y.end(), [](float v) { return v == 7.0f; }); };

  EXPECT_ERROR_WITH(layer.forward(Tensor::contiguous(x.data(), DType::kFloat32, {2, 200}), x_view(y, c)),
                    "x must have rank 3 [batch, seq, hidden] but has shape [2, 200]");
  EXPECT_ERROR_WITH(layer.forward(Tensor::contiguous(x.data(), DType::kFloat32, {2, 10, 20}), x_view(y, c)),
                    "x has shape [2, 10, 20] but its last dimension must be hidden (40)");
  EXPECT_ERROR_WITH(layer.forward(x_view(x, c), Tensor::contiguous(y.data(), DType::kFloat32, {1, 10, 40})),
                    "y has shape [1, 10, 40] but must equal the shape of x [2, 5, 40]");
  Tensor x16 = x_view(x, c);
  x16.dtype = DType::kBFloat16;
  EXPECT_ERROR_WITH(layer.forward(x16, x_view(y, c)), "x must be float32, not bfloat16");
  Tensor gappy = x_view(x, c);
  gappy.strides[2] = 2;
  EXPECT_ERROR_WITH(layer.forward(gappy, x_view(y, c)), "x must have a contiguous innermost dimension");
  EXPECT_ERROR_WITH(layer.forward(x_view(x, c), Tensor(), nullptr), "y is required but has no data");
  EXPECT_ERROR_WITH(layer.forward(x_view(x, c), x_view(y, c), nullptr, -2), "num_threads (-2)");
  EXPECT_TRUE(unchanged());

  // Caches that do not fit the layer or the input.
  KVCache wrong_heads(KVCacheConfig{c.batch, 16, 2, c.head_dim, 0, DType::kFloat32});
  EXPECT_ERROR_WITH(layer.forward(x_view(x, c), x_view(y, c), &wrong_heads),
                    "cache has batch 2, kv_heads 2, head_dim 8, head_dim_v 8 but x [2, 5, 40] and "
                    "the layer need batch 2, kv_heads 4");
  KVCache small(layer.cache_config(c.batch, 8, DType::kFloat32));
  layer.forward(x_view(x, c), x_view(y, c), &small);  // 5 of 8 tokens
  std::fill(y.begin(), y.end(), 7.0f);
  EXPECT_ERROR_WITH(layer.forward(x_view(x, c), x_view(y, c), &small),
                    "cache sequence 0 holds 5 tokens; 5 more (x [2, 5, 40]) exceed its capacity (8)");
  EXPECT_EQ(small.lengths(), (std::vector<int64_t>{5, 5}));
  EXPECT_TRUE(unchanged());
}

TEST(MultiHeadAttention, EmptyInputsDoNothing) {
  MhaCase c;
  const HostWeights w = make_weights(c);
  const MultiHeadAttention layer(c.config(), w.views);
  std::vector<float> x(1, 3.0f), y(1, 7.0f);
  KVCache cache(layer.cache_config(2, 4, DType::kFloat32));
  layer.forward(Tensor::contiguous(x.data(), DType::kFloat32, {2, 0, 40}),
                Tensor::contiguous(y.data(), DType::kFloat32, {2, 0, 40}), &cache);
  EXPECT_EQ(y[0], 7.0f);
  EXPECT_EQ(cache.lengths(), (std::vector<int64_t>{0, 0}));
}

// ---------------------------------------------------------------------------
// torch.nn.MultiheadAttention parity, on a case file written by
// tests/python/mha_torch_check.py (skipped unless QKV_MHA_TORCH_CASE names
// one; see that script for how to run it).
//
// File: "QKVMHA01", int64 batch, seq, embed, heads, bias, causal, then
// float32 little-endian arrays: x [batch, seq, embed], qkv_weight [embed,
// 3 * embed], qkv_bias [3 * embed] (if bias), out_weight [embed, embed],
// out_bias [embed] (if bias), y [batch, seq, embed] (torch's output).
TEST(MultiHeadAttention, MatchesTorchOnACaseFile) {
  const char* path = std::getenv("QKV_MHA_TORCH_CASE");
  if (path == nullptr) GTEST_SKIP() << "set QKV_MHA_TORCH_CASE (tests/python/mha_torch_check.py)";
  std::FILE* f = std::fopen(path, "rb");
  ASSERT_NE(f, nullptr) << path;
  char magic[8];
  int64_t head[6];
  ASSERT_EQ(std::fread(magic, 1, 8, f), 8u);
  ASSERT_EQ(std::memcmp(magic, "QKVMHA01", 8), 0) << path << " is not a case file";
  ASSERT_EQ(std::fread(head, 8, 6, f), 6u);
  const int64_t batch = head[0], seq = head[1], embed = head[2], heads = head[3];
  const bool bias = head[4] != 0, causal = head[5] != 0;
  const auto read = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    EXPECT_EQ(std::fread(v.data(), 4, v.size(), f), v.size());
    return v;
  };
  const std::vector<float> x = read(batch * seq * embed);
  const std::vector<float> qkv_w = read(embed * 3 * embed);
  const std::vector<float> qkv_b = bias ? read(3 * embed) : std::vector<float>();
  const std::vector<float> out_w = read(embed * embed);
  const std::vector<float> out_b = bias ? read(embed) : std::vector<float>();
  const std::vector<float> want = read(batch * seq * embed);
  std::fclose(f);

  MhaConfig config;
  config.hidden = embed, config.heads = heads, config.bias = bias, config.causal = causal;
  MhaWeights weights;
  weights.qkv_weight = Tensor::contiguous(qkv_w.data(), DType::kFloat32, {embed, 3 * embed});
  weights.out_weight = Tensor::contiguous(out_w.data(), DType::kFloat32, {embed, embed});
  if (bias) {
    weights.qkv_bias = Tensor::contiguous(qkv_b.data(), DType::kFloat32, {3 * embed});
    weights.out_bias = Tensor::contiguous(out_b.data(), DType::kFloat32, {embed});
  }
  const MultiHeadAttention layer(config, weights);
  std::vector<float> y(want.size());
  layer.forward(Tensor::contiguous(x.data(), DType::kFloat32, {batch, seq, embed}),
                Tensor::contiguous(y.data(), DType::kFloat32, {batch, seq, embed}));
  // Two float32 computations: each within ~1e-5 of the exact layer (see
  // kLayerTolerance); torch's matmuls may use longer sums, hence 1e-4.
  MhaCase c;
  c.batch = batch, c.seq = seq, c.hidden = embed, c.heads = c.kv_heads = heads;
  EXPECT_TRUE(layer_close(c, std::string("torch ") + path, y,
                          std::vector<double>(want.begin(), want.end()), 1e-4));
}

}  // namespace
}  // namespace qkv::test
