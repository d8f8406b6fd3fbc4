// merge_attention: the attention over disjoint key sets, merged, equals the
// attention over their union; empty parts and rows; in place; bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "qkv/qkv.h"
#include "runtime/half.h"

namespace qkv::test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Problem {
  int64_t batch = 2, seq_q = 5, seq_kv = 37, heads = 4, kv_heads = 2, dim = 24;
  std::vector<float> q, k, v;
  explicit Problem(uint32_t seed, float logits = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    q.resize(batch * seq_q * heads * dim);
    k.resize(batch * seq_kv * kv_heads * dim);
    v.resize(k.size());
    for (float& x : q) x = u(rng) * logits;
    for (float& x : k) x = u(rng);
    for (float& x : v) x = u(rng);
  }
  // Keys [j0, j1) of k and v, as views.
  Tensor keys(const std::vector<float>& t, int64_t j0, int64_t j1) const {
    return Tensor::strided(t.data() + j0 * kv_heads * dim, DType::kFloat32,
                           {batch, j1 - j0, kv_heads, dim},
                           {seq_kv * kv_heads * dim, kv_heads * dim, dim, 1});
  }
  // o and lse of the queries over keys [j0, j1).
  void attend(int64_t j0, int64_t j1, std::vector<float>& o, std::vector<float>& lse,
              const float* sinks = nullptr) const {
    o.assign(batch * seq_q * heads * dim, 0.0f);
    lse.assign(batch * heads * seq_q, 0.0f);
    AttentionParams p;
    p.q = Tensor::contiguous(q.data(), DType::kFloat32, {batch, seq_q, heads, dim});
    p.k = keys(k, j0, j1);
    p.v = keys(v, j0, j1);
    p.o = Tensor::contiguous(o.data(), DType::kFloat32, {batch, seq_q, heads, dim});
    p.lse = Tensor::contiguous(lse.data(), DType::kFloat32, {batch, heads, seq_q});
    if (sinks) p.sinks = Tensor::contiguous(sinks, DType::kFloat32, {heads});
    attention(p);
  }
  Tensor o_view(const std::vector<float>& o) const {
    return Tensor::contiguous(o.data(), DType::kFloat32, {batch, seq_q, heads, dim});
  }
  Tensor lse_view(const std::vector<float>& lse) const {
    return Tensor::contiguous(lse.data(), DType::kFloat32, {batch, heads, seq_q});
  }
  // The params that merge parts (each an o and an lse) into o and lse.
  using Part = std::pair<const std::vector<float>*, const std::vector<float>*>;
  MergeAttentionParams merging(std::initializer_list<Part> parts, std::vector<float>& o,
                               std::vector<float>& lse) const {
    MergeAttentionParams m;
    for (const Part& part : parts) m.parts.push_back({o_view(*part.first), lse_view(*part.second)});
    m.o = o_view(o);
    m.lse = lse_view(lse);
    return m;
  }
};

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

void expect_merged(const std::vector<float>& o, const std::vector<float>& lse,
                   const std::vector<float>& o_want, const std::vector<float>& lse_want) {
  EXPECT_LT(max_abs_diff(o, o_want), 2e-6f);
  for (size_t i = 0; i < lse.size(); ++i) {
    EXPECT_NEAR(lse[i], lse_want[i], 2e-6f * (1.0f + std::abs(lse_want[i]))) << i;
  }
}

TEST(Merge, PartsOfTheKeysGiveTheAttentionOverAll) {
  for (const float logits : {1.0f, 30.0f}) {
    const Problem pr(11, logits);
    std::vector<float> o_all, lse_all;
    pr.attend(0, pr.seq_kv, o_all, lse_all);
    for (const std::vector<int64_t>& cuts : {std::vector<int64_t>{0, 16, 37},
                                             std::vector<int64_t>{0, 1, 2, 30, 37},
                                             std::vector<int64_t>{0, 37}}) {
      std::vector<std::vector<float>> o(cuts.size() - 1), lse(cuts.size() - 1);
      MergeAttentionParams m;
      for (size_t p = 0; p + 1 < cuts.size(); ++p) {
        pr.attend(cuts[p], cuts[p + 1], o[p], lse[p]);
        m.parts.push_back({pr.o_view(o[p]), pr.lse_view(lse[p])});
      }
      std::vector<float> o_m(o_all.size(), 7.0f), lse_m(lse_all.size(), 7.0f);
      m.o = pr.o_view(o_m);
      m.lse = pr.lse_view(lse_m);
      merge_attention(m);
      SCOPED_TRACE("logits " + std::to_string(logits) + ", parts " + std::to_string(cuts.size() - 1));
      expect_merged(o_m, lse_m, o_all, lse_all);
    }
  }
}

TEST(Merge, ASinkPassedToOnePartCountsOnce) {
  const Problem pr(12);
  const std::vector<float> sinks = {0.5f, -1.0f, 2.0f, 0.0f};
  std::vector<float> o_all, lse_all, o0, lse0, o1, lse1;
  pr.attend(0, pr.seq_kv, o_all, lse_all, sinks.data());
  pr.attend(0, 20, o0, lse0, sinks.data());
  pr.attend(20, pr.seq_kv, o1, lse1);
  std::vector<float> o_m(o_all.size()), lse_m(lse_all.size());
  merge_attention(pr.merging({{&o0, &lse0}, {&o1, &lse1}}, o_m, lse_m));
  expect_merged(o_m, lse_m, o_all, lse_all);
}

