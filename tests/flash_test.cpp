// Backend::kFlash against the reference, under THE tolerance rule
// (test_util.h), on every SIMD target this CPU runs: every case goes through
// expect_flash_matches_reference, which forces each target of flash_targets()
// in turn and names it in a failure, with the case and the first bad index.
//
// Sweeps follow STYLE.md: lengths straddling tile edges (1, tile-1, tile,
// tile+1, 3*tile+5) for explicit small tiles and plausible default ones, odd
// head dims, GQA groups, seq_q != seq_kv, every option alone and combined,
// strided layouts, overflow-size logits, thread counts, masked tiles.
#include <cfloat>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include "kernels/flash_forward.h"
#include "runtime/amx.h"
#include "runtime/caches.h"
#include "runtime/stream_output.h"
#include "test_util.h"

namespace qkv::test {
namespace {

void check_all(const std::vector<Case>& cases) {
  for (const Case& c : cases) expect_flash_matches_reference(c);
}

// Explicit small tiles: many tiles per call, so every edge is crossed.
constexpr int kBlockQ = 4, kBlockKv = 16;

TEST(Flash, TargetsAreListed) {
  const std::vector<int64_t> targets = internal::flash_targets();
  ASSERT_FALSE(targets.empty());
  for (int64_t t : targets) ASSERT_NE(internal::flash_target_name(t), nullptr);
  std::printf("flash targets: %s\n", target_list().c_str());
}

TEST(Flash, TileEdgesWithSmallExplicitTiles) {
  // 1, tile-1, tile, tile+1, 3*tile+5 for block_q = 4 and block_kv = 16.
  const int64_t q_lengths[] = {1, kBlockQ - 1, kBlockQ, kBlockQ + 1, 3 * kBlockQ + 5};
  const int64_t kv_lengths[] = {1, kBlockKv - 1, kBlockKv, kBlockKv + 1, 3 * kBlockKv + 5};
  std::vector<Case> cases;
  uint32_t seed = 1;
  for (int64_t sq : q_lengths) {
    for (int64_t sk : kv_lengths) {
      const Case c =
          Case().seq_q(sq).seq_kv(sk).heads(4).kv_heads(2).head_dim(16).tiles(kBlockQ, kBlockKv);
      cases.push_back(Case(c).seed(seed++));
      cases.push_back(Case(c).causal().allow_all_empty().seed(seed++));
      cases.push_back(Case(c).causal(CausalAlign::kTopLeft).seed(seed++));
    }
  }
  check_all(cases);
}

TEST(Flash, OddExplicitTiles) {
  // The API accepts any tile size; the kernel may round, not misbehave.
  std::vector<Case> cases;
  for (const auto& [bq, bkv] :
       {std::pair{1, 1}, {1, 7}, {3, 5}, {5, 13}, {7, 33}, {64, 8}, {4096, 65536}}) {
    cases.push_back(
        Case().seq_q(23).seq_kv(41).heads(4).kv_heads(2).head_dim(24).tiles(bq, bkv).causal());
    cases.push_back(Case().seq_q(9).seq_kv(70).head_dim(5).tiles(bq, bkv).window(6, 3).sinks());
  }
  check_all(cases);
}

TEST(Flash, TileEdgesWithDefaultTiles) {
  // Edges of the likely default tiles (16 .. 128), and 3*64+5.
  const int64_t lengths[] = {1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 197, 255, 256, 257};
  std::vector<Case> cases;
  uint32_t seed = 100;
  for (int64_t n : lengths) {
    cases.push_back(Case().seq_q(5).seq_kv(n).head_dim(32).seed(seed++));
    cases.push_back(Case().seq_q(5).seq_kv(n).head_dim(32).causal().allow_all_empty().seed(seed++));
    cases.push_back(Case().seq_q(n).seq_kv(45).head_dim(32).seed(seed++));
    cases.push_back(Case().seq_q(n).seq_kv(45).head_dim(32).causal().allow_all_empty().seed(seed++));
  }
  // Square, causal, around the same edges, with GQA rows.
  for (int64_t n : {63, 64, 65, 129, 197}) {
    cases.push_back(Case().seq(n).heads(4).kv_heads(1).head_dim(64).causal().seed(seed++));
  }
  check_all(cases);
}

TEST(Flash, HeadDims) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (head_dim, head_dim_v)
  for (int64_t d : {1, 7, 80, 96, 128, 192, 256}) dims.emplace_back(d, d);
  for (const auto& p : {std::pair<int64_t, int64_t>{80, 64}, {64, 80}, {7, 1}, {1, 7}, {256, 128},
                        {128, 256}, {192, 128}, {13, 200}, {33, 17}}) {
    dims.push_back(p);
  }
  std::vector<Case> cases;
  uint32_t seed = 200;
  for (const auto& [d, dv] : dims) {
    const Case c = Case().seq_q(9).seq_kv(37).heads(2).head_dim(d).head_dim_v(dv);
    cases.push_back(Case(c).seed(seed++));
    cases.push_back(Case(c).causal().tiles(kBlockQ, kBlockKv).seed(seed++));
  }
  check_all(cases);
}

TEST(Flash, GqaGroupsAndMqa) {
  std::vector<Case> cases;
  uint32_t seed = 300;
  for (const auto& [h, hk] : {std::pair{8, 8}, {8, 4}, {8, 2}, {8, 1}, {6, 3}, {5, 1}, {16, 2}}) {
    for (int64_t sq : {1, 7, 33}) {
      const Case c = Case().batch(2).seq_q(sq).seq_kv(45).heads(h).kv_heads(hk).head_dim(24);
      cases.push_back(Case(c).seed(seed++));
      cases.push_back(Case(c).causal().tiles(kBlockQ, kBlockKv).seed(seed++));
    }
  }
  check_all(cases);
}

TEST(Flash, SeqQDiffersFromSeqKv) {
  uint32_t seed = 400;
  for (const auto& [sq, sk] : {std::pair{1, 100}, {7, 64}, {64, 7}, {100, 1}, {33, 17}, {17, 33}}) {
    for (int align = 0; align < 3; ++align) {
      for (bool small_tiles : {false, true}) {
        Case c = Case().seq_q(sq).seq_kv(sk).heads(3).head_dim(20).seed(seed++);
        if (align == 1) c.causal(CausalAlign::kBottomRight);
        if (align == 2) c.causal(CausalAlign::kTopLeft);
        if (small_tiles) c.tiles(kBlockQ, kBlockKv);
        const RowStats stats = expect_flash_matches_reference(c);
        if (align == 1 && sq > sk) {
          // Bottom-right with more queries than keys: the first rows see nothing.
          EXPECT_EQ(stats.empty_rows, 3 * (sq - sk)) << c.describe();
        }
      }
    }
  }
}

TEST(Flash, Causal) {
  std::vector<Case> cases;
  uint32_t seed = 500;
  for (const auto& [sq, sk] :
       {std::pair{16, 16}, {5, 40}, {40, 5}, {1, 1}, {33, 65}, {65, 33}, {100, 100}}) {
    for (CausalAlign align : {CausalAlign::kBottomRight, CausalAlign::kTopLeft}) {
      const Case c = Case().seq_q(sq).seq_kv(sk).heads(2).head_dim(16).causal(align).allow_all_empty();
      cases.push_back(Case(c).seed(seed++));
      cases.push_back(Case(c).tiles(kBlockQ, kBlockKv).seed(seed++));
    }
  }
  check_all(cases);
}

TEST(Flash, Window) {
  const std::pair<int64_t, int64_t> windows[] = {{-1, 0}, {0, -1}, {0, 0},  {1, 1},  {3, 0},  {0, 3},
                                                 {7, -1}, {-1, 7}, {16, 16}, {2, 5}, {40, 0}, {0, 40}};
  std::vector<Case> cases;
  uint32_t seed = 600;
  for (const auto& [left, right] : windows) {
    for (const auto& [sq, sk] : {std::pair{20, 20}, {8, 40}, {40, 8}}) {
      const Case c = Case().seq_q(sq).seq_kv(sk).head_dim(12).window(left, right).allow_all_empty();
      cases.push_back(Case(c).seed(seed++));
      cases.push_back(Case(c).tiles(kBlockQ, kBlockKv).seed(seed++));
    }
    // With causal (both alignments) on top.
    cases.push_back(
        Case().seq_q(30).seq_kv(50).window(left, right).causal().allow_all_empty().seed(seed++));
    cases.push_back(Case().seq_q(30).seq_kv(50).window(left, right).causal(CausalAlign::kTopLeft)
        .allow_all_empty().seed(seed++));
  }
  // A narrow band over long rows: most kv tiles are skipped.
  cases.push_back(Case().seq(300).head_dim(8).window(5, 5).tiles(kBlockQ, kBlockKv));
  cases.push_back(Case().seq(300).head_dim(8).window(70, 0));
  check_all(cases);
}

TEST(Flash, Softcap) {
  std::vector<Case> cases;
  uint32_t seed = 700;
  for (float cap : {0.5f, 5.0f, 30.0f}) {
    for (float logits : {3.0f, 50.0f, 1e3f}) {
      cases.push_back(Case().seq_q(13).seq_kv(50).heads(2).softcap(cap).logits(logits).seed(seed++));
      cases.push_back(Case().seq_q(13).seq_kv(50).softcap(cap).logits(logits).causal()
          .tiles(kBlockQ, kBlockKv).seed(seed++));
    }
  }
  check_all(cases);
}

TEST(Flash, Alibi) {
  std::vector<Case> cases;
  uint32_t seed = 800;
  for (bool per_batch : {false, true}) {
    for (const auto& [sq, sk] : {std::pair{50, 50}, {10, 70}, {70, 10}}) {
      for (int causal = 0; causal < 3; ++causal) {
        Case c = Case().batch(2).seq_q(sq).seq_kv(sk).heads(4).kv_heads(2).seed(seed++)
            .allow_all_empty();
        per_batch ? c.alibi_per_batch() : c.alibi();
        if (causal == 1) c.causal();
        if (causal == 2) c.causal(CausalAlign::kTopLeft);
        cases.push_back(c);
        cases.push_back(Case(c).tiles(kBlockQ, kBlockKv));
      }
    }
  }
  check_all(cases);
}

TEST(Flash, Sinks) {
  std::vector<Case> cases;
  uint32_t seed = 900;
  for (const auto& [sq, sk] : {std::pair{1, 1}, {20, 20}, {8, 60}, {40, 9}}) {
    const Case c = Case().seq_q(sq).seq_kv(sk).heads(4).kv_heads(2).sinks();
    cases.push_back(Case(c).seed(seed++));
    cases.push_back(Case(c).causal().tiles(kBlockQ, kBlockKv).seed(seed++).allow_all_empty());
    cases.push_back(Case(c).logits(40).seed(seed++));  // sinks far below the scores
  }
  check_all(cases);

  // Sinks far above and below every score, and rows with no key (o = 0,
  // lse = -inf even with a sink).
  for (float sink : {-80.0f, 60.0f}) {
    Workload w(Case().seq_q(12).seq_kv(4).heads(2).sinks().causal().seed(17));
    w.sinks().at({0}) = sink;
    w.sinks().at({1}) = -sink;
    const RowStats stats = expect_flash_matches_reference(w);
    EXPECT_EQ(stats.empty_rows, 2 * 8);  // diag = -8
  }
}

// Mask shapes broadcastable to [batch=2, heads=3, seq_q=11, seq_kv=37].
std::vector<std::vector<int64_t>> mask_shapes() {
  return {{37}, {1, 37}, {11, 37}, {11, 1}, {1}, {3, 11, 37}, {3, 1, 37}, {1, 11, 37},
          {2, 1, 11, 37}, {2, 3, 11, 37}, {1, 1, 1, 37}, {2, 1, 1, 1}, {1, 3, 1, 1}, {2, 3, 11, 1}};
}

TEST(Flash, BoolMaskBroadcasts) {
  std::vector<Case> cases;
  uint32_t seed = 1000;
  for (const auto& shape : mask_shapes()) {
    for (double density : {0.7, 0.15}) {
      const Case c = Case().batch(2).seq_q(11).seq_kv(37).heads(3).head_dim(10)
          .bool_mask(shape, density).allow_all_empty();
      cases.push_back(Case(c).seed(seed++));
      cases.push_back(Case(c).tiles(kBlockQ, kBlockKv).seed(seed++));
    }
    // Size-1 dims expanded with stride 0.
    cases.push_back(Case().batch(2).seq_q(11).seq_kv(37).heads(3).bool_mask(shape, 0.6, true)
        .causal().seed(seed++).allow_all_empty());
  }
  check_all(cases);
}

TEST(Flash, FloatMaskBroadcasts) {
  std::vector<Case> cases;
  uint32_t seed = 1100;
  for (const auto& shape : mask_shapes()) {
    const Case c = Case().batch(2).seq_q(11).seq_kv(37).heads(3).head_dim(10);
    cases.push_back(Case(c).float_mask(shape).seed(seed++));
    cases.push_back(Case(c).float_mask(shape).tiles(kBlockQ, kBlockKv).seed(seed++));
    cases.push_back(Case(c).float_mask(shape, 0.0, true).seed(seed++));
  }
  check_all(cases);
}

TEST(Flash, FloatMaskWithMinusInfinity) {
  // Additive masks as PyTorch writes them: -inf = masked. A row of only -inf
  // is a row with no visible key (o = 0, lse = -inf), never NaN.
  std::vector<Case> cases;
  uint32_t seed = 1200;
  for (double share : {0.3, 0.9, 1.0}) {
    for (const auto& shape : {std::vector<int64_t>{11, 37}, {2, 3, 11, 37}, {37}}) {
      const Case c =
          Case().batch(2).seq_q(11).seq_kv(37).heads(3).float_mask(shape, share).allow_all_empty();
      cases.push_back(Case(c).seed(seed++));
      cases.push_back(Case(c).tiles(kBlockQ, kBlockKv).sinks().seed(seed++));
    }
  }
  check_all(cases);
}

TEST(Flash, FloatMaskWithMinusFltMaxStaysFinite) {
  // -FLT_MAX is finite: s + mask must not overflow to -inf on the way (e.g.
  // by scaling it by log2(e)). A row of only -FLT_MAX is uniform attention.
  std::vector<Case> cases;
  for (double share : {0.5, 1.0}) {
    cases.push_back(Case().seq_q(9).seq_kv(40).float_mask({9, 40}, share, false, -FLT_MAX).seed(1300));
    cases.push_back(Case().seq_q(9).seq_kv(40).float_mask({9, 40}, share, false, -FLT_MAX)
        .tiles(kBlockQ, kBlockKv).seed(1301));
  }
  check_all(cases);
}

TEST(Flash, FullyMaskedTilesAndRows) {
  // With 4 x 16 tiles: the tile (q 4..7, kv 16..31), the kv block 32..47 for
  // every row, rows 9 and 10 entirely, and the last row but one key.
  const auto pattern = [](int64_t, int64_t, int64_t i, int64_t j) {
    if (i >= 4 && i < 8 && j >= 16 && j < 32) return 0.0f;
    if (j >= 32 && j < 48) return 0.0f;
    if (i == 9 || i == 10) return 0.0f;
    if (i == 15) return j == 63 ? 1.0f : 0.0f;
    return 1.0f;
  };
  const auto additive = [&](int64_t b, int64_t h, int64_t i, int64_t j) {
    return pattern(b, h, i, j) != 0 ? 0.5f * static_cast<float>(j % 3) : kNegInf;
  };
  std::vector<Case> cases;
  for (bool sinks : {false, true}) {
    for (int tiles = 0; tiles < 2; ++tiles) {
      Case c = Case().seq_q(16).seq_kv(64).heads(4).kv_heads(2).mask_fn("masked tile, block, rows",
                                                                        DType::kBool, pattern);
      if (sinks) c.sinks();
      if (tiles) c.tiles(kBlockQ, kBlockKv);
      const RowStats stats = expect_flash_matches_reference(c);
      EXPECT_EQ(stats.empty_rows, 2 * 4);
      Case f = Case().seq_q(16).seq_kv(64).heads(4).kv_heads(2).mask_fn("same, as -inf",
                                                                        DType::kFloat32, additive);
      if (sinks) f.sinks();
      if (tiles) f.tiles(kBlockQ, kBlockKv);
      cases.push_back(f);
    }
  }
  // Default-size tiles: the first 64 rows masked over the first 128 keys.
  cases.push_back(Case().seq_q(100).seq_kv(300).head_dim(8).mask_fn(
      "rows < 64 see keys >= 128", DType::kBool,
      [](int64_t, int64_t, int64_t i, int64_t j) { return i < 64 && j < 128 ? 0.0f : 1.0f; }));
  // Whole query tiles with no key: causal bottom-right, seq_q >> seq_kv.
  cases.push_back(Case().seq_q(40).seq_kv(8).causal().tiles(kBlockQ, kBlockKv));
  cases.push_back(Case().seq_q(150).seq_kv(20).causal());
  check_all(cases);
}

TEST(Flash, EmptyDimensions) {
  check_all({Case().seq_q(5).seq_kv(0).allow_all_empty(),
             Case().seq_q(5).seq_kv(0).sinks().allow_all_empty(), Case().seq_q(0).seq_kv(5),
             Case().batch(0), Case().seq_q(3).seq_kv(0).float_mask({3, 0}).allow_all_empty()});
}

TEST(Flash, StridedLayouts) {
  const Layout all[] = {Layout::kBshd, Layout::kBhsd, Layout::kPadded};
  std::vector<Case> cases;
  uint32_t seed = 1400;
  for (Layout lq : all) {
    for (Layout lk : all) {
      for (Layout lv : all) {
        for (Layout lo : all) {
          cases.push_back(Case().batch(2).seq_q(9).seq_kv(21).heads(4).kv_heads(2).head_dim(12)
              .head_dim_v(5).layouts(lq, lk, lv, lo).lse_layout(all[seed % 3]).causal()
              .seed(seed++));
        }
      }
    }
  }
  for (Layout l : all) {
    cases.push_back(Case().batch(2).seq(70).heads(2).head_dim(64).layout(l).lse_layout(l).seed(seed++));
    cases.push_back(Case().batch(2).seq(37).heads(4).kv_heads(1).head_dim(80).head_dim_v(64)
        .layout(l).lse_layout(l).tiles(kBlockQ, kBlockKv).seed(seed++));
  }
  check_all(cases);
}

TEST(Flash, BatchGreaterThanOne) {
  check_all({
      Case().batch(3).seq_q(17).seq_kv(33).heads(8).kv_heads(2).head_dim(80).head_dim_v(64).causal(),
      Case().batch(3).seq(40).heads(4).alibi_per_batch().sinks(),
      Case().batch(3).seq_q(12).seq_kv(40).heads(4).kv_heads(2).bool_mask({3, 1, 12, 40}, 0.5),
      Case().batch(4).seq(24).heads(2).float_mask({4, 2, 24, 24}, 0.2).tiles(kBlockQ, kBlockKv),
      Case().batch(5).seq_q(1).seq_kv(77).heads(6).kv_heads(3),
  });
}

TEST(Flash, OnePairPerTaskWithManySmallHeads) {
  // 8 or more (batch, kv head) pairs per thread, each small: every thread
  // packs a pair into its own slot and runs the pair's tiles (run_pairs).
  check_all({
      Case().batch(3).seq_q(45).seq_kv(70).heads(16).kv_heads(8).head_dim(40).causal().threads(2),
      Case().batch(2).seq(33).heads(12).head_dim(16).tiles(kBlockQ, kBlockKv).sinks().threads(2),
      Case().seq_q(20).seq_kv(90).heads(27).head_dim(24).window(7, 2).alibi().threads(3),
  });
}

TEST(Flash, HeadsPastTheL2TakeLargerTilesAndWholePairs) {
  // With the L2 taken as 64 KiB, heads whose K/V pass it take 192-row tiles
  // (Geometry); with 256 KiB, pairs of up to a whole L2 (144 KiB packed on
  // AVX-512, past half of it) one pair per task (pair_per_task). The results
  // do not depend on these choices: the test runs the paths, the reference
  // checks them.
  struct Restore {
    ~Restore() { internal::set_l2_cache_bytes_for_test(0); }
  } restore;
  internal::set_l2_cache_bytes_for_test(int64_t{64} << 10);
  check_all({Case().seq(2100).heads(4).kv_heads(2).head_dim(4).causal(),
             Case().seq_q(500).seq_kv(2400).heads(2).head_dim(4).head_dim_v(3).threads(2)});
  internal::set_l2_cache_bytes_for_test(int64_t{256} << 10);
  check_all({Case().batch(4).seq(1800).heads(4).head_dim(4).causal().threads(2)});
}

TEST(Caches, SizesAsSysfsWritesThem) {
  EXPECT_EQ(internal::parse_cache_size("2048K"), int64_t{2} << 20);
  EXPECT_EQ(internal::parse_cache_size("1M"), int64_t{1} << 20);
  EXPECT_EQ(internal::parse_cache_size("48K\n"), int64_t{48} << 10);
  EXPECT_EQ(internal::parse_cache_size("524288"), int64_t{512} << 10);
  EXPECT_EQ(internal::parse_cache_size(""), -1);
  EXPECT_EQ(internal::parse_cache_size("K"), -1);
  EXPECT_EQ(internal::parse_cache_size("12Q"), -1);
  EXPECT_EQ(internal::parse_cache_size("99999999999999999999K"), -1);
}

TEST(Caches, L2IsTheOneTheSystemDescribes) {
  // Where Linux's sysfs lists a level-2 cache of cpu0, l2_cache_bytes() is the
  // C library's size or that one, never the 512 KiB stand-in (glibc on 64-bit
  // Arm reports 0: make test-arm runs this there).
  const int64_t sysfs = internal::sysfs_cache_bytes(2);
  if (sysfs < (int64_t{64} << 10) || sysfs > (int64_t{64} << 20)) GTEST_SKIP() << "no plausible L2 in sysfs";
  const int64_t libc = sysconf(_SC_LEVEL2_CACHE_SIZE);
  const int64_t got = internal::l2_cache_bytes();
  EXPECT_TRUE(got == sysfs || got == libc) << got << " bytes; sysfs " << sysfs << ", sysconf " << libc;
}

TEST(Caches, L3IsTheOneSysfsDescribes) {
  // sysfs names the L3 the process's cores share (on a Zen 3 VM: 32 MiB where
  // glibc's sysconf reports the socket's 256 MiB); without one, the C
  // library's size or 0.
  const int64_t sysfs = internal::sysfs_cache_bytes(3);
  const int64_t libc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const int64_t got = internal::l3_cache_bytes();
  if (sysfs > 0) {
    EXPECT_EQ(got, sysfs) << "sysconf " << libc;
  } else {
    EXPECT_EQ(got, libc > 0 ? libc : 0);
  }
}

TEST(Flash, LargeLogitsMatchTheReference) {
  // A naive exp(s) overflows from s ~ 89; these reach 1e4 in magnitude.
  std::vector<Case> cases;
  uint32_t seed = 1500;
  for (float logits : {100.0f, 1e3f, 1e4f}) {
    cases.push_back(Case().seq_q(20).seq_kv(70).heads(2).logits(logits).seed(seed++));
    cases.push_back(
        Case().seq_q(20).seq_kv(70).logits(logits).causal().tiles(kBlockQ, kBlockKv).seed(seed++));
    cases.push_back(Case().seq_q(20).seq_kv(70).logits(logits).sinks().alibi().seed(seed++));
    cases.push_back(Case().seq_q(20).seq_kv(70).logits(logits).float_mask({20, 70}, 0.2).seed(seed++));
    cases.push_back(Case().seq_q(20).seq_kv(70).logits(logits).softcap(30).seed(seed++));
  }
  // Every score near +-1e4, within a few units of each other: near ties,
  // where a missed max subtraction or rescale is visible.
  for (float offset : {1e4f, -1e4f, 3e3f}) {
    cases.push_back(Case().seq_q(20).seq_kv(130).heads(2).logit_offset(offset).seed(seed++));
    cases.push_back(Case().seq_q(20).seq_kv(130).logit_offset(offset).causal()
        .tiles(kBlockQ, kBlockKv).seed(seed++));
    cases.push_back(Case().seq_q(20).seq_kv(130).logit_offset(offset).sinks().seed(seed++));
  }
  check_all(cases);
}

TEST(Flash, HugeLogitsStayFinite) {
  // Scores of 1e10 and 1e20 in magnitude (float32: float16 inputs would
  // overflow first): the flash kernel on every target, and the decode kernel
  // on one and two query rows per kv head group; finite, and within the rule.
  std::vector<Case> cases;
  uint32_t seed = 1600;
  for (float logits : {1e10f, 1e20f}) {
    cases.push_back(Case().seq_q(8).seq_kv(256).heads(4).kv_heads(1).head_dim(64).logits(logits));
    cases.push_back(Case().seq_q(20).seq_kv(300).heads(2).head_dim(128).logits(logits).causal());
    cases.push_back(Case().seq_q(9).seq_kv(130).heads(2).logits(logits).sinks().alibi());
  }
  for (Case& c : cases) c.seed(seed++);
  check_all(cases);
  for (float logits : {1e10f, 1e20f}) {
    for (int64_t seq_q : {1, 2}) {
      const Case c = Case().seq_q(seq_q).seq_kv(700).heads(8).kv_heads(2).head_dim(128)
                         .logits(logits).causal().seed(seed++);
      Workload w(c);
      const Result ref = w.run(Backend::kReference);
      EXPECT_TRUE(within_tolerance(c, "decode", w.run(Backend::kDecode), ref, w.naive(),
                                   w.max_abs_v()));
    }
  }
}

TEST(Flash, WithoutLse) {
  check_all({Case().seq(40).no_lse(), Case().seq_q(30).seq_kv(9).causal().no_lse().allow_all_empty(),
             Case().seq(33).sinks().tiles(kBlockQ, kBlockKv).no_lse()});
}

TEST(Flash, RandomCombinations) {
  std::mt19937 rng(20240611);
  const auto pick = [&](auto... values) {
    const std::vector<std::common_type_t<decltype(values)...>> v = {values...};
    return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
  };
  const auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  const auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  const Layout layouts[] = {Layout::kBshd, Layout::kBhsd, Layout::kPadded};

  int64_t rows = 0, empty_rows = 0;
  for (uint32_t n = 0; n < 110; ++n) {
    Case c;
    const int64_t b = uniform(1, 3), sq = uniform(1, 50), sk = uniform(1, 70);
    const int64_t hk = pick(1, 1, 2, 3), group = pick(1, 2, 4);
    const int64_t d = pick(1, 3, 8, 16, 31, 64, 80, 128);
    c.batch(b).seq_q(sq).seq_kv(sk).heads(hk * group).kv_heads(hk).head_dim(d);
    if (chance(0.3)) c.head_dim_v(pick(1, 5, 16, 48, 96));
    if (chance(0.2)) c.scale(pick(0.05f, 0.5f, -0.3f, 2.0f));
    if (chance(0.4)) c.causal(chance(0.5) ? CausalAlign::kBottomRight : CausalAlign::kTopLeft);
    if (chance(0.3)) c.window(pick(-1, 0, 1, 5, 20), pick(-1, 0, 2, 9, 30));
    if (chance(0.2)) c.softcap(pick(1.0f, 10.0f, 50.0f));
    if (chance(0.3)) chance(0.5) ? c.alibi() : c.alibi_per_batch();
    if (chance(0.3)) c.sinks();
    if (chance(0.35)) {
      std::vector<int64_t> full = {b, hk * group, sq, sk}, shape;
      const int rank = static_cast<int>(uniform(1, 4));
      for (int i = 4 - rank; i < 4; ++i) shape.push_back(chance(0.3) ? 1 : full[i]);
      const bool expand = chance(0.3);
      chance(0.5) ? c.bool_mask(shape, pick(0.3, 0.8), expand)
                  : c.float_mask(shape, pick(0.0, 0.2), expand);
    }
    if (chance(0.3)) {
      c.layouts(layouts[uniform(0, 2)], layouts[uniform(0, 2)], layouts[uniform(0, 2)],
                layouts[uniform(0, 2)]);
    }
    if (chance(0.2)) c.lse_layout(layouts[uniform(0, 2)]);
    if (chance(0.15)) c.no_lse();
    if (chance(0.4)) c.tiles(pick(kBlockQ, 1, 3, 8, 16), pick(kBlockKv, 1, 8, 17, 64));
    if (chance(0.3)) c.threads(static_cast<int>(uniform(1, 3)));
    if (chance(0.2)) c.logits(pick(30.0f, 300.0f, 1e4f));
    c.seed(5000 + n).allow_all_empty();
    const RowStats stats = expect_flash_matches_reference(c);
    rows += stats.rows;
    empty_rows += stats.empty_rows;
  }
  // Not vacuous: most rows see keys.
  EXPECT_LT(empty_rows * 4, rows) << empty_rows << " of " << rows << " rows empty";
}

TEST(Flash, HalfStorage) {
  // float16 / bfloat16 q, k, v and o: conversions in the packing and the
  // store, including vector tails (odd head dims) and strided rows.
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    std::vector<Case> cases;
    uint32_t seed = 1600;
    for (int64_t sk : {1, 15, 16, 17, 53}) {
      cases.push_back(Case().seq_q(13).seq_kv(sk).heads(4).kv_heads(2).tiles(kBlockQ, kBlockKv)
          .causal().allow_all_empty());
    }
    for (const auto& [d, dv] :
         {std::pair<int64_t, int64_t>{1, 1}, {7, 9}, {80, 64}, {128, 128}, {256, 256}, {33, 200}}) {
      cases.push_back(Case().seq_q(9).seq_kv(70).head_dim(d).head_dim_v(dv));
    }
    cases.push_back(Case().seq(130).heads(8).kv_heads(1).head_dim(64).causal());
    cases.push_back(Case().seq_q(20).seq_kv(45).window(5, 3).softcap(10).logits(40));
    cases.push_back(Case().batch(2).seq(33).heads(4).alibi_per_batch().sinks());
    cases.push_back(Case().batch(2).seq_q(11).seq_kv(37).heads(3).bool_mask({2, 1, 11, 37}, 0.4));
    cases.push_back(Case().batch(2).seq_q(11).seq_kv(37).heads(3).float_mask({11, 37}, 0.2)
        .tiles(kBlockQ, kBlockKv));
    cases.push_back(Case().batch(2).seq_q(9).seq_kv(21).heads(4).kv_heads(2).head_dim(12)
        .head_dim_v(5).layouts(Layout::kBhsd, Layout::kPadded, Layout::kBhsd, Layout::kPadded)
        .lse_layout(Layout::kPadded));
    cases.push_back(Case().seq_q(20).seq_kv(70).logits(1e3f).causal());
    cases.push_back(Case().seq_q(20).seq_kv(70).logit_offset(1e3f));
    for (Case& c : cases) c.dtype(dtype).seed(seed++);
    check_all(cases);
  }
}

