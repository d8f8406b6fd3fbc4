// The results of one `qkv bench` run and how they are shown: one table per
// shape on stdout (print_report) and the --json document (report_json).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "bench_cases.h"
#include "bench_json.h"
#include "bench_python.h"

namespace qkv::tools {

// Timing policy, the same for every implementation (bench/peers.py copies it):
// one untimed warm-up call, then timed calls until kBenchRunSeconds have been
// spent in them, at least kBenchMinRuns and at most kBenchMaxRuns, and their
// median; a single call above kBenchSingleRunAboveSeq where one call takes
// seconds. Short cases (a few ms) get more calls, so a pause of the machine
// during one or two of them moves the median less.
inline constexpr int kBenchMinRuns = 3;
inline constexpr int kBenchMaxRuns = 15;
inline constexpr double kBenchRunSeconds = 0.3;
inline constexpr int64_t kBenchSingleRunAboveSeq = 8192;
// qkv and the baseline both accumulate in float32; on inputs in [-1, 1) they
// agree to about 1e-6. More than this means one of them is wrong.
inline constexpr double kBenchMaxAgreedDiff = 1e-4;
// The prefill issue's targets hold from this sequence length on, and 2 threads
// must be this many times faster than one.
inline constexpr int64_t kTargetMinSeq = 2048;
inline constexpr double kTargetThreadScaling = 1.85;
// On a CPU with AMX-BF16, qkv's bfloat16 cases run on AMX tiles; this row
// times the same cases with that kernel switched off (the float32 FMA kernel).
inline constexpr const char* kFmaImpl = "qkv-fma";

// One implementation on one case.
struct Measured {
  double seconds = 0;    // > 0 when measured
  std::string skipped;   // why not, when not
  std::string note;      // how it ran, if worth saying (peers)
  double max_abs_diff = std::numeric_limits<double>::quiet_NaN();  // vs qkv (baseline)

  bool ok() const { return seconds > 0; }
};

struct CaseResult {
  BenchCase shape;
  std::map<std::string, Measured> impl;  // "qkv", "openblas", then the peers
  double peak = 0;  // the fp32 FMA peak (GFLOP/s) measured right before the case
  // The probe again after each implementation: the case is timed again (at
  // most --retries times, kCaseRetries by default) when one of them is off
  // `peak` by more than kSteadyProbes, i.e. the machine changed speed while
  // the case ran. (10% until 2026-12-07: a sweep then had a case whose probe
  // fell 5.5% while qkv was timed, 472 -> 447 GFLOP/s, and qkv's time with it,
  // 101 ms where alternating runs read 89-93; four of 96 cases moved 5-10%.)
  std::vector<double> probes_after;
  int retries = 0;
  bool steady() const;
  // What the case's "% peak" is taken of: the best of its probes, so a case
  // that began in a slow phase (and stayed unsteady through its retries) is
  // not measured against that phase's lower peak. (A sweep of 2026-12-07 had
  // such a case at 95.4% of the 456 GFLOP/s read before it, where the probes
  // after it read 494-495: 87.9% of those.)
  double best_probe() const;
};

inline constexpr int kCaseRetries = 2;
inline constexpr double kSteadyProbes = 0.05;

inline double CaseResult::best_probe() const {
  double best = peak;
  for (const double probe : probes_after) best = std::max(best, probe);
  return best;
}

inline bool CaseResult::steady() const {
  for (const double probe : probes_after) {
    if (probe < peak * (1 - kSteadyProbes) || peak < probe * (1 - kSteadyProbes)) return false;
  }
  return true;
}

// fp32 FMA throughput in GFLOP/s at the start and end of the run (all threads)
// and with one thread; each case also has its own (CaseResult::peak).
struct Peak {
  double start = 0, end = 0, one_thread = 0;
  double best() const { return start > end ? start : end; }
};

// qkv on one case with one thread and with all of them.
struct Scaling {
  BenchCase shape;
  std::string skipped;
  double one_thread_seconds = 0, seconds = 0;  // medians of the rounds; seconds: with all the threads
  int rounds = 0;                              // alternating rounds timed
  double ratio() const { return one_thread_seconds / seconds; }
};

struct MachineInfo {
  std::string cpu = "unknown";  // model name from /proc/cpuinfo
  unsigned logical_cpus = 0;
  int threads = 1;              // what every implementation was given
  std::string simd_target = "unknown";  // the one qkv dispatched to
  std::string bf16_engine = "none";     // bfloat16 units qkv uses: "amx", "avx512-bf16" (kFmaImpl timed) or "none"
  bool bf16_units() const { return bf16_engine != "none"; }
  int64_t mem_available = -1;
  std::string date;             // ISO 8601, UTC
};

// Everything one run measured.
struct BenchRun {
  MachineInfo machine;
  Peak peak;
  Scaling scaling;
  std::vector<CaseResult> cases;
  PeersReport peers;
};

// The report on stdout: the peaks, one table per shape (every field but seq),
// scaling, mean speed-ups, warnings, peers' notes and a legend.
void print_report(const BenchRun& run);

// The --json document; `options` is copied in as given.
Json report_json(const BenchRun& run, Json options);

// One of the speed targets `qkv bench` checks (those of the prefill issue): the
// worst value over the cases it covers, where that was, and whether it is met.
struct Target {
  std::string what;   // e.g. "fp32 head_dim 128 causal, seq >= 2048: % of peak"
  double value = 0;   // the worst case's (lowest % of peak, lowest ratio)
  double goal = 0;    // what it must reach (value >= goal)
  std::string unit;   // "%" or "x"
  std::string where;  // the worst case, or the exceptions
  int cases = 0;      // how many it covers; 0: not measured in this run
  std::string counted = "case";  // what `cases` counts
  bool met() const { return cases > 0 && value >= goal; }
};

// The targets, computed from the run (cases not in the run are not counted).
std::vector<Target> bench_targets(const BenchRun& run);

// "met" or "MISSED by <by>".
inline std::string verdict(bool met, const std::string& by) { return met ? "met" : "MISSED by " + by; }

// printf into a std::string (short texts).
template <typename... Args>
std::string format(const char* fmt, Args... args) {
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, fmt, args...);
  return buffer;
}

// "12.3 ms", "1.52 s".
std::string format_time(double seconds);

}  // namespace qkv::tools
