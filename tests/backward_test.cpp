// attention_backward: the float64 oracle against finite differences of the
// forward oracle, then the tiled kernel against the oracle on every SIMD
// target, every option, each storage type, edge cases and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/flash_forward.h"
#include "qkv/qkv.h"
#include "runtime/half.h"
#include "test_util.h"

namespace qkv::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// One storage-typed [batch, seq, heads, dim] tensor: float32 values, and
// their 16-bit twin when the case stores float16 or bfloat16.
struct Typed {
  HostTensor<float> f32;
  HostTensor<uint16_t> f16;
  DType dtype = DType::kFloat32;

  Typed(int64_t b, int64_t s, int64_t h, int64_t dim, Layout layout, DType t) : dtype(t) {
    f32 = make_bshd(b, s, h, dim, layout, kNaN);
    if (t != DType::kFloat32) f16 = f32.like<uint16_t>(t, 0x7e00);
  }
  Tensor view() const { return dtype == DType::kFloat32 ? f32.view() : f16.view(); }
  // Dense float values of the view (16-bit storage widened).
  std::vector<float> dense() const {
    if (dtype == DType::kFloat32) return f32.dense();
    std::vector<float> out;
    for (uint16_t bits : f16.dense()) {
      out.push_back(dtype == DType::kFloat16 ? internal::f32_from_f16(bits)
                                             : internal::f32_from_bf16(bits));
    }
    return out;
  }
  bool padding_intact() const { return f32.padding_intact() && f16.padding_intact(); }
  // Fills the view with values uniform in [-1, 1], rounded to the storage type.
  void fill_random(std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-1, 1);
    for (int64_t i = 0; i < f32.numel(); ++i) {
      const float x = round_to(dtype, u(rng));
      f32.at_flat(i) = x;
      if (dtype == DType::kFloat16) f16.at_flat(i) = internal::f16_from_f32(x);
      if (dtype == DType::kBFloat16) f16.at_flat(i) = internal::bf16_from_f32(x);
    }
  }
};

struct Gradients {
  std::vector<float> dq, dk, dv, dsinks;
};

// The backward call of a workload whose forward has run: dout seeded random,
// gradients in `layout` (padding checked).
class Backward {
 public:
  explicit Backward(const Case& c, Layout layout = Layout::kBshd)
      : case_(c),
        dout_(c.batch(), c.seq_q(), c.heads(), c.head_dim_v(), Layout::kBshd, c.dtype()),
        dq_(c.batch(), c.seq_q(), c.heads(), c.head_dim(), layout, c.dtype()),
        dk_(c.batch(), c.seq_kv(), c.kv_heads(), c.head_dim(), layout, c.dtype()),
        dv_(c.batch(), c.seq_kv(), c.kv_heads(), c.head_dim_v(), layout, c.dtype()) {
    std::mt19937 rng(c.seed() * 7919u + 17u);
    dout_.fill_random(rng);
  }

  AttentionBackwardParams params(Workload& w, Backend backend) {
    AttentionBackwardParams p;
    p.forward = w.params(backend);
    p.dout = dout_.view();
    p.dq = dq_.view();
    p.dk = dk_.view();
    p.dv = dv_.view();
    dsinks_.assign(static_cast<size_t>(case_.heads()), kNaN);
    if (case_.has_sinks()) p.dsinks = Tensor::contiguous(dsinks_.data(), DType::kFloat32, {case_.heads()});
    return p;
  }

  // Runs the forward (flash) for o and lse, then the backward with `backend`.
  Gradients run(Workload& w, Backend backend) {
    w.run(Backend::kFlash);
    attention_backward(params(w, backend));
    EXPECT_TRUE(dq_.padding_intact() && dk_.padding_intact() && dv_.padding_intact())
        << "a gradient was written outside its view\n  " << case_.describe();
    Gradients g{dq_.dense(), dk_.dense(), dv_.dense(), {}};
    if (case_.has_sinks()) g.dsinks = dsinks_;
    for (const auto* t : {&g.dq, &g.dk, &g.dv, &g.dsinks}) {
      for (float x : *t) {
        if (!std::isfinite(x)) {
          ADD_FAILURE() << "a gradient is not finite: " << x << "\n  " << case_.describe();
          return g;
        }
      }
    }
    return g;
  }