// Large outputs are written with streaming stores (runtime/stream_output.h).
// Forced onto small ones, they give the same bits as normal stores on every
// target and storage type (bfloat16 on the float32 kernel and on the bf16 units), with
// rows of 1 to 200 elements at offsets that put a row's first line boundary
// anywhere and leave lines partly covered at either end.
TEST(Flash, StreamedOutputGivesTheSameBits) {
  struct Restore {
    ~Restore() {
      internal::set_stream_output_bytes_for_test(0);
      internal::flash_force_target(0);
      internal::set_dot_units_enabled(true);
    }
  } restore;
  std::vector<Case> cases;
  uint32_t seed = 1700;
  for (int64_t dv : {1, 5, 16, 33, 64, 100, 128, 200}) {
    for (Layout layout : {Layout::kBshd, Layout::kPadded}) {
      cases.push_back(Case().batch(2).seq_q(19).seq_kv(40).heads(4).kv_heads(2).head_dim(32)
          .head_dim_v(dv).layout(layout).causal().seed(seed++));
    }
  }
  for (int64_t t : internal::flash_targets()) {
    internal::flash_force_target(t);
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      for (bool units : {false, true}) {
        if (units && dtype != DType::kBFloat16) continue;
        internal::set_dot_units_enabled(units);
        for (const Case& base : cases) {
          const Case c = Case(base).dtype(dtype);
          SCOPED_TRACE(testing::Message() << internal::flash_target_name(t)
                                          << (units ? " bf16 units " : " ") << c.describe());
          internal::set_stream_output_bytes_for_test(0);
          const Result normal = Workload(c).run(Backend::kFlash);
          internal::set_stream_output_bytes_for_test(1);
          const Result streamed = Workload(c).run(Backend::kFlash);
          EXPECT_TRUE(bitwise_equal(streamed.o, normal.o));
          EXPECT_TRUE(bitwise_equal(streamed.lse, normal.lse));
        }
      }
    }
  }
}

