// The oracle (Backend::kReference) against cases small enough to check by
// hand, a few invariants, and an independent implementation (the naive
// float32 helper, written from the semantics table in attention.h).
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace qkv::test {
namespace {

constexpr double kTight = 1e-6;  // float32 rounding of an O(1) result, with room

// With scale 0 (and no bias) every visible key scores 0, so each row is the
// plain mean of the visible V rows and lse = log(count). `sees(b, h, i, j)`
// states visibility from first principles; checks every row of `w`.
void expect_uniform_over_visible(Workload& w, const Result& r,
                                 const std::function<bool(int64_t, int64_t, int64_t, int64_t)>& sees) {
  const Case& c = w.spec();
  const int64_t group = c.heads() / c.kv_heads();
  for (int64_t b = 0; b < c.batch(); ++b) {
    for (int64_t h = 0; h < c.heads(); ++h) {
      for (int64_t i = 0; i < c.seq_q(); ++i) {
        SCOPED_TRACE(testing::Message() << "row b=" << b << " h=" << h << " i=" << i << "\n  "
                                        << c.describe());
        std::vector<double> mean(static_cast<size_t>(c.head_dim_v()), 0.0);
        int64_t count = 0;
        for (int64_t j = 0; j < c.seq_kv(); ++j) {
          if (!sees(b, h, i, j)) continue;
          ++count;
          for (int64_t d = 0; d < c.head_dim_v(); ++d) mean[d] += w.v().at({b, j, h / group, d});
        }
        for (int64_t d = 0; d < c.head_dim_v(); ++d) {
          const double want = count ? mean[d] / count : 0.0;
          EXPECT_NEAR(o_at(c, r, b, i, h, d), want, kTight) << "d=" << d;
        }
        if (count == 0) {
          EXPECT_EQ(lse_at(c, r, b, h, i), kNegInf);
        } else {
          EXPECT_NEAR(lse_at(c, r, b, h, i), std::log(static_cast<double>(count)), kTight);
        }
      }
    }
  }
}

TEST(Reference, OneKeyOutputsItsValueRowAndLseIsTheScore) {
  const Case c = Case().batch(2).seq_q(3).seq_kv(1).heads(4).kv_heads(2).head_dim(7).head_dim_v(5);
  Workload w(c);
  const Result r = w.run(Backend::kReference);
  const float scale = 1 / std::sqrt(7.0f);  // the default, rounded to float as the API does
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t i = 0; i < 3; ++i) {
      for (int64_t h = 0; h < 4; ++h) {
        for (int64_t d = 0; d < 5; ++d) {
          EXPECT_EQ(o_at(c, r, b, i, h, d), w.v().at({b, 0, h / 2, d}));
        }
        double dot = 0;
        for (int64_t d = 0; d < 7; ++d)
          dot += double{w.q().at({b, i, h, d})} * w.k().at({b, 0, h / 2, d});
        EXPECT_NEAR(lse_at(c, r, b, h, i), scale * dot, kTight);
      }
    }
  }
}

TEST(Reference, TwoKeysWithKnownScores) {
  // Scores 0 and ln 3: weights 1/4 and 3/4.
  const Case c = Case().seq_q(1).seq_kv(2).heads(1).head_dim(1).scale(1.0f);
  Workload w(c);
  w.q().at({0, 0, 0, 0}) = 1;
  w.k().at({0, 0, 0, 0}) = 0;
  w.k().at({0, 1, 0, 0}) = std::log(3.0f);
  w.v().at({0, 0, 0, 0}) = 4;
  w.v().at({0, 1, 0, 0}) = 8;
  const Result r = w.run(Backend::kReference);
  EXPECT_NEAR(r.o[0], 7.0, kTight);
  EXPECT_NEAR(r.lse[0], std::log(4.0), kTight);
}

TEST(Reference, ScaleZeroGivesUniformAttention) {
  const Case c =
      Case().batch(2).seq_q(4).seq_kv(5).heads(4).kv_heads(2).head_dim(8).head_dim_v(3).scale(0);
  Workload w(c);
  expect_uniform_over_visible(w, w.run(Backend::kReference),
                              [](int64_t, int64_t, int64_t, int64_t) { return true; });
}