  const Typed& dout() const { return dout_; }
  // Every gradient element still NaN, as before any call.
  bool untouched() const {
    for (const Typed* t : {&dq_, &dk_, &dv_}) {
      for (float x : t->dense()) {
        if (!std::isnan(x)) return false;
      }
    }
    return std::all_of(dsinks_.begin(), dsinks_.end(), [](float x) { return std::isnan(x); });
  }

 private:
  Case case_;
  Typed dout_, dq_, dk_, dv_;
  std::vector<float> dsinks_;
};

double max_abs(const std::vector<float>& x) {
  double m = 0;
  for (float e : x) m = std::max(m, static_cast<double>(std::fabs(e)));
  return m;
}

// The tolerance of a tiled gradient against the oracle's, per tensor:
//
//   max |tiled - oracle| <= r * max|oracle| + a * A
//   r = 2e-5 + 8 u + 8 eps |s|max     a = 16 eps + 4 u
//
// eps = 2^-24 (float32), u = the unit roundoff of the storage type (0 for
// float32), |s|max the largest |scale q.k| of the case.
//   r: the rounding of the float32 sums (1e-7..5e-6 measured) with room,
//   the output's rounding to float16 / bfloat16, and the scores' own
//   rounding: an error of eps |s| in a score is the same relative error in
//   its probability (as in the forward, large logits cost accuracy).
//   a * A: dS = P (dP - D) subtracts two numbers of size up to
//   C = head_dim_v max|dout| max|v| that cancel where one key dominates a
//   row (with exactly one visible key the true gradient is 0, the float32
//   one ~eps C; D also reads o rounded to the storage type): an absolute
//   error of eps C per score, carried to dq by scale k (A = |scale| max|k|
//   C), to dk by scale q over the rows of a kv head (A = |scale| max|q| C
//   sqrt(rows), the rows' errors independent), to dsinks over the rows (A =
//   C sqrt(rows)); dv has no such difference (A = 0).
// A wrong formula, mask or tile edge is off by a good part of max|oracle|.
struct GradientTolerance {
  double r = 0, a = 0;
  double dq = 0, dk = 0, dsinks = 0;  // A of each tensor

  GradientTolerance(Workload& w, const Typed& dout) {
    const Case& c = w.spec();
    const double eps = std::ldexp(1.0, -24);
    const double u = c.dtype() == DType::kFloat32 ? 0.0 : unit_roundoff(c.dtype());
    const double scale = c.has_scale() ? c.scale() : 1.0 / std::sqrt(static_cast<double>(c.head_dim()));
    double max_logit = 0;
    for (int64_t b = 0; b < c.batch(); ++b) {
      for (int64_t h = 0; h < c.heads(); ++h) {
        const int64_t kvh = h / (c.heads() / c.kv_heads());
        for (int64_t i = 0; i < c.seq_q(); ++i) {
          for (int64_t j = 0; j < c.seq_kv(); ++j) {
            double dot = 0;
            for (int64_t d = 0; d < c.head_dim(); ++d) dot += w.q().at({b, i, h, d}) * w.k().at({b, j, kvh, d});
            max_logit = std::max(max_logit, std::fabs(scale * dot));
          }
        }
      }
    }
    r = 2e-5 + 8 * u + 8 * eps * max_logit;
    a = 16 * eps + 4 * u;
    const double cancel = static_cast<double>(c.head_dim_v()) * max_abs(dout.dense()) * max_abs(w.v().dense());
    const double rows = std::sqrt(static_cast<double>(c.seq_q() * (c.heads() / c.kv_heads())));
    dq = std::fabs(scale) * max_abs(w.k().dense()) * cancel;
    dk = std::fabs(scale) * max_abs(w.q().dense()) * cancel * rows;
    dsinks = cancel * rows * c.batch();
  }

