// Tests of `qkv bench` and `qkv bench decode`: the built program (QKV_CLI_PATH)
// on one small case each, without the Python peers. Nothing here looks at a
// time beyond its being positive: these check that the commands run, agree
// with their baselines and write the --json they document, not speed.
#include <gtest/gtest.h>

#include <string>

#include "bench_json.h"
#include "cli_run.h"

namespace qkv::tools {
namespace {

// `qkv <args>` in a fresh directory; json(name) parses a file it wrote there.
class BenchRun {
 public:
  explicit BenchRun(const std::string& args) : run_(run_qkv(dir_, args)) {}
  const CliResult& run() const { return run_; }
  Json json(const std::string& name) const { return Json::parse(read_bytes(dir_.file(name))); }

 private:
  TempDir dir_;
  CliResult run_;
};

double number(const Json& object, const char* key) {
  const Json* value = object.find(key);
  if (value == nullptr || !value->is_number()) {
    ADD_FAILURE() << "no number '" << key << "' in " << object.dump(0);
    return 0;
  }
  return value->as_number();
}

TEST(CliBench, OneCaseWithoutPeersAgreesWithTheBaselineAndWritesItsJson) {
  const BenchRun bench("bench --cases '^d64-h32/8-s512-causal-fp32$' --peers none --threads 1 --json out.json");
  ASSERT_EQ(bench.run().exit_code, 0) << bench.run().err;
  EXPECT_NE(bench.run().out.find("head_dim 64, 32 query / 8 KV heads, causal, float32"), std::string::npos)
      << bench.run().out;
  const Json report = bench.json("out.json");
  const Json* timing = report.find("timing");
  ASSERT_NE(timing, nullptr);
  EXPECT_EQ(number(*timing, "min_runs"), 3);
  EXPECT_GE(number(*timing, "max_runs"), number(*timing, "min_runs"));
  EXPECT_GT(number(*report.find("peak_gflops"), "peak"), 0);
  const Json* cases = report.find("cases");
  ASSERT_TRUE(cases != nullptr && cases->is_array());
  ASSERT_EQ(cases->as_array().size(), 1u);
  const Json& c = cases->as_array()[0];
  EXPECT_EQ(c.find("name")->as_string(), "d64-h32/8-s512-causal-fp32");
  const Json* results = c.find("results");
  ASSERT_NE(results, nullptr);
  const Json* qkv = results->find("qkv");
  const Json* baseline = results->find("openblas");
  ASSERT_TRUE(qkv != nullptr && baseline != nullptr);
  EXPECT_GT(number(*qkv, "seconds"), 0);
  EXPECT_GT(number(*baseline, "seconds"), 0);
  // The materializing baseline checks qkv's output on every float32 case.
  EXPECT_LE(number(*baseline, "max_abs_diff_vs_qkv"), 1e-4);
  EXPECT_EQ(report.find("scaling")->find("skipped")->as_string(), "--threads 1");
}

TEST(CliBench, DecodeOneContextPerCacheTypeAgreesWithTheBaseline) {
  const BenchRun bench("bench decode --contexts 4096 --types f16,int8 --quick --threads 1 --json out.json");
  ASSERT_EQ(bench.run().exit_code, 0) << bench.run().err;
  const Json report = bench.json("out.json");
  const Json* rows = report.find("rows");
  ASSERT_TRUE(rows != nullptr && rows->is_array());
  ASSERT_EQ(rows->as_array().size(), 2u);
  const char* caches[] = {"fp16", "int8"};
  for (size_t i = 0; i < 2; ++i) {
    const Json& row = rows->as_array()[i];
    EXPECT_EQ(row.find("cache")->as_string(), caches[i]);
    EXPECT_EQ(number(row, "context"), 4096);
    EXPECT_GT(number(row, "seconds"), 0);
    EXPECT_GT(number(row, "probe_gbs"), 0);
    // The baseline reads the same cache once per query head: the same
    // products in another order.
    EXPECT_LE(number(row, "max_abs_diff_vs_baseline"), 1e-5) << caches[i];
  }
}

TEST(CliBench, BadOptionsExitTwoWithOneLine) {
  for (const char* args : {"bench --cases 'nomatch' --peers none", "bench --cases '(' --peers none",
                           "bench decode --contexts 0", "bench decode --types f64"}) {
    const BenchRun bench(args);
    EXPECT_EQ(bench.run().exit_code, 2) << args;
    EXPECT_EQ(bench.run().err.find("qkv: error: "), 0u) << args << ": " << bench.run().err;
    EXPECT_EQ(bench.run().err.find('\n'), bench.run().err.size() - 1) << args;
  }
}

}  // namespace
}  // namespace qkv::tools
