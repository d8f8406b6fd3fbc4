// The pieces `qkv bench decode` shares between its measurements
// (bench_decode.cpp) and its report and JSON (bench_decode_report.cpp): the
// shape and timing constants, the targets, the bandwidth table and the
// results of a run.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "bench_json.h"
#include "bench_report.h"
#include "memory_probe.h"
#include "qkv/tensor.h"
#include "runtime/bandwidth_probe.h"

namespace qkv::tools::decode_bench {

inline constexpr int64_t kHeads = 32;
inline constexpr int64_t kKvHeads = 8;
inline constexpr int64_t kHeadDim = 128;
inline constexpr int64_t kFillChunk = 4096;  // tokens per append
// A (context, type) runs only if its cache takes at most this fraction of MemAvailable.
inline constexpr double kMemoryFraction = 0.7;
// Timing: warm-up steps (one if it alone takes kTargetSeconds), then steps
// until about kTargetSeconds (kQuickSeconds with --quick) have been spent, at
// least kMinSteps and at most kMaxSteps.
inline constexpr int kWarmupSteps = 2;
inline constexpr int kMinSteps = 3, kMaxSteps = 21;
inline constexpr double kTargetSeconds = 1.0, kQuickSeconds = 0.3;
// Targets of docs/bench.md, reported (never asserted) against the measurements.
inline constexpr double kTargetPercentOfProbe = 85;
inline constexpr int64_t kTargetMinContext = 32768;
inline constexpr double kTargetInt8OverFp16 = 1.7;
inline constexpr double kTargetOverBaseline = 3;
// outputs in [-1, 1), float32 accumulation in both: about 1e-6 apart.
inline constexpr double kMaxAgreedDiff = 1e-4;
// A step whose threads were on a CPU less than this fraction of it was slowed
// down by other processes.
inline constexpr double kQuietOnCpu = 0.9;
// Steps shorter than this do not take part in that check (a worker's
// wake-up is a large share of them).
inline constexpr double kMinQuietCheckSeconds = 0.005;

inline constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
inline constexpr double kMiB = 1024.0 * 1024.0;

struct DecodeOptions {
  std::vector<int64_t> contexts;
  std::vector<std::string> types;
  int threads = 0;
  std::string json;
  bool quick = false;
};


inline const char* type_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "fp32";
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    case DType::kInt8: return "int8";
    default: return dtype_name(dtype);
  }
}

inline std::string format_bytes(double bytes) {
  if (bytes >= kGiB) return format("%.2f GiB", bytes / kGiB);
  if (bytes >= kMiB) return format("%.1f MiB", bytes / kMiB);
  return format("%.1f KiB", bytes / 1024);
}

// Seconds of a call repeated as the timing policy above says. on_cpu: the
// process's CPU time / (wall time * threads) summed over all timed steps
// (per step, the CPU-time clock lags a worker's time by up to a scheduler
// tick: sub-millisecond steps read 50%), about 1 when the threads had the
// cores to themselves (spinning at a barrier counts as on a core), lower
// when other processes took them, higher when threads outside the step's
// team (an idle pool still spinning) ran beside it.
struct Timing {
  double median = 0, best = 0, on_cpu = 0;
  int steps = 0;
};

// Read bandwidth by buffer size, each size measured once per run.
class BandwidthTable {
 public:
  BandwidthTable(int threads, int64_t dram_bytes) : threads_(threads), dram_bytes_(dram_bytes) {}
  int64_t dram_bytes() const { return dram_bytes_; }
  // The probe size that stands for `bytes`: itself, or the DRAM point above it.
  int64_t probe_size(int64_t bytes) const { return std::min(bytes, dram_bytes_); }
  double at(int64_t bytes) {
    const int64_t size = probe_size(bytes);
    auto found = measured_.find(size);
    if (found != measured_.end()) return found->second;
    return measured_[size] = measure(size);
  }
  double measure(int64_t bytes) const {
    return internal::measure_read_bandwidth_gbs(threads_, static_cast<size_t>(bytes));
  }
  const std::map<int64_t, double>& measured() const { return measured_; }

 private:
  int threads_;
  int64_t dram_bytes_;
  std::map<int64_t, double> measured_;
};

// ------------------------------------------------------------------ one row

struct DecodeRow {
  int64_t context = 0;
  DType dtype = DType::kFloat16;
  std::string skipped;          // why not run, when not
  int64_t bytes = 0;            // K+V (with int8 scales) read per step
  Timing qkv, baseline;
  Timing stream;                // a pure read of the cache in the kernel's order
  double probe_gbs = 0;         // read bandwidth at probe_bytes
  int64_t probe_bytes = 0;
  double max_abs_diff = std::numeric_limits<double>::quiet_NaN();
  double fill_seconds = 0;
  int64_t peak_extra_bytes = 0;     // resident memory the row added (cache, fill buffers, ...)
  int64_t peak_resident_bytes = 0;  // the process's resident peak during the row
  int64_t step_extra_bytes = 0;     // what one qkv step adds
  PeakMethod peak_method = PeakMethod::kUnavailable;

  bool ok() const { return skipped.empty(); }
  double gbs() const { return bytes / qkv.median * 1e-9; }
  double percent_of_probe() const { return 100 * gbs() / probe_gbs; }
  double stream_gbs() const { return bytes / stream.median * 1e-9; }
  double speedup() const { return baseline.median / qkv.median; }
};

struct DecodeRun {
  std::string cpu, simd_target, date;
  std::string int8_engine;  // what an int8 cache's products run on (decode_int8_engine)
  unsigned logical_cpus = 0;
  int threads = 1;
  int64_t mem_available = -1;
  int64_t l3_bytes = 0, l3_point_bytes = 0;
  double l3_point_gbs = 0, dram_gbs_start = 0, dram_gbs_end = 0;
  double load_start = -1, load_end = -1;
  BandwidthTable* bandwidth = nullptr;
  std::vector<DecodeRow> rows;
};

// The report on stdout: the tables, the targets, the notes.
void print_decode_report(const DecodeRun& run);

// Every number of the run, the machine and the probes.
Json decode_json(const DecodeRun& run, const DecodeOptions& options);

}  // namespace qkv::tools::decode_bench
