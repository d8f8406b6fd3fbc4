// KVCache, RoPE and attention_with_kvcache: the decode and flash kernels over
// a cache equal the reference run on the same logical K/V (what the cache
// holds, dequantized), paged equals contiguous exactly, append and RoPE put
// every token where it belongs, and bad input changes nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "api/problem.h"
#include "kernels/decode.h"
#include "kernels/flash_forward.h"
#include "runtime/amx.h"
#include "runtime/caches.h"
#include "qkv/qkv.h"
#include "runtime/half.h"
#include "test_util.h"

namespace qkv::test {
namespace {

std::vector<float> random_floats(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = normal(rng);
  return x;
}

Tensor bshd(const std::vector<float>& x, int64_t b, int64_t s, int64_t h, int64_t d) {
  return Tensor::contiguous(x.data(), DType::kFloat32, {b, s, h, d});
}

struct CacheSpec {
  int64_t batch = 2, heads = 8, kv_heads = 2, head_dim = 64, head_dim_v = 64;
  int64_t capacity = 700, prefill = 600, page_size = 0;
  DType dtype = DType::kFloat16;
  bool shuffle_pages = false;
};

// A cache with `prefill` random tokens per sequence (in two appends).
KVCache make_cache(const CacheSpec& s, uint32_t seed) {
  KVCacheConfig config;
  config.batch = s.batch;
  config.capacity = s.capacity;
  config.kv_heads = s.kv_heads;
  config.head_dim = s.head_dim;
  config.head_dim_v = s.head_dim_v;
  config.dtype = s.dtype;
  config.page_size = s.page_size;
  KVCache cache(config);
  if (s.shuffle_pages) {
    std::vector<int32_t> table(cache.block_table());
    std::shuffle(table.begin(), table.end(), std::mt19937(seed));
    cache.set_block_table(table);
  }
  const int64_t first = s.prefill / 3;
  for (const auto& [n, salt] : {std::pair{first, 1u}, {s.prefill - first, 2u}}) {
    const auto k = random_floats(s.batch * n * s.kv_heads * s.head_dim, seed * 7 + salt);
    const auto v = random_floats(s.batch * n * s.kv_heads * s.head_dim_v, seed * 11 + salt);
    cache.append(bshd(k, s.batch, n, s.kv_heads, s.head_dim), bshd(v, s.batch, n, s.kv_heads, s.head_dim_v));
  }
  return cache;
}

// Attends q [batch, seq_q, heads, head_dim] over the cache with `backend`;
// returns o (float32).
std::vector<float> attend(KVCache& cache, const CacheSpec& s, const std::vector<float>& q,
                          int64_t seq_q, Backend backend, int num_splits = 0,
                          std::vector<float>* lse = nullptr, int num_threads = 0) {
  std::vector<float> o(static_cast<size_t>(s.batch * seq_q * s.heads * s.head_dim_v), -7.0f);
  KVCacheAttentionParams p;
  p.q = bshd(q, s.batch, seq_q, s.heads, s.head_dim);
  p.o = bshd(o, s.batch, seq_q, s.heads, s.head_dim_v);
  if (lse) {
    lse->assign(static_cast<size_t>(s.batch * s.heads * seq_q), -7.0f);
    p.lse = Tensor::contiguous(lse->data(), DType::kFloat32, {s.batch, s.heads, seq_q});
  }
  p.cache = &cache;
  p.causal = true;
  p.backend = backend;
  p.num_splits = num_splits;
  p.num_threads = num_threads;
  attention_with_kvcache(p);
  return o;
}

// The same call as a dense qkv::attention over the cache's logical K/V,
// checked with the suite's tolerance rule (reference vs naive float32).
void expect_cache_matches_reference(const CacheSpec& s, int64_t seq_q, uint32_t seed) {
  KVCache cache = make_cache(s, seed);
  const int64_t len = cache.lengths()[0];
  Case c = Case().batch(s.batch).seq_q(seq_q).seq_kv(len).heads(s.heads).kv_heads(s.kv_heads)
               .head_dim(s.head_dim).head_dim_v(s.head_dim_v).causal().seed(seed);
  Workload w(c);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t j = 0; j < len; ++j) {
      for (int64_t h = 0; h < s.kv_heads; ++h) {
        std::vector<float> row(static_cast<size_t>(std::max(s.head_dim, s.head_dim_v)));
        cache.read_key(b, j, h, row.data());
        for (int64_t d = 0; d < s.head_dim; ++d) w.k().at({b, j, h, d}) = row[d];
        cache.read_value(b, j, h, row.data());
        for (int64_t d = 0; d < s.head_dim_v; ++d) w.v().at({b, j, h, d}) = row[d];
      }
    }
  }
  const Result ref = w.run(Backend::kReference);
  const std::vector<Result> naive = w.naive();
  const std::vector<float> q = w.q().dense();
  // The float path, held to float32's rule; the fixed-point int8 path on
  // AVX512-VNNI or AMX-INT8 has its own bound (Int8InFixedPointStaysWithinItsBound).
  internal::set_decode_fixed_point_enabled(false);
  struct Restore {
    ~Restore() { internal::set_decode_fixed_point_enabled(true); }
  } restore;
  for (const int64_t target : internal::flash_targets()) {
    internal::flash_force_target(target);
    for (Backend backend : {Backend::kAuto, Backend::kDecode, Backend::kFlash}) {
      Result fast;
      fast.o = attend(cache, s, q, seq_q, backend, 0, &fast.lse);
      EXPECT_TRUE(within_tolerance(c, std::string("cache/") + internal::flash_target_name(target),
                                   fast, ref, naive, w.max_abs_v()));
    }
  }
  internal::flash_force_target(0);
}

TEST(KVCache, DecodeOverEveryStorageTypeMatchesTheReference) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt8}) {
    SCOPED_TRACE(dtype_name(dtype));
    CacheSpec s;
    s.dtype = dtype;
    expect_cache_matches_reference(s, 1, 10);
  }
}