TEST(Merge, EmptyPartsAndRows) {
  const Problem pr(13);
  std::vector<float> o_all, lse_all, o_empty, lse_empty;
  pr.attend(0, pr.seq_kv, o_all, lse_all);
  pr.attend(0, 0, o_empty, lse_empty);  // no keys: o 0, lse -inf
  for (float x : lse_empty) ASSERT_EQ(x, -kInf);
  // A part that saw nothing leaves the other exactly as it was.
  std::vector<float> o_m(o_all.size()), lse_m(lse_all.size());
  merge_attention(pr.merging({{&o_empty, &lse_empty}, {&o_all, &lse_all}}, o_m, lse_m));
  EXPECT_EQ(o_m, o_all);
  EXPECT_EQ(lse_m, lse_all);
  // Rows no part saw a key of: o 0 and lse -inf, whatever the parts' o hold.
  std::vector<float> garbage(o_all.size(), std::numeric_limits<float>::quiet_NaN());
  merge_attention(pr.merging({{&garbage, &lse_empty}, {&o_empty, &lse_empty}}, o_m, lse_m));
  for (float x : o_m) ASSERT_EQ(x, 0.0f);
  for (float x : lse_m) ASSERT_EQ(x, -kInf);
}

TEST(Merge, FarApartLseGivesNoNaN) {
  const Problem pr(14);
  std::vector<float> o0(pr.batch * pr.seq_q * pr.heads * pr.dim, 1.0f), o1(o0.size(), -1.0f);
  std::vector<float> lse0(pr.batch * pr.heads * pr.seq_q, 1e30f), lse1(lse0.size(), -1e30f);
  std::vector<float> o_m(o0.size()), lse_m(lse0.size());
  merge_attention(pr.merging({{&o0, &lse0}, {&o1, &lse1}}, o_m, lse_m));
  EXPECT_EQ(o_m, o0);
  EXPECT_EQ(lse_m, lse0);
}

TEST(Merge, InPlaceAndFloat16Output) {
  const Problem pr(15);
  std::vector<float> o_all, lse_all, o0, lse0, o1, lse1;
  pr.attend(0, pr.seq_kv, o_all, lse_all);
  pr.attend(0, 9, o0, lse0);
  pr.attend(9, pr.seq_kv, o1, lse1);
  // float16 output, from float32 parts: o_all rounded once.
  std::vector<uint16_t> o_h(o_all.size());
  std::vector<float> unused;
  MergeAttentionParams m = pr.merging({{&o0, &lse0}, {&o1, &lse1}}, unused, unused);
  m.o = Tensor::contiguous(o_h.data(), DType::kFloat16, {pr.batch, pr.seq_q, pr.heads, pr.dim});
  m.lse = Tensor();
  merge_attention(m);
  for (size_t i = 0; i < o_h.size(); ++i) {
    ASSERT_NEAR(internal::f32_from_f16(o_h[i]), o_all[i], 1e-3f * std::max(1.0f, std::abs(o_all[i]))) << i;
  }
  // In place: the output is part 0's own o and lse.
  merge_attention(pr.merging({{&o0, &lse0}, {&o1, &lse1}}, o0, lse0));
  expect_merged(o0, lse0, o_all, lse_all);
}

TEST(Merge, BadInputIsAnErrorThatWritesNothing) {
  const Problem pr(16);
  std::vector<float> o0, lse0;
  pr.attend(0, 10, o0, lse0);
  std::vector<float> o_m(o0.size(), 7.0f), lse_m(lse0.size(), 7.0f);
  std::vector<float> small(pr.batch * pr.seq_q * pr.heads * (pr.dim - 1));
  const auto expect_error = [&](MergeAttentionParams m, const std::string& says) {
    try {
      merge_attention(m);
      ADD_FAILURE() << "accepted; expected: " << says;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
    for (float x : o_m) ASSERT_EQ(x, 7.0f);
    for (float x : lse_m) ASSERT_EQ(x, 7.0f);
  };
  const MergeAttentionParams good = pr.merging({{&o0, &lse0}}, o_m, lse_m);
  MergeAttentionParams m = good;
  m.parts.clear();
  expect_error(m, "parts is empty");
  m = good;
  m.parts.push_back({Tensor::contiguous(small.data(), DType::kFloat32,
                                        {pr.batch, pr.seq_q, pr.heads, pr.dim - 1}),
                     pr.lse_view(lse0)});
  expect_error(m, "parts[1].o has shape [2, 5, 4, 23] but o has [2, 5, 4, 24]");
  m = good;
  m.parts[0].lse = Tensor::contiguous(lse0.data(), DType::kFloat32, {pr.batch, pr.seq_q, pr.heads});
  expect_error(m, "parts[0].lse has shape [2, 5, 4] but must be [batch, heads, seq_q] = [2, 4, 5]");
  m = good;
  m.parts[0].lse.dtype = DType::kFloat16;
  expect_error(m, "parts[0].lse must be float32, not float16");
  m = good;
  m.parts[0].lse = Tensor();
  expect_error(m, "parts[0].lse is required");
  m = good;
  m.lse = Tensor::contiguous(lse_m.data(), DType::kFloat32, {pr.batch, pr.heads});
  expect_error(m, "lse must have rank 3");
  m = good;
  m.o.dtype = DType::kInt8;
  expect_error(m, "o must be float32, float16 or bfloat16, not int8");
}

}  // namespace
}  // namespace qkv::test