TEST(Flash, ThreadCountsGiveBitwiseIdenticalResults) {
  const std::vector<Case> cases = {
      Case().batch(2).seq_q(70).seq_kv(90).heads(4).kv_heads(2).head_dim(32).causal(),
      Case().seq_q(1).seq_kv(300).heads(2).head_dim(64),  // decode: one row
      Case().seq(64).heads(8).kv_heads(1).head_dim(16).tiles(kBlockQ, kBlockKv).sinks().alibi(),
      Case().batch(3).seq_q(33).seq_kv(17).heads(3).bool_mask({33, 17}, 0.5),
      Case().batch(2).seq(50).heads(4).kv_heads(2).dtype(DType::kFloat16).causal(),
      // 16-24 pairs: one pair per task with 2 and 3 threads (run_pairs).
      Case().batch(3).seq_q(40).seq_kv(57).heads(16).kv_heads(8).head_dim(32).causal(),
  };
  struct Restore {
    ~Restore() { internal::flash_force_target(0); }
  } restore;
  for (int64_t t : internal::flash_targets()) {
    internal::flash_force_target(t);
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message() << internal::flash_target_name(t) << " " << c.describe());
      Workload one(Case(c).threads(1));
      const Result want = one.run(Backend::kFlash);
      for (int threads : {2, 3, 0}) {
        Workload w(Case(c).threads(threads));
        const Result got = w.run(Backend::kFlash);
        EXPECT_TRUE(bitwise_equal(got.o, want.o)) << "o differs with " << threads << " threads";
        EXPECT_TRUE(bitwise_equal(got.lse, want.lse)) << "lse differs with " << threads << " threads";
      }
    }
  }
}