// The decode kernel's block of keys is 64, 32 or 16 from the caches and the step; each
// forced, with lengths that end blocks part way (600 tokens, 8 kv heads),
// against the reference for every storage type, on every target; the int8
// integer path (16-bit weights per block) against the float path on every
// target that has it.
TEST(KVCache, EveryBlockSizeMatchesTheReference) {
  struct Restore {
    ~Restore() {
      internal::set_decode_block_keys(0);
      internal::set_decode_fixed_point_enabled(true);
      internal::flash_force_target(0);
    }
  } restore;
  for (const int64_t keys : {16, 32, 64}) {
    internal::set_decode_block_keys(keys);
    SCOPED_TRACE(testing::Message() << keys << " keys per block");
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt8}) {
      SCOPED_TRACE(dtype_name(dtype));
      CacheSpec s;
      s.dtype = dtype;
      s.heads = 16, s.kv_heads = 8;
      expect_cache_matches_reference(s, 1, 12);
    }
    CacheSpec s;
    s.dtype = DType::kInt8;
    s.heads = 16, s.kv_heads = 8;
    KVCache cache = make_cache(s, 13);
    const auto q = random_floats(s.batch * s.heads * s.head_dim, 14, 2.0f);
    for (const int64_t target : internal::flash_targets()) {
      if (!internal::decode_fixed_point_on(target)) continue;
      internal::flash_force_target(target);
      internal::set_decode_fixed_point_enabled(true);
      const auto o_fixed = attend(cache, s, q, 1, Backend::kDecode);
      internal::set_decode_fixed_point_enabled(false);
      const auto o_float = attend(cache, s, q, 1, Backend::kDecode);
      double worst = 0;
      for (size_t i = 0; i < o_fixed.size(); ++i) worst = std::max(worst, double(std::fabs(o_fixed[i] - o_float[i])));
      EXPECT_GT(worst, 0.0) << internal::flash_target_name(target) << ": the fixed-point path did not run";
      // (measured 1.0-1.5e-4 at every block size; a block's weights or
      // scales mishandled move o by a tenth and more)
      EXPECT_LT(worst, 1e-3) << internal::flash_target_name(target);
    }
    internal::flash_force_target(0);
    internal::set_decode_fixed_point_enabled(true);
  }
}

// The block the decode kernel picks: with a 2 MiB L2, 64 keys for a step
// whose cache fits a quarter of the L3; past it (a step of 2^30 keys, more
// than any L3) blocks of at most 128 KiB of K and V rows: 32 keys of 8 kv
// heads of 128 in float16, 16 in float32, 64 in int8 (its scales not
// counted). With a 512 KiB L2, two blocks in half of it whatever the step.
TEST(KVCache, BlockKeysFollowTheCachesAndTheStep) {
  struct Restore {
    ~Restore() { internal::set_l2_cache_bytes_for_test(0); }
  } restore;
  constexpr int64_t kHuge = int64_t{1} << 30;
  internal::set_l2_cache_bytes_for_test(int64_t{2} << 20);
  EXPECT_EQ(internal::decode_block_keys(8, 128, 128, DType::kFloat16, 1), 64);
  EXPECT_EQ(internal::decode_block_keys(8, 128, 128, DType::kFloat16, kHuge), 32);
  EXPECT_EQ(internal::decode_block_keys(8, 128, 128, DType::kBFloat16, kHuge), 32);
  EXPECT_EQ(internal::decode_block_keys(8, 128, 128, DType::kFloat32, kHuge), 16);
  EXPECT_EQ(internal::decode_block_keys(8, 128, 128, DType::kInt8, kHuge), 64);
  EXPECT_EQ(internal::decode_block_keys(1, 128, 128, DType::kFloat16, kHuge), 64);
  internal::set_l2_cache_bytes_for_test(int64_t{512} << 10);
  EXPECT_EQ(internal::decode_block_keys(8, 128, 128, DType::kFloat16, 1), 32);
  EXPECT_EQ(internal::decode_block_keys(8, 128, 128, DType::kFloat32, 1), 16);
  EXPECT_EQ(internal::decode_block_keys(8, 128, 128, DType::kInt8, 1), 64);
}

TEST(KVCache, SeveralQueryRowsGqaMqaAndOddHeadDims) {
  for (const auto& [heads, kv_heads, head_dim, head_dim_v, seq_q] :
       {std::tuple{8, 2, 64, 64, 4}, {4, 1, 7, 5, 3}, {6, 6, 80, 96, 2}, {32, 8, 128, 128, 1},
        {8, 8, 33, 17, 16}}) {
    CacheSpec s;
    s.heads = heads, s.kv_heads = kv_heads, s.head_dim = head_dim, s.head_dim_v = head_dim_v;
    s.prefill = 333;
    SCOPED_TRACE(testing::Message() << heads << "/" << kv_heads << " d " << head_dim << "/"
                                    << head_dim_v << " seq_q " << seq_q);
    expect_cache_matches_reference(s, seq_q, 20 + heads);
  }
}

// A thread keeps its decode scratch for its next call while the sizes stay
// the same: calls that change one size at a time and come back each match
// the reference (a buffer kept too small would overflow, which the sanitizer
// build reports).
TEST(KVCache, DecodeAfterCallsOfOtherSizes) {
  CacheSpec base;
  base.capacity = 256, base.prefill = 200;
  CacheSpec more_kv_heads = base, wider = base, wider_values = base, int8 = base;
  more_kv_heads.kv_heads = 4;
  wider.head_dim = 128;
  wider_values.head_dim_v = 96;
  int8.dtype = DType::kInt8;
  uint32_t seed = 90;
  for (const auto& [s, seq_q] : {std::pair{base, 1}, {more_kv_heads, 1}, {base, 1}, {base, 4},
                                 {base, 1}, {wider, 1}, {base, 1}, {wider_values, 1}, {int8, 1},
                                 {base, 1}}) {
    SCOPED_TRACE(testing::Message() << "call " << seed - 90 << ": kv_heads " << s.kv_heads << " d "
                                    << s.head_dim << "/" << s.head_dim_v << " seq_q " << seq_q
                                    << " " << dtype_name(s.dtype));
    expect_cache_matches_reference(s, seq_q, seed++);
  }
}

