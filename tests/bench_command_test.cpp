// Tests of `qkv bench` and `qkv bench decode`: the built program (QKV_CLI_PATH)
// on one small case each, without the Python peers (a stand-in for their
// interpreter checks how the bench talks to it). Nothing here looks at a
// time beyond its being positive: these check that the commands run, agree
// with their baselines and write the --json they document, not speed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "bench_json.h"
#include "bench_report.h"
#include "cli_run.h"

namespace qkv::tools {
namespace {

// `qkv <args>` in a fresh directory, after writing `files` (name, text) there;
// json(name) parses a file it wrote there.
class BenchRun {
 public:
  explicit BenchRun(const std::string& args, const std::vector<std::pair<std::string, std::string>>& files = {})
      : run_(write_then_run(dir_, files, args)) {}
  const CliResult& run() const { return run_; }
  Json json(const std::string& name) const { return Json::parse(read_bytes(dir_.file(name))); }

  std::string text(const std::string& name) const { return read_bytes(dir_.file(name)); }

 private:
  static CliResult write_then_run(const TempDir& dir, const std::vector<std::pair<std::string, std::string>>& files,
                                  const std::string& args) {
    for (const auto& [name, text] : files) {
      std::ofstream(dir.file(name), std::ios::binary) << text;
      std::filesystem::permissions(dir.file(name), std::filesystem::perms::owner_all);
    }
    return run_qkv(dir, args);
  }

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
  // The probe after qkv and after the baseline; timed again at most twice.
  const Json* probes = c.find("probes_after_gflops");
  ASSERT_TRUE(probes != nullptr && probes->is_array());
  EXPECT_EQ(probes->as_array().size(), 2u);
  EXPECT_GE(number(c, "retries"), 0);
  EXPECT_LE(number(c, "retries"), qkv::tools::kCaseRetries);
}

// A case is timed again when the machine changed speed while it ran: a probe
// after one of its implementations more than 5% off the one before it.
TEST(CliBench, ACaseIsSteadyWhileEveryProbeIsWithinFivePercentOfTheFirst) {
  qkv::tools::CaseResult r;
  r.peak = 400;
  EXPECT_TRUE(r.steady());
  r.probes_after = {381, 420};
  EXPECT_TRUE(r.steady());
  r.probes_after = {390, 200};  // a half-speed phase began after the first
  EXPECT_FALSE(r.steady());
  r.probes_after = {378};  // slower by 5.5% while an implementation ran
  EXPECT_FALSE(r.steady());
  r.probes_after = {425};  // the case began in a slow phase
  EXPECT_FALSE(r.steady());
}

// A case's "% peak" is of the best probe around it: one that began in a slow
// phase is not measured against that phase's peak.
TEST(CliBench, ACasePeakIsTheBestOfItsProbes) {
  qkv::tools::CaseResult r;
  r.peak = 456;
  EXPECT_EQ(r.best_probe(), 456);
  r.probes_after = {495, 494};
  EXPECT_EQ(r.best_probe(), 495);
  r.probes_after = {440, 450};
  EXPECT_EQ(r.best_probe(), 456);
}

// A stand-in for the interpreter that runs peers.py --serve: it answers the
// version query, names two peers, answers the first request (recording it)
// with a time, and exits at the second, as a crash would.
constexpr const char* kFakePython = R"(#!/bin/sh
if [ "$1" = "-c" ]; then echo 3.11.0; exit 0; fi
echo '{"python": "3.11.0", "peers": {"torch": {"version": "0.0-test"}, "onnxruntime": {"version": "0.0-test"}}}'
read request; echo "$request" > requests.txt
echo '{"case": "d64-h32/8-s512-causal-fp32", "impl": "torch", "seconds": 1e-6, "note": "fake"}'
read request; exit 3
)";

TEST(CliBench, PeersAreAskedCaseByCaseAndAPeerThatDiesIsReportedNotFatal) {
  // --retries 0: a case timed again would ask the stand-in a second time.
  const BenchRun bench(
      "bench --cases '^d64-h32/8-s512-(causal|full)-fp32$' --threads 1 --retries 0 --python ./fake-python "
      "--json out.json",
      {{"fake-python", kFakePython}});
  ASSERT_EQ(bench.run().exit_code, 0) << bench.run().err;
  // The request: one JSON line naming the peer and the whole case.
  const Json request = Json::parse(bench.text("requests.txt"));
  EXPECT_EQ(request.find("peer")->as_string(), "torch");
  EXPECT_EQ(request.find("case")->find("name")->as_string(), "d64-h32/8-s512-causal-fp32");
  EXPECT_EQ(number(*request.find("case"), "seq_q"), 512);
  EXPECT_EQ(number(*request.find("case"), "kv_heads"), 8);

  const Json report = bench.json("out.json");
  const Json::Array& cases = report.find("cases")->as_array();
  ASSERT_EQ(cases.size(), 2u);
  for (const Json& c : cases) {
    const double peak = number(c, "peak_gflops");  // the best of the case's own probes
    EXPECT_GT(peak, 0);
    for (const Json& probe : c.find("probes_after_gflops")->as_array()) EXPECT_GE(peak, probe.as_number());
    const Json* qkv = c.find("results")->find("qkv");
    EXPECT_NEAR(number(*qkv, "percent_of_peak"), 100 * number(*qkv, "gflops") / peak, 1e-9);
  }
  const Json* torch = cases[0].find("results")->find("torch");
  EXPECT_EQ(number(*torch, "seconds"), 1e-6);
  EXPECT_EQ(torch->find("note")->as_string(), "fake");
  const std::string died = "peers.py exited during the run (see above)";
  EXPECT_EQ(cases[0].find("results")->find("onnxruntime")->find("skipped")->as_string(), died);
  EXPECT_EQ(cases[1].find("results")->find("torch")->find("skipped")->as_string(), died);
  EXPECT_EQ(report.find("peers")->find("failure")->as_string(), died);

  // The targets: none of the % of peak ones covers seq 512. Of the three
  // (case, peer) pairs (OpenBLAS on both cases, torch on the first) torch's
  // is lost whatever the machine (a microsecond), so "ahead of every peer"
  // is missed and names it; OpenBLAS's two go either way (under the
  // sanitizers qkv is the slower one).
  const Json::Array& targets = report.find("targets")->as_array();
  ASSERT_EQ(targets.size(), 6u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(number(targets[i], "cases"), 0) << targets[i].dump(0);
  const Json& ahead = targets[5];
  EXPECT_EQ(number(ahead, "cases"), 3);
  EXPECT_LE(number(ahead, "value"), 200.0 / 3 + 1e-9);
  EXPECT_FALSE(ahead.find("met")->as_bool());
  EXPECT_NE(ahead.find("where")->as_string().find("d64-h32/8-s512-causal-fp32 vs torch x0.00"), std::string::npos)
      << ahead.dump(0);
  EXPECT_NE(bench.run().out.find("ahead of every peer"), std::string::npos) << bench.run().out;
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
  // What int8's products ran on, in the header and the JSON.
  const Json* machine = report.find("machine");
  ASSERT_TRUE(machine != nullptr && machine->find("int8_engine") != nullptr);
  const std::string engine = machine->find("int8_engine")->as_string();
  EXPECT_FALSE(engine.empty());
  EXPECT_NE(bench.run().out.find("\nint8      " + engine + "\n"), std::string::npos) << bench.run().out;
  // A miss is told to a tenth (0.4 short of a target is not "by 0").
  const std::regex target(R"(int8 +4096: x[0-9]+\.[0-9]{2} fp16's tokens/s \(target x1\.7\): (met|MISSED by [0-9]+\.[0-9]%)\n)");
  EXPECT_TRUE(std::regex_search(bench.run().out, target)) << bench.run().out;
}

// The fp16 target line (contexts from 32K); a cache that fits the L3 (as the
// run read it) also gets its share of the DRAM probe, the memory it would
// come from past the L3.
TEST(CliBench, DecodeTargetLineNamesTheDramProbeWhereTheCacheFitsTheL3) {
  const BenchRun bench("bench decode --contexts 32768 --types f16 --quick --threads 1 --json out.json");
  ASSERT_EQ(bench.run().exit_code, 0) << bench.run().err;
  const Json report = bench.json("out.json");
  const Json& row = report.find("rows")->as_array().at(0);
  const double kv_bytes = number(row, "kv_bytes_per_step");
  const double l3_bytes = number(*report.find("machine"), "l3_bytes");
  const std::regex line(
      R"(fp16 +32768: +[0-9]+\.[0-9]% of the read bandwidth \(target 85%, set for 2 threads\): (met|MISSED by [0-9]+\.[0-9] points)( \(the cache fits the L3: ([0-9]+)% of the DRAM probe\))?\n)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(bench.run().out, m, line)) << bench.run().out;
  EXPECT_EQ(m[2].matched, kv_bytes <= l3_bytes) << bench.run().out;
  if (m[2].matched) {
    EXPECT_NEAR(std::stod(m[3].str()), number(row, "percent_of_dram_probe"), 0.51);
  }
}

TEST(CliBench, BadOptionsExitTwoWithOneLine) {
  for (const char* args : {"bench --cases 'nomatch' --peers none", "bench --cases '(' --peers none",
                           "bench decode --contexts 0", "bench decode --types f64",
                           "bench --retries 11 --peers none"}) {
    const BenchRun bench(args);
    EXPECT_EQ(bench.run().exit_code, 2) << args;
    EXPECT_EQ(bench.run().err.find("qkv: error: "), 0u) << args << ": " << bench.run().err;
    EXPECT_EQ(bench.run().err.find('\n'), bench.run().err.size() - 1) << args;
  }
}

}  // namespace
}  // namespace qkv::tools