TEST(Reference, CausalRows) {
  for (const auto& [sq, sk] : {std::pair{4, 4}, {3, 5}, {5, 3}}) {
    const Case br = Case().seq_q(sq).seq_kv(sk).scale(0).causal(CausalAlign::kBottomRight);
    Workload w_br(br);
    expect_uniform_over_visible(
        w_br, w_br.run(Backend::kReference),
        [&, d = sk - sq](int64_t, int64_t, int64_t i, int64_t j) { return j <= i + d; });
    const Case tl = Case().seq_q(sq).seq_kv(sk).scale(0).causal(CausalAlign::kTopLeft);
    Workload w_tl(tl);
    expect_uniform_over_visible(w_tl, w_tl.run(Backend::kReference),
                                [](int64_t, int64_t, int64_t i, int64_t j) { return j <= i; });
  }
}

TEST(Reference, SeqQGreaterThanSeqKvBottomRightEmptiesTheFirstRows) {
  // diag = 3 - 5 = -2: rows 0 and 1 see nothing; row 2 sees key 0, row 4 keys 0..2.
  const Case c = Case().seq_q(5).seq_kv(3).scale(0).causal();
  Workload w(c);
  const Result r = w.run(Backend::kReference);
  const int64_t expected_count[5] = {0, 0, 1, 2, 3};
  expect_uniform_over_visible(w, r, [&](int64_t, int64_t, int64_t i, int64_t j) {
    return j < expected_count[i];
  });
  EXPECT_EQ(lse_at(c, r, 0, 0, 0), kNegInf);
  EXPECT_EQ(lse_at(c, r, 0, 1, 1), kNegInf);
  EXPECT_EQ(lse_at(c, r, 0, 0, 2), 0.0f);  // log(1)
}

TEST(Reference, Window) {
  for (const auto& [sq, sk] : {std::pair{6, 6}, {3, 6}, {6, 3}}) {
    for (const auto& [left, right] :
         {std::pair<int64_t, int64_t>{1, 0}, {0, 2}, {2, -1}, {-1, 1}, {0, 0}, {-1, -1}}) {
      const Case c = Case().seq_q(sq).seq_kv(sk).scale(0).window(left, right);
      Workload w(c);
      const int64_t diag = sk - sq;
      expect_uniform_over_visible(w, w.run(Backend::kReference),
                                  [&, l = left, r = right](int64_t, int64_t, int64_t i, int64_t j) {
                                    return (l < 0 || j >= i + diag - l) &&
                                           (r < 0 || j <= i + diag + r);
                                  });
    }
  }
}

TEST(Reference, WindowAndCausalTopLeftCombine) {
  // The window is aligned bottom-right even when causal is top-left.
  const Case c = Case().seq_q(3).seq_kv(6).scale(0).window(1, 1).causal(CausalAlign::kTopLeft);
  Workload w(c);
  expect_uniform_over_visible(w, w.run(Backend::kReference),
                              [](int64_t, int64_t, int64_t i, int64_t j) {
                                return j >= i + 3 - 1 && j <= i + 3 + 1 && j <= i;
                              });
}

TEST(Reference, Alibi) {
  // Scale 0, one query, three keys: s_j = -slope * |2 - j| (diag = 2).
  for (int rank : {1, 2}) {
    Case c = Case().batch(2).seq_q(1).seq_kv(3).heads(2).head_dim(4).head_dim_v(2).scale(0);
    rank == 1 ? c.alibi() : c.alibi_per_batch();
    Workload w(c);
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t h = 0; h < 2; ++h) {
        const float slope = 0.25f + 0.5f * h + (rank == 2 ? 0.125f * b : 0.0f);
        if (rank == 1 && b == 0) w.alibi().at({h}) = slope;
        if (rank == 2) w.alibi().at({b, h}) = slope;
      }
    }
    const Result r = w.run(Backend::kReference);
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t h = 0; h < 2; ++h) {
        const double slope = 0.25 + 0.5 * h + (rank == 2 ? 0.125 * b : 0.0);
        const double weight[3] = {std::exp(-2 * slope), std::exp(-slope), 1};
        const double sum = weight[0] + weight[1] + weight[2];
        for (int64_t d = 0; d < 2; ++d) {
          double want = 0;
          for (int64_t j = 0; j < 3; ++j) want += weight[j] * w.v().at({b, j, h, d});
          EXPECT_NEAR(o_at(c, r, b, 0, h, d), want / sum, kTight) << "rank " << rank;
        }
        EXPECT_NEAR(lse_at(c, r, b, h, 0), std::log(sum), kTight) << "rank " << rank;
      }
    }
  }
}