// An int8 block's scales are turned 16 keys x 8 kv heads at a time where
// they lie evenly (kv_heads a multiple of 8; a contiguous cache, or keys of
// one page) and key by key elsewhere: every layout, with a last block short
// of 16 keys, against the reference.
TEST(KVCache, Int8ScalesOfEveryLayoutMatchTheReference) {
  for (const auto& [kv_heads, page_size] :
       {std::pair<int64_t, int64_t>{8, 0}, {16, 0}, {8, 16}, {8, 64}, {16, 128}, {4, 0}}) {
    SCOPED_TRACE(testing::Message() << "kv_heads " << kv_heads << " page_size " << page_size);
    CacheSpec s;
    s.dtype = DType::kInt8;
    s.kv_heads = kv_heads;
    s.heads = 2 * kv_heads;
    s.page_size = page_size;
    s.shuffle_pages = page_size > 0;
    s.capacity = 512;
    s.prefill = 333;
    expect_cache_matches_reference(s, 1, 70 + static_cast<uint32_t>(kv_heads + page_size));
  }
}

TEST(KVCache, PagedEqualsContiguousExactly) {
  for (DType dtype : {DType::kFloat16, DType::kInt8}) {
    CacheSpec contiguous;
    contiguous.dtype = dtype;
    CacheSpec paged = contiguous;
    paged.page_size = 16;
    paged.shuffle_pages = true;
    KVCache a = make_cache(contiguous, 3);
    KVCache b = make_cache(paged, 3);
    const auto q = random_floats(contiguous.batch * 2 * contiguous.heads * contiguous.head_dim, 5);
    for (Backend backend : {Backend::kDecode, Backend::kFlash, Backend::kReference}) {
      const auto oa = attend(a, contiguous, q, 2, backend, 3);
      const auto ob = attend(b, paged, q, 2, backend, 3);
      EXPECT_TRUE(bitwise_equal(oa, ob)) << dtype_name(dtype) << " backend " << static_cast<int>(backend);
    }
  }
}

TEST(KVCache, SplitCountsGiveTheSameResult) {
  CacheSpec s;
  s.prefill = 690;
  KVCache cache = make_cache(s, 4);
  const auto q = random_floats(s.batch * s.heads * s.head_dim, 6);
  std::vector<float> lse1;
  const auto one = attend(cache, s, q, 1, Backend::kDecode, 1, &lse1);
  double max_v = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t j = 0; j < cache.lengths()[b]; ++j) {
      std::vector<float> row(static_cast<size_t>(s.head_dim_v));
      cache.read_value(b, j, 0, row.data());
      for (float x : row) max_v = std::max(max_v, static_cast<double>(std::fabs(x)));
    }
  }
  // Chunks of 64 keys up to more chunks than keys (empty chunks merge as nothing).
  for (int splits : {2, 3, 7, 11, 64, 1000}) {
    std::vector<float> lse;
    const auto o = attend(cache, s, q, 1, Backend::kDecode, splits, &lse);
    for (size_t i = 0; i < o.size(); ++i) {
      ASSERT_NEAR(o[i], one[i], 2e-6 * max_v) << "splits " << splits << " at " << i;
    }
    for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], lse1[i], 2e-6) << "splits " << splits;
  }
}

TEST(KVCache, PerSequenceLengthsEqualSeparateCaches) {
  CacheSpec s;
  s.batch = 3;
  KVCache cache = make_cache(s, 8);
  cache.set_lengths({600, 17, 0});
  const auto q = random_floats(s.batch * s.heads * s.head_dim, 9);
  std::vector<float> lse;
  const auto o = attend(cache, s, q, 1, Backend::kDecode, 2, &lse);
  // Sequence 2 holds nothing: o = 0 and lse = -inf.
  const int64_t row = s.heads * s.head_dim_v;
  for (int64_t i = 2 * row; i < 3 * row; ++i) EXPECT_EQ(o[i], 0.0f);
  for (int64_t h = 0; h < s.heads; ++h) EXPECT_EQ(lse[2 * s.heads + h], kNegInf);
  // Sequence 1 equals a one-sequence cache holding the same 17 tokens.
  CacheSpec one = s;
  one.batch = 1;
  KVCacheConfig config{1, s.capacity, s.kv_heads, s.head_dim, s.head_dim_v, s.dtype};
  KVCache single(config);
  std::vector<float> k(static_cast<size_t>(17 * s.kv_heads * s.head_dim)), v(k.size());
  for (int64_t j = 0; j < 17; ++j) {
    for (int64_t h = 0; h < s.kv_heads; ++h) {
      cache.read_key(1, j, h, &k[(j * s.kv_heads + h) * s.head_dim]);
      cache.read_value(1, j, h, &v[(j * s.kv_heads + h) * s.head_dim]);
    }
  }
  single.append(bshd(k, 1, 17, s.kv_heads, s.head_dim), bshd(v, 1, 17, s.kv_heads, s.head_dim));
  const std::vector<float> q1(q.begin() + s.heads * s.head_dim, q.begin() + 2 * s.heads * s.head_dim);
  const auto o1 = attend(single, one, q1, 1, Backend::kDecode, 2);
  EXPECT_TRUE(bitwise_equal(o1, std::vector<float>(o.begin() + row, o.begin() + 2 * row)));
}

TEST(KVCache, FlashOverUnequalLengthsWithManyPairsMatchesOneThread) {
  // A prefill chunk over a paged cache with one length per sequence and 16
  // (sequence, kv head) pairs: with 2 and 3 threads the flash kernels take
  // one pair per task (run_pairs), with 1 thread rounds of shared packing.
  // Both give the same bits, and the reference's result within the rule.
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    CacheSpec s;
    s.batch = 4;
    s.kv_heads = 4;
    s.heads = 8;
    s.head_dim = s.head_dim_v = 64;
    s.page_size = 16;
    s.shuffle_pages = true;
    s.dtype = dtype;
    KVCache cache = make_cache(s, 31);
    cache.set_lengths({300, 17, 0, 150});
    const int64_t seq_q = 5;
    std::vector<float> q = random_floats(s.batch * seq_q * s.heads * s.head_dim, 32);
    std::vector<float> want_lse, lse;
    const auto want = attend(cache, s, q, seq_q, Backend::kFlash, 0, &want_lse, 1);
    for (int threads : {2, 3}) {
      SCOPED_TRACE(testing::Message() << dtype_name(dtype) << ", " << threads << " threads");
      const auto got = attend(cache, s, q, seq_q, Backend::kFlash, 0, &lse, threads);
      EXPECT_TRUE(bitwise_equal(got, want));
      EXPECT_TRUE(bitwise_equal(lse, want_lse));
    }
    // Sequence 2 holds nothing: o = 0 and lse = -inf, whatever the schedule.
    const int64_t row = seq_q * s.heads * s.head_dim_v;
    for (int64_t i = 2 * row; i < 3 * row; ++i) ASSERT_EQ(want[i], 0.0f);
    // Sequence 1 (17 keys) against the decode kernel, within float32's rule
    // for the rows' few keys (both accumulate in float32).
    const auto decode = attend(cache, s, q, seq_q, Backend::kDecode, 0, nullptr, 2);
    for (int64_t i = row; i < 2 * row; ++i) ASSERT_NEAR(want[i], decode[i], 1e-5) << i;
  }
}