  testing::AssertionResult check(const std::vector<float>& got, const std::vector<float>& ref,
                                 double absolute, const char* name) const {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double e = std::fabs(static_cast<double>(got[i]) - ref[i]);
      if (e > worst) worst = e, at = i;
    }
    const double budget = r * max_abs(ref) + a * absolute;
    if (worst <= budget) return testing::AssertionSuccess();
    return testing::AssertionFailure() << name << "[" << at << "] = " << got[at] << ", oracle "
                                       << ref[at] << ": error " << worst << " over the budget "
                                       << budget << " (max|oracle| " << max_abs(ref) << ")";
  }
};

void expect_tiled_matches_oracle(const Case& c, Layout layout = Layout::kBshd) {
  Workload w(c);
  Backward oracle(c, layout);
  const Gradients ref = oracle.run(w, Backend::kReference);
  const GradientTolerance tol(w, oracle.dout());
  for (int64_t target : internal::flash_targets()) {
    internal::flash_force_target(target);
    Backward tiled(c, layout);
    const Gradients got = tiled.run(w, Backend::kFlash);
    const std::string where = std::string(internal::flash_target_name(target)) + ": " + c.describe();
    EXPECT_TRUE(tol.check(got.dq, ref.dq, tol.dq, "dq")) << where;
    EXPECT_TRUE(tol.check(got.dk, ref.dk, tol.dk, "dk")) << where;
    EXPECT_TRUE(tol.check(got.dv, ref.dv, 0.0, "dv")) << where;
    if (c.has_sinks()) EXPECT_TRUE(tol.check(got.dsinks, ref.dsinks, tol.dsinks, "dsinks")) << where;
  }
  internal::flash_force_target(0);
}

// ---------------------------------------------------------------------------
// The oracle against central differences of the forward oracle.

// L = sum dout . o, o from the float64 forward (rounded to float32).
double loss(Workload& w, const std::vector<float>& dout) {
  const Result r = w.run(Backend::kReference);
  double l = 0;
  for (size_t i = 0; i < r.o.size(); ++i) l += static_cast<double>(dout[i]) * r.o[i];
  return l;
}

// dL/dx for every element x of `t` by central differences, step h.
std::vector<float> numeric_gradient(Workload& w, HostTensor<float>& t,
                                    const std::vector<float>& dout, float h) {
  std::vector<float> g;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float x = t.at_flat(i);
    t.at_flat(i) = x + h;
    const double up = loss(w, dout);
    t.at_flat(i) = x - h;
    const double down = loss(w, dout);
    t.at_flat(i) = x;
    g.push_back(static_cast<float>((up - down) / (2 * static_cast<double>(h))));
  }
  return g;
}

void expect_oracle_matches_differences(const Case& c) {
  Workload w(c);
  Backward backward(c);
  const Gradients g = backward.run(w, Backend::kReference);
  const std::vector<float> dout = backward.dout().dense();
  // Step 1e-2: truncation error ~ h^2 |f'''| ~ 1e-5, float32 rounding of o
  // ~ 1e-7 * |L| / h ~ 1e-5; a wrong formula is off by far more than 1e-3.
  const float h = 1e-2f;
  const auto expect_close = [&](const std::vector<float>& numeric, const std::vector<float>& analytic,
                                const char* name) {
    ASSERT_EQ(numeric.size(), analytic.size());
    double largest = 0;
    for (size_t i = 0; i < numeric.size(); ++i) {
      largest = std::max(largest, static_cast<double>(std::fabs(analytic[i])));
      EXPECT_NEAR(numeric[i], analytic[i], 1e-3) << name << "[" << i << "], " << c.describe();
    }
    EXPECT_GT(largest, 1e-2) << name << " is all (near) zero: the check would be vacuous, " << c.describe();
  };
  expect_close(numeric_gradient(w, w.q(), dout, h), g.dq, "dq");
  expect_close(numeric_gradient(w, w.k(), dout, h), g.dk, "dk");
  expect_close(numeric_gradient(w, w.v(), dout, h), g.dv, "dv");
  if (c.has_sinks()) expect_close(numeric_gradient(w, w.sinks(), dout, h), g.dsinks, "dsinks");
}