TEST(Reference, SinkAddsExpSinkToTheDenominator) {
  // Two keys scoring 0 and a sink of ln 2: denominator 1 + 1 + 2 = 4.
  const Case c = Case().seq_q(2).seq_kv(2).heads(2).head_dim(3).head_dim_v(2).scale(0).sinks();
  Workload w(c);
  w.sinks().at({0}) = std::log(2.0f);
  w.sinks().at({1}) = -100.0f;  // negligible: plain mean
  const Result r = w.run(Backend::kReference);
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t d = 0; d < 2; ++d) {
      const double sum_v = double{w.v().at({0, 0, 0, d})} + w.v().at({0, 1, 0, d});
      EXPECT_NEAR(o_at(c, r, 0, i, 0, d), sum_v / 4, kTight);
      const double sum_v1 = double{w.v().at({0, 0, 1, d})} + w.v().at({0, 1, 1, d});
      EXPECT_NEAR(o_at(c, r, 0, i, 1, d), sum_v1 / 2, kTight);
    }
    EXPECT_NEAR(lse_at(c, r, 0, 0, i), std::log(4.0), kTight);
    EXPECT_NEAR(lse_at(c, r, 0, 1, i), std::log(2.0), kTight);
  }
}

TEST(Reference, SinkLargerThanEveryScore) {
  // sink 50 against a score of 0: o = v * e^-50 (tiny but not zero), lse ~ 50.
  const Case c = Case().seq_q(1).seq_kv(1).heads(1).head_dim(2).scale(0).sinks();
  Workload w(c);
  w.sinks().at({0}) = 50;
  w.v().at({0, 0, 0, 0}) = 1;
  const Result r = w.run(Backend::kReference);
  EXPECT_NEAR(r.o[0] / std::exp(-50.0), 1.0, 1e-6);
  EXPECT_NEAR(r.lse[0], 50.0, 1e-5);
}

TEST(Reference, BoolMask) {
  const auto pattern = [](int64_t b, int64_t h, int64_t i, int64_t j) {
    return (i + 2 * j + h + b) % 3 != 0 ? 1.0f : 0.0f;
  };
  const Case c = Case().batch(2).seq_q(4).seq_kv(6).heads(2).scale(0).mask_fn(
      "(i+2j+h+b)%3", DType::kBool, pattern);
  Workload w(c);
  expect_uniform_over_visible(
      w, w.run(Backend::kReference),
      [&](int64_t b, int64_t h, int64_t i, int64_t j) { return pattern(b, h, i, j) != 0; });
}

TEST(Reference, FloatMask) {
  // Scale 0; additive mask 0, ln 3, -inf: weights 1/4, 3/4, 0.
  const Case c = Case().seq_q(1).seq_kv(3).heads(1).head_dim(2).head_dim_v(1).scale(0).float_mask({3});
  Workload w(c);
  w.float_mask().at({0}) = 0;
  w.float_mask().at({1}) = std::log(3.0f);
  w.float_mask().at({2}) = kNegInf;
  w.v().at({0, 0, 0, 0}) = 4;
  w.v().at({0, 1, 0, 0}) = 8;
  w.v().at({0, 2, 0, 0}) = 1000;
  const Result r = w.run(Backend::kReference);
  EXPECT_NEAR(r.o[0], 7.0, kTight);
  EXPECT_NEAR(r.lse[0], std::log(4.0), kTight);
}