// RoPE written independently: pairs and angles straight from the definition.
std::vector<double> rope_reference(std::vector<double> x, int64_t position, const Rope& rope) {
  const int64_t rd = rope.rotary_dim ? rope.rotary_dim : static_cast<int64_t>(x.size());
  for (int64_t i = 0; i < rd / 2; ++i) {
    const double angle = position * std::pow(static_cast<double>(rope.theta), -2.0 * i / rd);
    const int64_t a = rope.style == Rope::Style::kInterleaved ? 2 * i : i;
    const int64_t b = rope.style == Rope::Style::kInterleaved ? 2 * i + 1 : i + rd / 2;
    const double xa = x[a], xb = x[b];
    x[a] = xa * std::cos(angle) - xb * std::sin(angle);
    x[b] = xa * std::sin(angle) + xb * std::cos(angle);
  }
  return x;
}

TEST(KVCache, AppendPlacesTokensAndRotatesKeysAtTheirPositions) {
  for (Rope::Style style : {Rope::Style::kHalves, Rope::Style::kInterleaved}) {
    for (int64_t rotary_dim : {0, 8}) {
      Rope rope;
      rope.style = style;
      rope.theta = 500.0f;
      rope.rotary_dim = rotary_dim;
      KVCacheConfig config{2, 40, 2, 16, 16, DType::kFloat32, 8};
      KVCache cache(config);
      cache.set_lengths({5, 9});
      const auto k = random_floats(2 * 3 * 2 * 16, 31), v = random_floats(2 * 3 * 2 * 16, 32);
      cache.append(bshd(k, 2, 3, 2, 16), bshd(v, 2, 3, 2, 16), rope);  // several tokens at once
      EXPECT_EQ(cache.lengths(), (std::vector<int64_t>{8, 12}));
      for (int64_t b = 0; b < 2; ++b) {
        for (int64_t t = 0; t < 3; ++t) {
          for (int64_t h = 0; h < 2; ++h) {
            const int64_t at = ((b * 3 + t) * 2 + h) * 16;
            const int64_t position = (b == 0 ? 5 : 9) + t;
            const auto want = rope_reference(std::vector<double>(k.begin() + at, k.begin() + at + 16),
                                             position, rope);
            float got[16], got_v[16];
            cache.read_key(b, position, h, got);
            cache.read_value(b, position, h, got_v);
            for (int d = 0; d < 16; ++d) {
              EXPECT_NEAR(got[d], want[d], 1e-6) << "b " << b << " t " << t << " d " << d;
              EXPECT_EQ(got_v[d], v[at + d]);
            }
          }
        }
      }
    }
  }
}

TEST(KVCache, AttentionWithNewTokensRotatesQueriesAndKeysConsistently) {
  // Appending through attention_with_kvcache with RoPE equals appending the
  // rotated keys by hand and attending with queries rotated by hand.
  Rope rope;
  const int64_t b = 1, n = 3, h = 4, hk = 2, d = 16;
  KVCacheConfig config{b, 64, hk, d, d, DType::kFloat32};
  KVCache with_api(config), by_hand(config);
  const auto k0 = random_floats(b * 10 * hk * d, 41), v0 = random_floats(b * 10 * hk * d, 42);
  with_api.append(bshd(k0, b, 10, hk, d), bshd(v0, b, 10, hk, d), rope);
  by_hand.append(bshd(k0, b, 10, hk, d), bshd(v0, b, 10, hk, d), rope);
  const auto q = random_floats(b * n * h * d, 43);
  const auto k = random_floats(b * n * hk * d, 44), v = random_floats(b * n * hk * d, 45);
  std::vector<float> o_api(static_cast<size_t>(b * n * h * d)), o_hand(o_api.size());
  KVCacheAttentionParams p;
  p.q = bshd(q, b, n, h, d);
  p.k_new = bshd(k, b, n, hk, d);
  p.v_new = bshd(v, b, n, hk, d);
  p.o = bshd(o_api, b, n, h, d);
  p.cache = &with_api;
  p.rope = rope;
  p.causal = true;
  attention_with_kvcache(p);

  by_hand.append(bshd(k, b, n, hk, d), bshd(v, b, n, hk, d), rope);
  std::vector<float> q_rot(q);
  const int64_t positions[] = {10};
  apply_rope(bshd(q_rot, b, n, h, d), positions, rope);
  KVCacheAttentionParams hand = p;
  hand.q = bshd(q_rot, b, n, h, d);
  hand.k_new = Tensor();
  hand.v_new = Tensor();
  hand.o = bshd(o_hand, b, n, h, d);
  hand.cache = &by_hand;
  hand.rope.reset();
  attention_with_kvcache(hand);
  EXPECT_TRUE(bitwise_equal(o_api, o_hand));
  EXPECT_EQ(with_api.lengths(), by_hand.lengths());
  EXPECT_NE(q, q_rot);  // the caller's q is left as it was
}

