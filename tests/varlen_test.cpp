// attention_varlen equals one qkv::attention call per sequence, bitwise, and
// checks its offsets before writing anything.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "qkv/qkv.h"
#include "test_util.h"

namespace qkv::test {
namespace {

std::vector<float> random_floats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = normal(rng);
  return x;
}

TEST(Varlen, EqualsOneCallPerSequence) {
  const int64_t h = 4, hk = 2, d = 24, dv = 16;
  const std::vector<int32_t> cu_q = {0, 5, 5, 105, 106};   // one empty sequence
  const std::vector<int32_t> cu_k = {0, 9, 30, 130, 131};
  const int64_t total_q = cu_q.back(), total_k = cu_k.back();
  const auto q = random_floats(total_q * h * d, 1), k = random_floats(total_k * hk * d, 2);
  const auto v = random_floats(total_k * hk * dv, 3), slopes = random_floats(4 * h, 4);
  for (Backend backend : {Backend::kAuto, Backend::kFlash, Backend::kDecode, Backend::kReference}) {
    for (bool causal : {false, true}) {
      std::vector<float> o(static_cast<size_t>(total_q * h * dv), -1.0f), lse(static_cast<size_t>(h * total_q), -1.0f);
      VarlenAttentionParams vp;
      vp.q = Tensor::contiguous(q.data(), DType::kFloat32, {total_q, h, d});
      vp.k = Tensor::contiguous(k.data(), DType::kFloat32, {total_k, hk, d});
      vp.v = Tensor::contiguous(v.data(), DType::kFloat32, {total_k, hk, dv});
      vp.o = Tensor::contiguous(o.data(), DType::kFloat32, {total_q, h, dv});
      vp.lse = Tensor::contiguous(lse.data(), DType::kFloat32, {h, total_q});
      vp.cu_seqlens_q = cu_q;
      vp.cu_seqlens_k = cu_k;
      vp.options.causal = causal;
      vp.options.window = {40, 3};
      vp.options.alibi_slopes = Tensor::contiguous(slopes.data(), DType::kFloat32, {4, h});
      vp.options.backend = backend;
      attention_varlen(vp);
      for (size_t s = 0; s + 1 < cu_q.size(); ++s) {
        const int64_t sq = cu_q[s + 1] - cu_q[s], sk = cu_k[s + 1] - cu_k[s];
        std::vector<float> os(static_cast<size_t>(sq * h * dv)), ls(static_cast<size_t>(h * sq));
        AttentionParams p = vp.options;
        p.q = Tensor::contiguous(q.data() + cu_q[s] * h * d, DType::kFloat32, {1, sq, h, d});
        p.k = Tensor::contiguous(k.data() + cu_k[s] * hk * d, DType::kFloat32, {1, sk, hk, d});
        p.v = Tensor::contiguous(v.data() + cu_k[s] * hk * dv, DType::kFloat32, {1, sk, hk, dv});
        p.o = Tensor::contiguous(os.data(), DType::kFloat32, {1, sq, h, dv});
        p.lse = Tensor::contiguous(ls.data(), DType::kFloat32, {1, h, sq});
        p.alibi_slopes = Tensor::contiguous(slopes.data() + s * h, DType::kFloat32, {h});
        attention(p);
        EXPECT_TRUE(bitwise_equal(os, std::vector<float>(o.begin() + cu_q[s] * h * dv, o.begin() + cu_q[s + 1] * h * dv)))
            << "sequence " << s << " causal " << causal;
        for (int64_t hh = 0; hh < h; ++hh) {
          for (int64_t i = 0; i < sq; ++i) {
            EXPECT_EQ(memcmp(&ls[hh * sq + i], &lse[hh * total_q + cu_q[s] + i], 4), 0) << "lse s " << s;
          }
        }
      }
    }
  }
}

TEST(Varlen, BadOffsetsAreErrorsThatWriteNothing) {
  const auto q = random_floats(10 * 2 * 8, 5);
  std::vector<float> o(10 * 2 * 8, 3.0f);
  VarlenAttentionParams vp;
  vp.q = Tensor::contiguous(q.data(), DType::kFloat32, {10, 2, 8});
  vp.k = vp.q;
  vp.v = vp.q;
  vp.o = Tensor::contiguous(o.data(), DType::kFloat32, {10, 2, 8});
  const std::vector<int32_t> good = {0, 4, 10}, decreasing = {0, 6, 4, 10}, short_end = {0, 4, 9},
                             bad_start = {1, 4, 10};
  const auto expect = [&](std::span<const int32_t> cq, std::span<const int32_t> ck, const char* words) {
    vp.cu_seqlens_q = cq;
    vp.cu_seqlens_k = ck;
    try {
      attention_varlen(vp);
      ADD_FAILURE() << "no error for " << words;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
    for (float x : o) ASSERT_EQ(x, 3.0f);
  };
  expect(decreasing, decreasing, "non-decreasing");
  expect(short_end, short_end, "ends at 9");
  expect(bad_start, bad_start, "cu_seqlens_q[0] must be 0");
  expect(good, std::span<const int32_t>(good).first(2), "cu_seqlens_k has 2 entries");
  std::vector<float> k3(10 * 3 * 8);
  vp.k = Tensor::contiguous(k3.data(), DType::kFloat32, {10, 3, 8});
  vp.v = vp.k;
  expect(good, good, "sequence 0: kv_heads (3) must divide heads (2)");
}

}  // namespace
}  // namespace qkv::test