// --- The tolerance rule itself ----------------------------------------------

TEST(ToleranceRule, AcceptsTheNaiveAndRejectsSmallPerturbations) {
  const Case c = Case().batch(2).seq_q(10).seq_kv(30).heads(4).kv_heads(2).head_dim(32).causal();
  Workload w(c);
  const Result ref = w.run(Backend::kReference);
  const std::vector<Result> naive = w.naive();
  const double max_v = w.max_abs_v();
  ASSERT_GT(max_v, 0.5);
  for (const Result& n : naive) EXPECT_TRUE(within_tolerance(c, "naive", n, ref, naive, max_v));
  EXPECT_TRUE(within_tolerance(c, "reference", ref, ref, naive, max_v));

  // The budget on ordinary data is a few float32 ulp: 1e-5 off is a bug.
  Result bad = ref;
  bad.o[123] += 1e-5f;
  EXPECT_FALSE(within_tolerance(c, "perturbed o", bad, ref, naive, max_v));
  bad = ref;
  bad.o[5] = std::nanf("");
  EXPECT_FALSE(within_tolerance(c, "NaN in o", bad, ref, naive, max_v));
  bad = ref;
  bad.lse[7] += 1e-4f;
  EXPECT_FALSE(within_tolerance(c, "perturbed lse", bad, ref, naive, max_v));
  bad = ref;
  bad.lse[1] = kNegInf;  // row 1 of head 0 sees keys
  EXPECT_FALSE(within_tolerance(c, "-inf lse where keys are visible", bad, ref, naive, max_v));

  // A row with no key: lse must be exactly -inf, not a large negative number.
  const Case e = Case().seq_q(6).seq_kv(2).causal();
  Workload we(e);
  const Result eref = we.run(Backend::kReference);
  const std::vector<Result> enaive = we.naive();
  ASSERT_EQ(eref.lse[0], kNegInf);
  bad = eref;
  bad.lse[0] = -1e30f;
  EXPECT_FALSE(within_tolerance(e, "finite lse of an empty row", bad, eref, enaive, we.max_abs_v()));

  // A yardstick that is off cannot widen the budget: it is rejected first.
  std::vector<Result> wrong_naive = naive;
  wrong_naive[1].o[10] += 1e-2f;
  const testing::AssertionResult r = within_tolerance(c, "any", ref, ref, wrong_naive, max_v);
  EXPECT_FALSE(r);
  EXPECT_NE(std::string(r.message()).find("yardstick"), std::string::npos) << r.message();
}

TEST(ToleranceRule, FailureNamesTheCaseAndTheFirstIndex) {
  const Case c = Case().batch(2).seq_q(3).seq_kv(5).heads(2).head_dim(4).seed(99);
  Workload w(c);
  const Result ref = w.run(Backend::kReference);
  const std::vector<Result> naive = w.naive();
  Result bad = ref;
  bad.o[((1 * 3 + 2) * 2 + 1) * 4 + 3] += 0.5f;  // o[b=1, i=2, h=1, d=3]
  const std::string message = within_tolerance(c, "x", bad, ref, naive, w.max_abs_v()).message();
  EXPECT_NE(message.find("o[b=1, i=2, h=1, d=3]"), std::string::npos) << message;
  EXPECT_NE(message.find(c.describe()), std::string::npos) << message;
}

}  // namespace
}  // namespace qkv::test