Case Small() { return Case().batch(2).seq_q(4).seq_kv(5).heads(2).kv_heads(1).head_dim(3).head_dim_v(2); }

TEST(BackwardOracle, MatchesFiniteDifferences) {
  expect_oracle_matches_differences(Small().seed(1));
  expect_oracle_matches_differences(Small().seed(2).heads(4).kv_heads(2));
}

TEST(BackwardOracle, MatchesFiniteDifferencesWithEveryOption) {
  expect_oracle_matches_differences(Small().seed(3).causal());
  expect_oracle_matches_differences(Small().seed(4).causal(CausalAlign::kTopLeft));
  // seq_q > seq_kv, bottom-right: the first rows see nothing.
  expect_oracle_matches_differences(Small().seed(5).seq_q(6).seq_kv(3).causal());
  expect_oracle_matches_differences(Small().seed(6).window(1, 0));
  expect_oracle_matches_differences(Small().seed(7).softcap(0.5f));
  expect_oracle_matches_differences(Small().seed(8).alibi());
  expect_oracle_matches_differences(Small().seed(9).sinks());
  expect_oracle_matches_differences(Small().seed(10).sinks().causal().seq_q(6).seq_kv(3));
  expect_oracle_matches_differences(Small().seed(11).bool_mask({4, 5}, 0.6));
  expect_oracle_matches_differences(Small().seed(12).float_mask({2, 1, 4, 5}, 0.2));
  expect_oracle_matches_differences(Small().seed(13).scale(1.7f).softcap(2.0f).alibi_per_batch());
}

// ---------------------------------------------------------------------------
// The tiled kernel against the oracle.

TEST(Backward, MatchesTheOracle) {
  expect_tiled_matches_oracle(Case().seq(37).heads(4).kv_heads(2).head_dim(16).seed(1));
  expect_tiled_matches_oracle(Case().seq(1).heads(1).head_dim(1).seed(2));
  expect_tiled_matches_oracle(Case().seq_q(1).seq_kv(300).heads(8).kv_heads(1).head_dim(64).seed(3));
}

TEST(Backward, ChunksAndBlocksAcrossTheirEdges) {
  // More than one chunk of rows (96) and block of keys (256), odd sizes.
  expect_tiled_matches_oracle(Case().seq_q(131).seq_kv(300).heads(4).kv_heads(1).head_dim(33).head_dim_v(17).seed(4));
  expect_tiled_matches_oracle(Case().seq_q(97).seq_kv(513).heads(3).kv_heads(3).head_dim(8).causal().seed(5));
  expect_tiled_matches_oracle(Case().seq_q(200).seq_kv(129).heads(2).kv_heads(1).head_dim(128).causal().seed(6));
}