TEST(Reference, SoftcapOfAHugeLogit) {
  // Raw scores 1e6, 0 and -1e6 capped at 30: 30, 0, -30.
  const Case c = Case().seq_q(1).seq_kv(3).heads(1).head_dim(1).scale(1).softcap(30);
  Workload w(c);
  w.q().at({0, 0, 0, 0}) = 1000;
  w.k().at({0, 0, 0, 0}) = 1000;
  w.k().at({0, 1, 0, 0}) = 0;
  w.k().at({0, 2, 0, 0}) = -1000;
  w.v().at({0, 0, 0, 0}) = 1;
  w.v().at({0, 1, 0, 0}) = 2;
  w.v().at({0, 2, 0, 0}) = 3;
  const Result r = w.run(Backend::kReference);
  const double e30 = std::exp(30.0), sum = e30 + 1 + 1 / e30;
  EXPECT_NEAR(r.o[0], (e30 + 2 + 3 / e30) / sum, kTight);
  EXPECT_NEAR(r.lse[0], std::log(sum), 1e-5);
}

TEST(Reference, RowWithNoVisibleKeyGivesZeroAndNegInfEvenWithASink) {
  for (bool sinks : {false, true}) {
    // Row 1 of every head is fully masked; the others see keys.
    Case c = Case().seq_q(3).seq_kv(4).heads(2).mask_fn(
        "row 1 empty", DType::kBool,
        [](int64_t, int64_t, int64_t i, int64_t) { return i == 1 ? 0.0f : 1.0f; });
    if (sinks) c.sinks();
    Workload w(c);
    const Result r = w.run(Backend::kReference);
    for (int64_t h = 0; h < 2; ++h) {
      for (int64_t d = 0; d < c.head_dim_v(); ++d) EXPECT_EQ(o_at(c, r, 0, 1, h, d), 0.0f);
      EXPECT_EQ(lse_at(c, r, 0, h, 1), kNegInf) << "sinks " << sinks;
      EXPECT_TRUE(std::isfinite(lse_at(c, r, 0, h, 0)));
      EXPECT_TRUE(std::isfinite(lse_at(c, r, 0, h, 2)));
    }
  }
}

TEST(Reference, FloatMaskOfAllMinusInfIsAnEmptyRow) {
  const Case c = Case().seq_q(2).seq_kv(3).heads(1).float_mask({2, 1}, 0, true);
  Workload w(c);
  w.float_mask().at({0, 0}) = kNegInf;  // row 0: every key -inf
  w.float_mask().at({1, 0}) = 0;
  const Result r = w.run(Backend::kReference);
  for (int64_t d = 0; d < c.head_dim_v(); ++d) EXPECT_EQ(o_at(c, r, 0, 0, 0, d), 0.0f);
  EXPECT_EQ(lse_at(c, r, 0, 0, 0), kNegInf);
  EXPECT_TRUE(std::isfinite(lse_at(c, r, 0, 0, 1)));
}

TEST(Reference, SeqKvZero) {
  for (bool sinks : {false, true}) {
    Case c = Case().batch(2).seq_q(3).seq_kv(0).heads(2).allow_all_empty();
    if (sinks) c.sinks();
    Workload w(c);
    const Result r = w.run(Backend::kReference);
    for (float x : r.o) EXPECT_EQ(x, 0.0f);
    for (float x : r.lse) EXPECT_EQ(x, kNegInf);
  }
}

TEST(Reference, SeqQZeroAndBatchZeroAreNoOps) {
  Workload w1(Case().seq_q(0).seq_kv(5));
  EXPECT_TRUE(w1.run(Backend::kReference).o.empty());
  Workload w2(Case().batch(0));
  EXPECT_TRUE(w2.run(Backend::kReference).o.empty());
}

TEST(Reference, StridedLayoutsGiveBitwiseTheSameResult) {
  // Workload fills inputs in logical order, so a layout changes only memory.
  const Case base =
      Case().batch(2).seq_q(5).seq_kv(9).heads(4).kv_heads(2).head_dim(6).head_dim_v(3).causal();
  const Result want = Workload(base).run(Backend::kReference);
  for (Layout l : {Layout::kBhsd, Layout::kPadded}) {
    Case c = base;
    c.layout(l).lse_layout(l);
    const Result got = Workload(c).run(Backend::kReference);
    EXPECT_EQ(got.o, want.o) << layout_name(l);
    EXPECT_EQ(got.lse, want.lse) << layout_name(l);
  }
}