TEST(KVCache, Int8QuantizationErrorIsHalfAStep) {
  // Stated bound: each element within scale / 2 = max|row| / 254 of its input.
  KVCacheConfig config{1, 8, 1, 64, 64, DType::kInt8};
  KVCache cache(config);
  const auto k = random_floats(4 * 64, 51, 3.0f), v = random_floats(4 * 64, 52, 0.01f);
  cache.append(bshd(k, 1, 4, 1, 64), bshd(v, 1, 4, 1, 64));
  for (int64_t j = 0; j < 4; ++j) {
    float kr[64], vr[64];
    cache.read_key(0, j, 0, kr);
    cache.read_value(0, j, 0, vr);
    float kmax = 0, vmax = 0;
    for (int d = 0; d < 64; ++d) {
      kmax = std::max(kmax, std::fabs(k[j * 64 + d]));
      vmax = std::max(vmax, std::fabs(v[j * 64 + d]));
    }
    for (int d = 0; d < 64; ++d) {
      EXPECT_LE(std::fabs(kr[d] - k[j * 64 + d]), kmax / 254 * (1 + 1e-5f));
      EXPECT_LE(std::fabs(vr[d] - v[j * 64 + d]), vmax / 254 * (1 + 1e-5f));
    }
  }
}

// Restores the default dispatch and the decode paths when a test ends, even
// on a failed assertion.
struct DefaultDecodeOnExit {
  ~DefaultDecodeOnExit() {
    internal::flash_force_target(0);
    internal::set_decode_fixed_point_enabled(true);
    internal::set_dot_units_enabled(true);
  }
};

TEST(KVCache, Int8InFixedPointStaysWithinItsBound) {
  // On AVX2, and on AVX-512 with AVX512-VNNI (and AMX-INT8, where present:
  // the same integers, Int8OnAmxEqualsVnniBitForBit) the decode kernel
  // computes with an int8 cache in integer arithmetic: q as 16-bit fixed
  // point (|q16| <= 32639,
  // each element within max|q| / 65278, q in log2 units), so a score moves by
  // at most e = max|q| / 65278 * max_j sum_d |k_jd|; and per block of 64 keys
  // the weights p_j * vscale_j as 16-bit fixed point (each within 1/65534 of
  // the block's largest), so the weighted sum moves by at most max|v| / 65534
  // * sum over blocks of 64 * the block's largest normalized weight w_j. Per
  // row, against the float path on the same cache and target: |do| <= ln 2 *
  // e * 2 max|v| + that, and |dlse| <= ln 2 * e (to first order; x1.5
  // margin, plus float32 slack). Checked on every target that has the path.
  DefaultDecodeOnExit restore;
  int targets = 0;
  for (const int64_t target : internal::flash_targets()) {
    if (!internal::decode_fixed_point_on(target)) continue;
    ++targets;
    internal::flash_force_target(target);
    SCOPED_TRACE(internal::flash_target_name(target));
    constexpr int64_t kBlock = 64;
    // (head_dim_v 48: P.V in integers on AVX2 only, in float on AVX-512)
    for (const auto& [heads, kv_heads, head_dim, head_dim_v, seq_q] :
         {std::tuple{32, 8, 128, 128, 1}, {8, 2, 64, 64, 2}, {4, 4, 256, 256, 1},
          {16, 2, 96, 96, 1}, {8, 4, 64, 192, 3}, {8, 2, 64, 48, 2}}) {
      SCOPED_TRACE(testing::Message() << heads << "/" << kv_heads << " d " << head_dim << "/"
                                      << head_dim_v << " seq_q " << seq_q);
      CacheSpec s;
      s.heads = heads, s.kv_heads = kv_heads, s.head_dim = head_dim, s.head_dim_v = head_dim_v;
      s.dtype = DType::kInt8;
      s.batch = 1;
      KVCache cache = make_cache(s, 61);
      const int64_t len = cache.lengths()[0];
      const auto q = random_floats(seq_q * heads * head_dim, 62, 2.0f);
      std::vector<float> lse_fixed, lse_float;
      const auto o_fixed = attend(cache, s, q, seq_q, Backend::kDecode, 0, &lse_fixed);
      internal::set_decode_fixed_point_enabled(false);
      const auto o_float = attend(cache, s, q, seq_q, Backend::kDecode, 0, &lse_float);
      internal::set_decode_fixed_point_enabled(true);

      std::vector<std::vector<float>> k(static_cast<size_t>(len * kv_heads)), v(k.size());
      for (int64_t j = 0; j < len; ++j) {
        for (int64_t h = 0; h < kv_heads; ++h) {
          k[j * kv_heads + h].resize(static_cast<size_t>(head_dim));
          v[j * kv_heads + h].resize(static_cast<size_t>(head_dim_v));
          cache.read_key(0, j, h, k[j * kv_heads + h].data());
          cache.read_value(0, j, h, v[j * kv_heads + h].data());
        }
      }
      const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
      double worst_o = 0, worst_lse = 0;
      for (int64_t i = 0; i < seq_q; ++i) {
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t kvh = h / (heads / kv_heads);
          const int64_t visible = len - seq_q + i + 1;  // bottom-right causal
          const float* qr = q.data() + (i * heads + h) * head_dim;
          double max_q = 0, max_k_l1 = 0, max_v = 0;
          for (int64_t d = 0; d < head_dim; ++d) max_q = std::max(max_q, std::fabs(qr[d]) * scale / std::log(2.0));
          std::vector<double> score(static_cast<size_t>(visible));
          for (int64_t j = 0; j < visible; ++j) {
            const std::vector<float>& kj = k[j * kv_heads + kvh];
            double dot = 0, l1 = 0;
            for (int64_t d = 0; d < head_dim; ++d) dot += double(qr[d]) * kj[d], l1 += std::fabs(kj[d]);
            score[j] = dot * scale;
            max_k_l1 = std::max(max_k_l1, l1);
            for (float x : v[j * kv_heads + kvh]) max_v = std::max(max_v, double(std::fabs(x)));
          }
          const double m = *std::max_element(score.begin(), score.end());
          double l = 0;
          for (double x : score) l += std::exp(x - m);
          double block_sum = 0;  // sum over blocks of 64 * the block's largest weight
          for (int64_t b0 = 0; b0 < visible; b0 += kBlock) {
            double largest = 0;
            for (int64_t j = b0; j < std::min(b0 + kBlock, visible); ++j) largest = std::max(largest, std::exp(score[j] - m) / l);
            block_sum += static_cast<double>(std::min(kBlock, visible - b0)) * largest;
          }
          const double e = max_q / 65278.0 * max_k_l1;  // log2 units
          const double o_bound = 1.5 * (std::log(2.0) * e * 2 * max_v + max_v / 65534.0 * block_sum) + 1e-6 * max_v;
          const double lse_bound = 1.5 * std::log(2.0) * e + 1e-5;
          for (int64_t c = 0; c < head_dim_v; ++c) {
            const size_t at = static_cast<size_t>((i * heads + h) * head_dim_v + c);
            const double diff = std::fabs(o_fixed[at] - o_float[at]);
            EXPECT_LE(diff, o_bound) << "row " << i << " head " << h << " column " << c;
            worst_o = std::max(worst_o, diff / o_bound);
          }
          const double dlse = std::fabs(lse_fixed[h * seq_q + i] - lse_float[h * seq_q + i]);
          EXPECT_LE(dlse, lse_bound) << "row " << i << " head " << h;
          worst_lse = std::max(worst_lse, dlse / lse_bound);
        }
      }
      EXPECT_NE(o_fixed, o_float) << "the fixed-point path did not run";
      // Measured: at most 1% of the bound (roundings to nearest mostly cancel);
      // a tenth still catches a biased rounding or a scale slightly off, which
      // the worst case would let through.
      EXPECT_LT(worst_o, 0.1);
      EXPECT_LT(worst_lse, 0.1);
    }
  }
  if (targets == 0) GTEST_SKIP() << "no target with the fixed-point path on this CPU";
}