TEST(Backward, EveryOption) {
  const Case base = Case().batch(2).seq_q(45).seq_kv(70).heads(4).kv_heads(2).head_dim(24);
  expect_tiled_matches_oracle(Case(base).causal().seed(10));
  expect_tiled_matches_oracle(Case(base).causal(CausalAlign::kTopLeft).seed(11));
  expect_tiled_matches_oracle(Case(base).window(9, 3).seed(12));
  expect_tiled_matches_oracle(Case(base).softcap(1.0f).seed(13));
  expect_tiled_matches_oracle(Case(base).alibi().seed(14));
  expect_tiled_matches_oracle(Case(base).alibi_per_batch().causal().seed(15));
  expect_tiled_matches_oracle(Case(base).sinks().seed(16));
  expect_tiled_matches_oracle(Case(base).bool_mask({2, 1, 45, 70}, 0.5).seed(17));
  expect_tiled_matches_oracle(Case(base).float_mask({45, 70}, 0.2).seed(18));
  expect_tiled_matches_oracle(Case(base).float_mask({2, 4, 45, 70}, 0.1).seed(24));  // one per head
  expect_tiled_matches_oracle(Case(base).scale(-0.4f).softcap(5.0f).sinks().window(20, -1).seed(19));
}

TEST(Backward, StorageTypes) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    expect_tiled_matches_oracle(Case().seq(100).heads(4).kv_heads(2).head_dim(64).dtype(t).seed(20));
    expect_tiled_matches_oracle(Case().seq(61).heads(2).head_dim(40).causal().sinks().dtype(t).seed(21));
  }
}

TEST(Backward, StridedGradients) {
  expect_tiled_matches_oracle(Case().seq(40).heads(4).kv_heads(2).head_dim(16).layout(Layout::kBhsd).seed(22),
                              Layout::kBhsd);
  expect_tiled_matches_oracle(Case().seq(40).heads(2).head_dim(16).layout(Layout::kPadded).seed(23),
                              Layout::kPadded);
}

TEST(Backward, EmptyRowsGiveZerosNotNaN) {
  // seq_q > seq_kv under a bottom-right causal mask: the first 20 rows see
  // no key; a window of (0, 0) past the keys; a mask row of only false.
  expect_tiled_matches_oracle(Case().seq_q(30).seq_kv(10).heads(2).head_dim(8).causal().sinks().seed(30));
  expect_tiled_matches_oracle(
      Case().seq(20).heads(2).head_dim(8).mask_fn("rows 3 and 7 empty", DType::kBool,
                                                   [](int64_t, int64_t, int64_t i, int64_t j) {
                                                     return (i == 3 || i == 7) ? 0.0f : (j + i) % 3 != 0;
                                                   }).seed(31));
  Case c = Case().seq_q(30).seq_kv(10).heads(2).head_dim(8).causal().seed(32);
  Workload w(c);
  Backward b(c);
  const Gradients g = b.run(w, Backend::kFlash);
  // Rows 0..19 see nothing: their dq is exactly 0.
  for (int64_t i = 0; i < 20 * 2 * 8; ++i) ASSERT_EQ(g.dq[i], 0.0f) << "dq element " << i;
}

TEST(Backward, EmptyDimensions) {
  // No keys: dq is 0; no queries: dk and dv are 0; no batch: nothing.
  for (const Case& c : {Case().seq_q(5).seq_kv(0).sinks().allow_all_empty(), Case().seq_q(0).seq_kv(7).sinks(),
                        Case().batch(0).allow_all_empty()}) {
    Workload w(c);
    Backward b(c);
    const Gradients g = b.run(w, Backend::kFlash);
    for (const auto* t : {&g.dq, &g.dk, &g.dv, &g.dsinks}) {
      for (float x : *t) ASSERT_EQ(x, 0.0f) << c.describe();
    }
  }
}

TEST(Backward, HugeLogits) {
  expect_tiled_matches_oracle(Case().seq(50).heads(2).head_dim(16).logits(1e4f).seed(40));
  expect_tiled_matches_oracle(Case().seq(50).heads(2).head_dim(16).logits(300.0f).causal().seed(41));
}