TEST(Reference, HalfStorageRoundsTheFloat32Result) {
  // On the same (rounded) input values, float16/bfloat16 storage changes
  // only the final rounding of o; lse (always float32) is unchanged.
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const Case c = Case().batch(2).seq_q(7).seq_kv(19).heads(4).kv_heads(2).head_dim(9).head_dim_v(6)
                       .causal().sinks().layout(Layout::kPadded);
    Workload half(Case(c).dtype(dtype));
    Workload full(c);
    for (int64_t i = 0; i < full.q().numel(); ++i) full.q().at_flat(i) = half.q().at_flat(i);
    for (int64_t i = 0; i < full.k().numel(); ++i) full.k().at_flat(i) = half.k().at_flat(i);
    for (int64_t i = 0; i < full.v().numel(); ++i) full.v().at_flat(i) = half.v().at_flat(i);
    const Result h = half.run(Backend::kReference), f = full.run(Backend::kReference);
    ASSERT_EQ(h.o.size(), f.o.size());
    int64_t changed = 0;
    for (size_t e = 0; e < f.o.size(); ++e) {
      EXPECT_EQ(h.o[e], round_to(dtype, f.o[e])) << dtype_name(dtype) << " " << e;
      changed += h.o[e] != f.o[e];
    }
    EXPECT_GT(changed, 0) << "not vacuous: the rounding shows";
    EXPECT_EQ(h.lse, f.lse) << dtype_name(dtype);
  }
}

TEST(Reference, HalfStorageOneKeyIsExact) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const Case c = Case().seq_q(3).seq_kv(1).heads(2).head_dim(5).head_dim_v(7).dtype(dtype);
    Workload w(c);
    const Result r = w.run(Backend::kReference);
    for (int64_t i = 0; i < 3; ++i) {
      for (int64_t h = 0; h < 2; ++h) {
        for (int64_t d = 0; d < 7; ++d) EXPECT_EQ(o_at(c, r, 0, i, h, d), w.v().at({0, 0, h, d}));
      }
    }
  }
}

// --- Invariants -------------------------------------------------------------

TEST(Reference, OutputsStayWithinTheRangeOfV) {
  std::vector<Case> cases = {
      Case().seq(9),
      Case().seq_q(7).seq_kv(13).causal().alibi(),
      Case().seq(11).window(2, 1).softcap(2).logits(20),
      Case().seq(10).float_mask({10, 10}),
      Case().seq(10).sinks().heads(4).kv_heads(1),
      Case().seq_q(4).seq_kv(20).logits(1e4f),
  };
  for (const Case& c : cases) {
    Workload w(c);
    const Result r = w.run(Backend::kReference);
    const int64_t group = c.heads() / c.kv_heads();
    for (int64_t h = 0; h < c.heads(); ++h) {
      for (int64_t d = 0; d < c.head_dim_v(); ++d) {
        // A sink takes weight without a value: the range then includes 0.
        float lo = c.has_sinks() ? 0.0f : INFINITY, hi = c.has_sinks() ? 0.0f : -INFINITY;
        for (int64_t j = 0; j < c.seq_kv(); ++j) {
          lo = std::min(lo, w.v().at({0, j, h / group, d}));
          hi = std::max(hi, w.v().at({0, j, h / group, d}));
        }
        for (int64_t i = 0; i < c.seq_q(); ++i) {
          EXPECT_GE(o_at(c, r, 0, i, h, d), lo) << c.describe();
          EXPECT_LE(o_at(c, r, 0, i, h, d), hi) << c.describe();
        }
      }
    }
  }
}

TEST(Reference, PermutingKeysAndValuesLeavesANonCausalResultUnchanged) {
  for (const Case& c :
       {Case().batch(2).seq_q(6).seq_kv(17).heads(4).kv_heads(2).head_dim(5).head_dim_v(3),
        Case().seq_q(3).seq_kv(12).softcap(3).logits(10).sinks()}) {
    Workload w(c);
    const Result before = w.run(Backend::kReference);
    std::vector<int64_t> perm(static_cast<size_t>(c.seq_kv()));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
    const HostTensor<float> k0 = w.k(), v0 = w.v();
    for (int64_t b = 0; b < c.batch(); ++b) {
      for (int64_t j = 0; j < c.seq_kv(); ++j) {
        for (int64_t h = 0; h < c.kv_heads(); ++h) {
          for (int64_t d = 0; d < c.head_dim(); ++d) w.k().at({b, j, h, d}) = k0.at({b, perm[j], h, d});
          for (int64_t d = 0; d < c.head_dim_v(); ++d)
            w.v().at({b, j, h, d}) = v0.at({b, perm[j], h, d});
        }
      }
    }
    const Result after = w.run(Backend::kReference);
    for (size_t e = 0; e < before.o.size(); ++e) EXPECT_NEAR(after.o[e], before.o[e], 1e-6) << e;
    for (size_t e = 0; e < before.lse.size(); ++e) EXPECT_NEAR(after.lse[e], before.lse[e], 1e-5) << e;
  }
}