// Shapes for the int8 integer paths' comparisons: 1 to 16 rows per kv head
// (one or two AMX row groups), head dims, partial blocks, paged caches (keys
// loaded in place or copied), splits and options.
struct Int8Shape {
  int64_t heads, kv_heads, head_dim, head_dim_v, seq_q, page_size, prefill;
  int splits;
  float softcap;
  int64_t window_left;
};
constexpr Int8Shape kInt8Shapes[] = {
    {32, 8, 128, 128, 1, 0, 600, 0, 0.0f, -1},
    {8, 2, 64, 64, 2, 16, 333, 3, 0.0f, -1},
    {16, 1, 256, 256, 1, 0, 700, 1, 0.0f, -1},
    {12, 4, 128, 64, 3, 48, 517, 2, 30.0f, -1},
    {4, 4, 192, 128, 1, 16, 600, 0, 0.0f, 100},
    {32, 8, 128, 128, 1, 0, 17, 0, 0.0f, -1},
    // pages of 24: 16 keys that straddle two pages are copied first
    {8, 2, 128, 128, 1, 24, 500, 0, 0.0f, -1}};

// One causal decode call of the kernel over an int8 cache of shape sh.
std::vector<float> int8_decode(const Int8Shape& sh, std::vector<float>& lse) {
  CacheSpec s;
  s.heads = sh.heads, s.kv_heads = sh.kv_heads, s.head_dim = sh.head_dim, s.head_dim_v = sh.head_dim_v;
  s.dtype = DType::kInt8;
  s.page_size = sh.page_size;
  s.shuffle_pages = sh.page_size > 0;
  s.prefill = sh.prefill;
  s.capacity = 768;
  KVCache cache = make_cache(s, 71);
  const auto q = random_floats(s.batch * sh.seq_q * s.heads * s.head_dim, 72, 2.0f);
  std::vector<float> o(static_cast<size_t>(s.batch * sh.seq_q * s.heads * s.head_dim_v));
  lse.assign(static_cast<size_t>(s.batch * s.heads * sh.seq_q), 0.0f);
  KVCacheAttentionParams p;
  p.q = bshd(q, s.batch, sh.seq_q, s.heads, s.head_dim);
  p.o = bshd(o, s.batch, sh.seq_q, s.heads, s.head_dim_v);
  p.lse = Tensor::contiguous(lse.data(), DType::kFloat32, {s.batch, s.heads, sh.seq_q});
  p.cache = &cache;
  p.causal = true;
  p.softcap = sh.softcap;
  p.window.left = sh.window_left;
  p.backend = Backend::kDecode;
  p.num_splits = sh.splits;
  attention_with_kvcache(p);
  return o;
}

std::string describe(const Int8Shape& sh) {
  return std::to_string(sh.heads) + "/" + std::to_string(sh.kv_heads) + " d " +
         std::to_string(sh.head_dim) + "/" + std::to_string(sh.head_dim_v) + " seq_q " +
         std::to_string(sh.seq_q) + " page " + std::to_string(sh.page_size) + " tokens " +
         std::to_string(sh.prefill);
}

TEST(KVCache, Int8OnAmxEqualsVnniBitForBit) {
  // With AMX-INT8 the int8 decode path splits q's and the weights' 16-bit
  // fixed point into bytes for the tile products and recombines the sums:
  // the same integers as the AVX512-VNNI path, so the same bits out.
  if (!internal::decode_fixed_point_on(0) || !internal::amx_int8_available()) {
    GTEST_SKIP() << "no AMX-INT8 on this CPU";
  }
  DefaultDecodeOnExit restore;
  for (const Int8Shape& sh : kInt8Shapes) {
    SCOPED_TRACE(describe(sh));
    std::vector<float> lse_amx, lse_vnni;
    const int64_t tasks = internal::decode_amx_tasks();
    internal::set_dot_units_enabled(true);
    const std::vector<float> o_amx = int8_decode(sh, lse_amx);
    EXPECT_GT(internal::decode_amx_tasks(), tasks) << "the AMX path did not run";
    internal::set_dot_units_enabled(false);
    const std::vector<float> o_vnni = int8_decode(sh, lse_vnni);
    EXPECT_EQ(o_amx, o_vnni);
    EXPECT_EQ(lse_amx, lse_vnni);
  }
}

