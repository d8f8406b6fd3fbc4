// The two measuring tools behind `qkv demo`: the materialized baseline
// (tools/baseline.h) against the reference oracle, and the memory probe
// (tools/memory_probe.h) against an allocation of known size.
//
// Both live in tools/ and the baseline needs OpenBLAS, so this file is only
// compiled for real when tests/CMakeLists.txt adds tools/baseline.cpp,
// tools/memory_probe.cpp and OpenBLAS to qkv_tests and defines
// QKV_TEST_BASELINE; otherwise it reports one skipped test saying so.
#include <gtest/gtest.h>

#ifndef QKV_TEST_BASELINE

TEST(Baseline, NotBuilt) {
  GTEST_SKIP() << "tools/baseline.cpp and tools/memory_probe.cpp are not built into qkv_tests "
                  "(QKV_TEST_BASELINE is not defined)";
}

#else

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "baseline.h"
#include "memory_probe.h"
#include "qkv/qkv.h"

namespace qkv::tools {
namespace {

struct Shape {
  int64_t batch, seq_q, seq_kv, heads, kv_heads, head_dim, head_dim_v;
};

std::string describe(const Shape& s) {
  return "batch " + std::to_string(s.batch) + ", seq_q " + std::to_string(s.seq_q) + ", seq_kv " +
         std::to_string(s.seq_kv) + ", heads " + std::to_string(s.heads) + ", kv_heads " +
         std::to_string(s.kv_heads) + ", head_dim " + std::to_string(s.head_dim) + ", head_dim_v " +
         std::to_string(s.head_dim_v);
}

std::vector<float> random_values(int64_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(count));
  for (float& x : values) x = uniform(rng);
  return values;
}

// Tolerance. The reference accumulates in double; the baseline in float32,
// through sgemm sums of head_dim and seq_kv terms whose rounding error grows
// like sqrt(terms) * 6e-8, about 1e-6 of the output's scale here. 1e-4 of
// the largest |output| leaves two orders of magnitude of margin, while a real
// bug (wrong KV head, key off by one in the mask) moves outputs by ~1e-2.
constexpr double kRelativeTolerance = 1e-4;

void expect_close(const std::vector<float>& actual, const std::vector<float>& expected,
                  const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size());
  double scale = 0;
  for (float e : expected) scale = std::max(scale, std::fabs(static_cast<double>(e)));
  const double tolerance = kRelativeTolerance * std::max(scale, 1e-30);
  for (size_t i = 0; i < actual.size(); ++i) {
    const double error = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    ASSERT_LE(error, tolerance) << what << ": first mismatch at flat index " << i << ": baseline "
                                << actual[i] << ", reference " << expected[i];
  }
}

// Runs the baseline and the reference on the same random [batch, seq, heads,
// dim] inputs and compares the outputs.
void check_against_reference(const Shape& s, bool causal,
                             CausalAlign align = CausalAlign::kBottomRight, Window window = {},
                             float scale = 0.0f, int threads = 0) {
  const std::vector<float> q = random_values(s.batch * s.seq_q * s.heads * s.head_dim, 1);
  const std::vector<float> k = random_values(s.batch * s.seq_kv * s.kv_heads * s.head_dim, 2);
  const std::vector<float> v = random_values(s.batch * s.seq_kv * s.kv_heads * s.head_dim_v, 3);
  std::vector<float> o_baseline(static_cast<size_t>(s.batch * s.seq_q * s.heads * s.head_dim_v), -7.0f);
  std::vector<float> o_reference(o_baseline.size(), 0.0f);

  AttentionParams p;
  p.q = Tensor::contiguous(q.data(), DType::kFloat32, {s.batch, s.seq_q, s.heads, s.head_dim});
  p.k = Tensor::contiguous(k.data(), DType::kFloat32, {s.batch, s.seq_kv, s.kv_heads, s.head_dim});
  p.v = Tensor::contiguous(v.data(), DType::kFloat32, {s.batch, s.seq_kv, s.kv_heads, s.head_dim_v});
  p.causal = causal;
  p.causal_align = align;
  p.window = window;
  if (scale > 0) p.scale = scale;
  p.num_threads = threads;

  p.o = Tensor::contiguous(o_baseline.data(), DType::kFloat32, {s.batch, s.seq_q, s.heads, s.head_dim_v});
  materialized_attention(p);
  p.o = Tensor::contiguous(o_reference.data(), DType::kFloat32, {s.batch, s.seq_q, s.heads, s.head_dim_v});
  p.backend = Backend::kReference;
  attention(p);

  expect_close(o_baseline, o_reference, describe(s) + (causal ? ", causal" : ""));
}

TEST(Baseline, MatchesReferenceGqa) {
  check_against_reference({2, 37, 53, 6, 2, 40, 40}, /*causal=*/false);
  check_against_reference({1, 64, 64, 8, 2, 128, 128}, /*causal=*/false);
}

TEST(Baseline, MatchesReferenceGqaCausal) {
  check_against_reference({2, 37, 53, 6, 2, 40, 40}, /*causal=*/true);
  check_against_reference({1, 64, 64, 8, 2, 128, 128}, /*causal=*/true);
  check_against_reference({1, 53, 37, 6, 3, 40, 40}, /*causal=*/true, CausalAlign::kTopLeft);
}