TEST(Reference, LogitsUpTo1e4GiveNoNanOrInf) {
  for (const Case& c : {Case().seq(16).logits(1e4f), Case().seq(16).logit_offset(1e4f),
                        Case().seq(16).logit_offset(-1e4f), Case().seq(16).logits(1e4f).sinks(),
                        Case().seq(16).logits(1e4f).causal().alibi()}) {
    Workload w(c);
    const Result r = w.run(Backend::kReference);
    for (float x : r.o) EXPECT_TRUE(std::isfinite(x)) << c.describe();
    float max_abs_lse = 0;
    for (float x : r.lse) {
      EXPECT_TRUE(std::isfinite(x)) << c.describe();
      max_abs_lse = std::max(max_abs_lse, std::fabs(x));
    }
    EXPECT_GT(max_abs_lse, 1000.0f) << "the logits are not large: " << c.describe();
  }
}

// --- An independent implementation ------------------------------------------

// naive_float32 is written from the semantics table, independently of the
// reference (it reads the raw params: its own mask broadcasting, alibi and
// sink handling). Agreement within its a priori error bound cross-checks both,
// and shows the yardstick of the tolerance rule is tight on ordinary data.
TEST(Reference, AgreesWithTheIndependentNaiveFloat32Implementation) {
  std::vector<Case> cases = {
      Case().batch(2).seq_q(9).seq_kv(14).heads(4).kv_heads(2).head_dim(7).head_dim_v(5),
      Case().seq_q(5).seq_kv(9).causal(),
      Case().seq_q(9).seq_kv(5).causal(),
      Case().seq_q(5).seq_kv(9).causal(CausalAlign::kTopLeft),
      Case().seq_q(9).seq_kv(5).causal(CausalAlign::kTopLeft),
      Case().seq(12).window(3, 0),
      Case().seq_q(6).seq_kv(12).window(0, 2),
      Case().seq(10).softcap(2).logits(30),
      Case().batch(2).seq(10).heads(3).alibi(),
      Case().batch(2).seq(10).heads(3).alibi_per_batch(),
      Case().seq(10).heads(3).sinks(),
      Case().batch(2).seq_q(6).seq_kv(7).heads(3).bool_mask({7}, 0.5),
      Case().batch(2).seq_q(6).seq_kv(7).heads(3).bool_mask({3, 1, 7}, 0.5),
      Case().batch(2).seq_q(6).seq_kv(7).heads(3).bool_mask({2, 1, 6, 1}, 0.5, true),
      Case().batch(2).seq_q(6).seq_kv(7).heads(3).float_mask({2, 3, 6, 7}, 0.2),
      Case().batch(2).seq_q(6).seq_kv(7).heads(3).float_mask({6, 7}, 0.3).sinks().causal(),
      Case().seq(20).logit_offset(1e4f),
  };
  for (const Case& c : cases) {
    Workload w(c);
    const Result ref = w.run(Backend::kReference);
    const std::vector<Result> naive = w.naive();
    for (size_t n = 0; n < naive.size(); ++n) {
      SCOPED_TRACE(naive_variant_name(kNaiveVariants[n]));
      EXPECT_TRUE(within_tolerance(c, "naive float32", naive[n], ref, naive, w.max_abs_v()));
      if (c.logit_offset() == 0 && c.logits() < 100) {
        for (size_t e = 0; e < ref.o.size(); ++e) {
          ASSERT_NEAR(naive[n].o[e], ref.o[e], 1e-5) << e << " " << c.describe();
        }
      }
    }
  }
}

}  // namespace
}  // namespace qkv::test