TEST(KVCache, Int8IntegerPathsAgreeAcrossTargets) {
  // The integer paths of different targets (AVX-512 with VNNI, AVX2) form the
  // same integer scores and weights; what differs is the order in which each
  // row's softmax sum adds its lanes (16 or 8), so o and lse agree to a few
  // float32 roundings of l (the float path's own cross-target differences),
  // where a misplaced column, key or scale would be off by the data's size.
  DefaultDecodeOnExit restore;
  internal::set_dot_units_enabled(false);
  std::vector<int64_t> targets;
  for (const int64_t target : internal::flash_targets()) {
    if (internal::decode_fixed_point_on(target)) targets.push_back(target);
  }
  if (targets.size() < 2) GTEST_SKIP() << "fewer than two targets with the fixed-point path";
  for (const Int8Shape& sh : kInt8Shapes) {
    SCOPED_TRACE(describe(sh));
    internal::flash_force_target(targets[0]);
    std::vector<float> lse_first;
    const std::vector<float> o_first = int8_decode(sh, lse_first);
    float max_o = 0.0f;
    for (float x : o_first) max_o = std::max(max_o, std::fabs(x));
    for (size_t t = 1; t < targets.size(); ++t) {
      SCOPED_TRACE(internal::flash_target_name(targets[t]));
      internal::flash_force_target(targets[t]);
      std::vector<float> lse;
      const std::vector<float> o = int8_decode(sh, lse);
      double worst_o = 0, worst_lse = 0;
      for (size_t i = 0; i < o.size(); ++i) worst_o = std::max(worst_o, double(std::fabs(o[i] - o_first[i])));
      for (size_t i = 0; i < lse.size(); ++i) {
        worst_lse = std::max(worst_lse, std::fabs(lse[i] - lse_first[i]) / (1.0 + std::fabs(lse_first[i])));
      }
      EXPECT_LE(worst_o, 4e-6 * max_o);
      EXPECT_LE(worst_lse, 4e-6);
    }
  }
}

TEST(KVCache, Int8EngineNamesThePathThatRuns) {
  // decode_int8_engine (printed by `qkv bench decode`) against what runs, on
  // every target, with the fixed point and the tile units on and off: a
  // fixed-point engine gives other bits than the float path, AMX counts tasks.
  DefaultDecodeOnExit restore;
  const Int8Shape sh{8, 2, 64, 64, 1, 0, 300, 0, 0.0f, -1};
  for (const int64_t target : internal::flash_targets()) {
    internal::flash_force_target(target);
    internal::set_decode_fixed_point_enabled(false);
    internal::set_dot_units_enabled(false);
    const std::string float_engine = internal::decode_int8_engine(64, 64, 4);
    EXPECT_EQ(float_engine, "float (rows widened in registers)") << internal::flash_target_name(target);
    std::vector<float> lse;
    const std::vector<float> o_float = int8_decode(sh, lse);
    for (const bool units : {false, true}) {
      internal::set_decode_fixed_point_enabled(true);
      internal::set_dot_units_enabled(units);
      const std::string engine = internal::decode_int8_engine(64, 64, 4);
      SCOPED_TRACE(std::string(internal::flash_target_name(target)) + ": " + engine);
      const int64_t tasks = internal::decode_amx_tasks();
      const std::vector<float> o = int8_decode(sh, lse);
      EXPECT_EQ(engine.find("fixed point") != std::string::npos, o != o_float);
      EXPECT_EQ(engine.find("AMX") != std::string::npos, internal::decode_amx_tasks() > tasks);
      EXPECT_EQ(engine.find("fixed point") != std::string::npos, internal::decode_fixed_point_on(target));
    }
  }
}

// AttentionProblem::tokens tells the decode kernel when a run of tokens is
// one contiguous stretch of rows (its next-block requests then take one span
// per tensor, and the int8 scales are turned 16 keys at a time); the rows it
// gives must be key_row's and value_row's, the flag true exactly where every
// token's rows follow the previous token's.
TEST(KVCache, TokenRunsAreAdjacentExactlyWhereTheirRowsAre) {
  using internal::AttentionProblem;
  const auto check = [](const AttentionProblem& p, int64_t b, int64_t j0, int64_t n) -> bool {
    SCOPED_TRACE(testing::Message() << "b " << b << " j0 " << j0 << " n " << n);
    using Rows = std::vector<AttentionProblem::TokenRows>;
    Rows keys(static_cast<size_t>(n)), values(keys.size());
    const bool adjacent = p.tokens(b, j0, n, keys.data(), values.data());
    const int64_t elem = static_cast<int64_t>(dtype_size(p.kv_dtype));
    // Token i's rows (and scales) follow token 0's by i tokens' worth.
    const auto follows = [&](const Rows& t, int64_t i, int64_t dim) {
      const int64_t row = dim * elem;
      return (p.kv_heads == 1 || t[i].head_bytes == row) &&
             t[i].data == t[0].data + i * p.kv_heads * row &&
             (t[i].scales == nullptr || t[i].scales == t[0].scales + i * p.kv_heads);
    };
    bool expected = true;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < p.kv_heads; ++h) {
        EXPECT_EQ(keys[i].row(h).data, p.key_row(b, j0 + i, h).data);
        EXPECT_EQ(values[i].row(h).data, p.value_row(b, j0 + i, h).data);
        EXPECT_EQ(keys[i].row(h).scale, p.key_row(b, j0 + i, h).scale);
      }
      expected = expected && follows(keys, i, p.head_dim) && follows(values, i, p.head_dim_v);
    }
    EXPECT_EQ(adjacent, expected);
    return adjacent;
  };
  for (const DType dtype : {DType::kFloat16, DType::kInt8}) {
    for (const int64_t page_size : {int64_t{0}, int64_t{16}}) {
      for (const bool shuffle : {false, true}) {
        if (shuffle && page_size == 0) continue;
        SCOPED_TRACE(testing::Message() << dtype_name(dtype) << " page_size " << page_size
                                        << (shuffle ? " shuffled" : ""));
        CacheSpec s;
        s.dtype = dtype;
        s.page_size = page_size;
        s.shuffle_pages = shuffle;
        s.capacity = 160;
        s.prefill = 150;
        const KVCache cache = make_cache(s, 5);
        AttentionProblem p;
        p.cache = &cache;
        p.kv_heads = s.kv_heads;
        p.head_dim = s.head_dim;
        p.head_dim_v = s.head_dim_v;
        p.kv_dtype = dtype;
        int flags = 0;
        for (const auto& [j0, n] : {std::pair<int64_t, int64_t>{0, 64}, {64, 64}, {3, 13}, {16, 16},
                                    {10, 1}, {100, 50}}) {
          for (int64_t b = 0; b < s.batch; ++b) flags += check(p, b, j0, n) ? 1 : 0;
        }
        if (page_size == 0 || !shuffle) {
          EXPECT_EQ(flags, 12);  // pages in order lie back to back
        } else {
          EXPECT_LT(flags, 12);  // some run crosses pages that do not
        }
      }
    }
  }
  // Dense K/V tensors: back to back unless the token stride leaves gaps.
  std::vector<float> k(2 * 40 * 3 * 24), v(k.size());
  for (const int64_t seq_stride : {int64_t{3 * 24}, int64_t{2 * 3 * 24}}) {
    AttentionProblem p;
    p.kv_heads = 3;
    p.head_dim = p.head_dim_v = 24;
    p.k = k.data();
    p.v = v.data();
    p.k_stride = p.v_stride = {seq_stride * 20, seq_stride, 24};
    EXPECT_EQ(check(p, 1, 2, 17), seq_stride == 3 * 24);
    EXPECT_TRUE(check(p, 1, 5, 1));
  }
}