TEST(Baseline, RowsWithoutVisibleKeyAreZero) {
  // Bottom-right alignment with seq_q > seq_kv: the first 13 query rows see no key.
  check_against_reference({1, 20, 7, 4, 1, 16, 16}, /*causal=*/true);
}

TEST(Baseline, MqaDecodeAndWindow) {
  check_against_reference({2, 1, 129, 8, 1, 64, 64}, /*causal=*/true);
  check_against_reference({1, 33, 65, 4, 2, 32, 32}, /*causal=*/true, CausalAlign::kBottomRight, {8, 0});
}

TEST(Baseline, HeadDimVDiffers) {
  check_against_reference({1, 19, 31, 4, 4, 64, 24}, /*causal=*/false);
}

TEST(Baseline, LargeLogitsStayFinite) {
  // scale 30: logits of a few hundred, so exp without max subtraction overflows.
  check_against_reference({1, 17, 29, 4, 2, 32, 32}, /*causal=*/true, CausalAlign::kBottomRight, {}, 30.0f);
}

TEST(Baseline, SingleThread) {
  check_against_reference({1, 37, 53, 6, 2, 40, 40}, /*causal=*/true, CausalAlign::kBottomRight, {}, 0.0f, 1);
}

TEST(Baseline, StridedBhsdLayout) {
  // q, k, v stored [batch, heads, seq, dim] and passed with permuted strides.
  const int64_t batch = 1, seq = 21, heads = 4, kv_heads = 2, dim = 16;
  const std::vector<float> q = random_values(batch * heads * seq * dim, 4);
  const std::vector<float> k = random_values(batch * kv_heads * seq * dim, 5);
  const std::vector<float> v = random_values(batch * kv_heads * seq * dim, 6);
  std::vector<float> o_baseline(q.size()), o_reference(q.size());
  AttentionParams p;
  p.q = Tensor::strided(q.data(), DType::kFloat32, {batch, seq, heads, dim},
                        {heads * seq * dim, dim, seq * dim, 1});
  p.k = Tensor::strided(k.data(), DType::kFloat32, {batch, seq, kv_heads, dim},
                        {kv_heads * seq * dim, dim, seq * dim, 1});
  p.v = Tensor::strided(v.data(), DType::kFloat32, {batch, seq, kv_heads, dim},
                        {kv_heads * seq * dim, dim, seq * dim, 1});
  p.causal = true;
  p.o = Tensor::contiguous(o_baseline.data(), DType::kFloat32, {batch, seq, heads, dim});
  materialized_attention(p);
  p.o = Tensor::contiguous(o_reference.data(), DType::kFloat32, {batch, seq, heads, dim});
  p.backend = Backend::kReference;
  attention(p);
  expect_close(o_baseline, o_reference, "strided [batch, heads, seq, dim] layout");
}

TEST(Baseline, RejectsOptionsItDoesNotImplement) {
  std::vector<float> x(4 * 8, 0.5f), o(4 * 8);
  AttentionParams p;
  p.q = Tensor::contiguous(x.data(), DType::kFloat32, {1, 4, 1, 8});
  p.k = Tensor::contiguous(x.data(), DType::kFloat32, {1, 4, 1, 8});
  p.v = Tensor::contiguous(x.data(), DType::kFloat32, {1, 4, 1, 8});
  p.o = Tensor::contiguous(o.data(), DType::kFloat32, {1, 4, 1, 8});
  p.softcap = 30.0f;
  EXPECT_THROW(materialized_attention(p), Error);
}

TEST(Baseline, BytesAreTheScoreMatrix) {
  AttentionParams p;
  p.q = Tensor::contiguous(nullptr, DType::kFloat32, {2, 1024, 8, 128});
  p.k = Tensor::contiguous(nullptr, DType::kFloat32, {2, 4096, 2, 128});
  EXPECT_EQ(materialized_attention_bytes(p), int64_t{2} * 8 * 1024 * 4096 * 4);
}

// Keeps the compiler from removing an allocation that is only written.
void escape(void* p) { asm volatile("" : : "g"(p) : "memory"); }

TEST(MemoryProbe, SeesAFreedAllocationAtItsPeak) {
  constexpr int64_t kBytes = int64_t{64} << 20;
  const PeakMemory peak = measure_peak_extra([] {
    std::unique_ptr<char[]> buffer(new char[kBytes]);
    std::memset(buffer.get(), 1, kBytes);
    escape(buffer.get());
    // Long enough for the polling fallback to see it; irrelevant to clear_refs.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  });
  if (peak.method == PeakMethod::kUnavailable) GTEST_SKIP() << peak_method_description(peak.method);
  EXPECT_GT(peak.extra_bytes, 0);
  EXPECT_GE(peak.extra_bytes, kBytes * 9 / 10) << peak_method_description(peak.method);
  EXPECT_LE(peak.extra_bytes, kBytes * 11 / 10 + (int64_t{4} << 20)) << peak_method_description(peak.method);
}

TEST(MemoryProbe, AvailableMemoryIsKnownOnLinux) {
#ifdef __linux__
  EXPECT_GT(available_memory_bytes(), 0);
#else
  GTEST_SKIP() << "/proc/meminfo is Linux-only";
#endif
}

}  // namespace
}  // namespace qkv::tools

#endif  // QKV_TEST_BASELINE