TEST(Backward, RandomCombinations) {
  std::mt19937 rng(777);
  const auto pick = [&](auto... values) {
    const std::vector<std::common_type_t<decltype(values)...>> v = {values...};
    return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
  };
  const auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  const auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (uint32_t n = 0; n < 40; ++n) {
    Case c;
    const int64_t b = uniform(1, 2), sq = uniform(1, 60), sk = uniform(1, 150);
    const int64_t hk = pick(1, 2), group = pick(1, 2, 4);
    c.batch(b).seq_q(sq).seq_kv(sk).heads(hk * group).kv_heads(hk).head_dim(pick(1, 7, 16, 64, 80));
    if (chance(0.3)) c.head_dim_v(pick(1, 5, 48));
    if (chance(0.4)) c.causal(chance(0.5) ? CausalAlign::kBottomRight : CausalAlign::kTopLeft);
    if (chance(0.3)) c.window(pick(-1, 0, 5, 20), pick(-1, 0, 9));
    if (chance(0.2)) c.softcap(pick(1.0f, 10.0f));
    if (chance(0.3)) chance(0.5) ? c.alibi() : c.alibi_per_batch();
    if (chance(0.3)) c.sinks();
    if (chance(0.3)) chance(0.5) ? c.bool_mask({b, hk * group, sq, sk}, 0.6) : c.float_mask({sq, sk}, 0.1);
    if (chance(0.3)) c.dtype(pick(DType::kFloat16, DType::kBFloat16));
    if (chance(0.3)) c.threads(static_cast<int>(uniform(1, 3)));
    c.seed(9000 + n).allow_all_empty();
    expect_tiled_matches_oracle(c);
  }
}

TEST(Backward, SameBitsOnEveryRunOfAThreadCount) {
  const Case c = Case().seq(300).heads(4).kv_heads(1).head_dim(32).causal().threads(2).seed(50);
  Workload w(c);
  Backward first(c), second(c);
  const Gradients a = first.run(w, Backend::kFlash);
  const Gradients b = second.run(w, Backend::kFlash);
  EXPECT_TRUE(bitwise_equal(a.dq, b.dq) && bitwise_equal(a.dk, b.dk) && bitwise_equal(a.dv, b.dv));
}

// ---------------------------------------------------------------------------
// Bad input: a clear error, nothing written.

TEST(Backward, BadInputIsRejectedAndWritesNothing) {
  const Case c = Case().seq(6).heads(2).head_dim(4).sinks();
  Workload w(c);
  w.run(Backend::kFlash);
  Backward b(c);
  const auto expect_error = [&](const std::string& needle, auto&& edit) {
    AttentionBackwardParams p = b.params(w, Backend::kFlash);
    edit(p);
    try {
      attention_backward(p);
      ADD_FAILURE() << "no error; expected one naming " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_TRUE(b.untouched()) << "a gradient was written before the error naming " << needle;
  };
  std::vector<float> small(100, 0.0f);
  std::vector<uint16_t> half(100, 0);
  expect_error("forward.lse", [](AttentionBackwardParams& p) { p.forward.lse = Tensor(); });
  expect_error("dout", [&](AttentionBackwardParams& p) {
    p.dout = Tensor::contiguous(small.data(), DType::kFloat32, {1, 6, 2, 3});
  });
  expect_error("dq dtype", [&](AttentionBackwardParams& p) {
    p.dq = Tensor::contiguous(half.data(), DType::kFloat16, {1, 6, 2, 4});
  });
  expect_error("dk", [&](AttentionBackwardParams& p) { p.dk = Tensor(); });
  expect_error("dsinks", [&](AttentionBackwardParams& p) {
    p.dsinks = Tensor::contiguous(small.data(), DType::kFloat32, {3});
  });
  expect_error("forward.sinks", [&](AttentionBackwardParams& p) { p.forward.sinks = Tensor(); });
  expect_error("kv_heads", [&](AttentionBackwardParams& p) {
    p.forward.k = Tensor::contiguous(small.data(), DType::kFloat32, {1, 6, 3, 4});
    p.forward.v = Tensor::contiguous(small.data(), DType::kFloat32, {1, 6, 3, 4});
  });
}

}  // namespace
}  // namespace qkv::test