TEST(KVCache, CopiesAreDeepAndMovesKeepTheTokens) {
  // Pools of 4 MiB and more take the huge-page path of the pool buffer, smaller
  // ones the plain one: both copied, moved and assigned.
  for (const int64_t capacity : {int64_t{40}, int64_t{8192}}) {
    CacheSpec spec;
    spec.batch = 1;
    spec.kv_heads = 4;
    spec.head_dim = spec.head_dim_v = 128;
    spec.capacity = capacity;
    spec.prefill = 30;
    spec.dtype = DType::kInt8;
    KVCache original = make_cache(spec, 71);
    std::vector<float> before(128), after(128);
    original.read_value(0, 29, 3, before.data());

    KVCache copy = original;
    const auto k = random_floats(4 * 128, 72, 5.0f);
    copy.set_lengths({29});
    copy.append(bshd(k, 1, 1, 4, 128), bshd(k, 1, 1, 4, 128));  // overwrites token 29 of the copy
    copy.read_value(0, 29, 3, after.data());
    EXPECT_NE(before, after) << capacity;
    original.read_value(0, 29, 3, after.data());
    EXPECT_EQ(before, after) << "the original changed with its copy, capacity " << capacity;

    KVCache moved = std::move(original);
    moved.read_value(0, 29, 3, after.data());
    EXPECT_EQ(before, after) << capacity;
    copy = moved;
    copy.read_value(0, 29, 3, after.data());
    EXPECT_EQ(before, after) << capacity;
  }
}

// Bad input: a clear qkv::Error, and the cache (lengths and bytes) unchanged.
struct Snapshot {
  std::vector<int64_t> lengths;
  std::vector<float> first_key;
  explicit Snapshot(const KVCache& c) : lengths(c.lengths()), first_key(c.config().head_dim) {
    c.read_key(0, 0, 0, first_key.data());
  }
  bool operator==(const Snapshot&) const = default;
};

template <typename F>
void expect_error_and_unchanged(KVCache& cache, F&& f, const std::string& words) {
  const Snapshot before(cache);
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning \"" << words << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
  EXPECT_TRUE(Snapshot(cache) == before) << words;
}

TEST(KVCache, BadInputIsAnErrorThatChangesNothing) {
  KVCacheConfig config{2, 10, 2, 8, 8, DType::kFloat16, 4};
  KVCache cache(config);
  const auto k = random_floats(2 * 6 * 2 * 8, 61);
  cache.append(bshd(k, 2, 6, 2, 8), bshd(k, 2, 6, 2, 8));
  expect_error_and_unchanged(cache, [&] { cache.append(bshd(k, 2, 6, 2, 8), bshd(k, 2, 6, 2, 8)); },
                             "exceeds the cache capacity (10)");
  expect_error_and_unchanged(cache, [&] { cache.set_lengths({-1, 2}); }, "lengths[0] (-1)");
  expect_error_and_unchanged(cache, [&] { cache.set_lengths({3, 11}); }, "lengths[1] (11)");
  expect_error_and_unchanged(cache, [&] { cache.set_lengths({3}); }, "lengths has 1 entries");
  expect_error_and_unchanged(cache, [&] { cache.set_block_table({0, 1, 2, 99, 4, 5}); },
                             "block_table[1, 0] (99)");
  expect_error_and_unchanged(cache, [&] { cache.append(bshd(k, 2, 6, 1, 16), bshd(k, 2, 6, 1, 16)); },
                             "k_new has shape [2, 6, 1, 16]");
  std::vector<uint8_t> bytes(2 * 6 * 2 * 8);
  expect_error_and_unchanged(
      cache, [&] { cache.append(Tensor::contiguous(bytes.data(), DType::kBool, {2, 6, 2, 8}), bshd(k, 2, 6, 2, 8)); },
      "k_new must be float32, float16 or bfloat16, not bool");
  Rope bad;
  bad.rotary_dim = 3;
  expect_error_and_unchanged(cache, [&] { cache.append(bshd(k, 2, 1, 2, 8), bshd(k, 2, 1, 2, 8), bad); },
                             "rotary_dim (3)");
  // attention_with_kvcache validates its own arguments before appending.
  std::vector<float> q(2 * 2 * 4 * 8), o(q.size());
  KVCacheAttentionParams p;
  p.q = bshd(q, 2, 2, 4, 8);
  p.k_new = bshd(k, 2, 2, 2, 8);
  p.v_new = bshd(k, 2, 2, 2, 8);
  p.o = bshd(o, 2, 2, 4, 7);  // wrong head_dim_v
  p.cache = &cache;
  expect_error_and_unchanged(cache, [&] { attention_with_kvcache(p); }, "o has shape [2, 2, 4, 7]");
  p.o = bshd(o, 2, 2, 4, 8);
  p.q = bshd(q, 2, 2, 3, 8);
  expect_error_and_unchanged(cache, [&] { attention_with_kvcache(p); }, "kv_heads (2) must divide heads (3)");
  p.q = bshd(q, 2, 2, 4, 8);
  p.num_splits = -1;
  expect_error_and_unchanged(cache, [&] { attention_with_kvcache(p); }, "num_splits (-1)");
  EXPECT_THROW(KVCache(KVCacheConfig{1, 8, 1, 8, 8, DType::kBool}), Error);
  EXPECT_THROW(KVCache(KVCacheConfig{0, 8, 1, 8, 8, DType::kFloat16}), Error);
}

}  // namespace
}  // namespace qkv::test
