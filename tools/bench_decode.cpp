// `qkv bench decode`: the decode step against a long KV cache, as a fraction
// of this machine's read bandwidth.
//
// Decode reads every K/V byte of the cache to produce one token: it is a
// memory-bandwidth problem, so the yardstick is GB/s of K/V read per step
// against what a pure streaming read of the same number of bytes achieves on
// this machine (runtime/bandwidth_probe.h, measured in the same run, at the
// cache's own size, so the level of the hierarchy that holds it: L2/L3 for
// short contexts, DRAM for long ones). For each (context, cache type):
//   1. the probe at the cache's size (before the cache exists);
//   2. a contiguous qkv::KVCache filled to `context` tokens with random data
//      by append in chunks (float16, bfloat16 and int8 are converted there);
//   3. qkv::attention_with_kvcache with q [1, 1, 32, 128] and no k_new, as
//      in a decode step: warm-up, then the median of several steps;
//   4. a pure read of the cache in the order and tasks of qkv's decode
//      kernel (what the cache layout allows, with no arithmetic);
//   5. the baseline below, whose output also checks qkv's.
//
// The baseline is the straightforward decode: each of the 32 query heads
// streams its KV head's K and V on its own (online softmax, vectorized with
// Highway, threaded over heads), so every KV byte is read `group` (4) times
// per step, where qkv reads it once for the whole GQA group.
#include <omp.h>
#include <unistd.h>  // access, sysconf

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_decode.h"
#include "bench_decode_kernels.h"
#include "bench_json.h"
#include "bench_report.h"
#include "commands.h"
#include "kernels/flash_forward.h"
#include "memory_probe.h"
#include "progress.h"
#include "random_inputs.h"
#include "qkv/kv_cache.h"
#include "qkv/version.h"
#include "runtime/bandwidth_probe.h"
#include "runtime/threads.h"

namespace qkv::tools {

namespace {

// ------------------------------------------------------------------ setup

constexpr int64_t kHeads = 32;
constexpr int64_t kKvHeads = 8;
constexpr int64_t kHeadDim = 128;
constexpr int64_t kFillChunk = 4096;  // tokens per append
// A (context, type) runs only if its cache takes at most this fraction of MemAvailable.
constexpr double kMemoryFraction = 0.7;
// Timing: warm-up steps (one if it alone takes kTargetSeconds), then steps
// until about kTargetSeconds (kQuickSeconds with --quick) have been spent, at
// least kMinSteps and at most kMaxSteps.
constexpr int kWarmupSteps = 2;
constexpr int kMinSteps = 3, kMaxSteps = 21;
constexpr double kTargetSeconds = 1.0, kQuickSeconds = 0.3;
// Targets of docs/bench.md, reported (never asserted) against the measurements.
constexpr double kTargetPercentOfProbe = 85;
constexpr int64_t kTargetMinContext = 32768;
constexpr double kTargetInt8OverFp16 = 1.7;
constexpr double kTargetOverBaseline = 3;
// outputs in [-1, 1), float32 accumulation in both: about 1e-6 apart.
constexpr double kMaxAgreedDiff = 1e-4;
// A step whose threads were on a CPU less than this fraction of it was slowed
// down by other processes.
constexpr double kQuietOnCpu = 0.9;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kMiB = 1024.0 * 1024.0;

struct DecodeOptions {
  std::vector<int64_t> contexts;
  std::vector<std::string> types;
  int threads = 0;
  std::string json;
  bool quick = false;
};


DType parse_type(const std::string& name) {
  if (name == "f32" || name == "fp32" || name == "float32") return DType::kFloat32;
  if (name == "f16" || name == "fp16" || name == "float16") return DType::kFloat16;
  if (name == "bf16" || name == "bfloat16") return DType::kBFloat16;
  if (name == "int8" || name == "i8") return DType::kInt8;
  throw CommandError("--types: unknown cache type '" + name + "' (known: f32, f16, bf16, int8)");
}

const char* type_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "fp32";
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    case DType::kInt8: return "int8";
    default: return dtype_name(dtype);
  }
}

// K+V bytes one step reads: every token, KV head and element once, with the
// int8 scales (one float for K and one for V per token and KV head).
int64_t kv_bytes(int64_t context, DType dtype) {
  const int64_t scales = dtype == DType::kInt8 ? 8 : 0;
  return context * kKvHeads * (2 * kHeadDim * static_cast<int64_t>(dtype_size(dtype)) + scales);
}

std::string format_bytes(double bytes) {
  if (bytes >= kGiB) return format("%.2f GiB", bytes / kGiB);
  if (bytes >= kMiB) return format("%.1f MiB", bytes / kMiB);
  return format("%.1f KiB", bytes / 1024);
}

int64_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

// The 1-minute load average (/proc/loadavg), -1 if unknown: above the number
// of CPUs, other processes were waiting for the cores this run used.
double load_average() {
  std::ifstream loadavg("/proc/loadavg");
  double load = -1;
  loadavg >> load;
  return loadavg ? load : -1;
}

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
  }
  return "unknown";
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

// Fills `cache` to `context` tokens: K and V from streams 2 and 3, appended
// kFillChunk tokens at a time as float32 (the cache converts).
void fill_cache(KVCache& cache, int64_t context, ProgressLine& progress) {
  const int64_t row = kKvHeads * kHeadDim;
  const int64_t chunk = std::min(kFillChunk, context);
  std::vector<float> k(static_cast<size_t>(chunk * row)), v(k.size());
  int reported = 0;
  for (int64_t t0 = 0; t0 < context; t0 += chunk) {
    const int64_t n = std::min(chunk, context - t0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n * row; ++i) {
      k[i] = random_value(2, static_cast<uint64_t>(t0 * row + i));
      v[i] = random_value(3, static_cast<uint64_t>(t0 * row + i));
    }
    cache.append(Tensor::contiguous(k.data(), DType::kFloat32, {1, n, kKvHeads, kHeadDim}),
                 Tensor::contiguous(v.data(), DType::kFloat32, {1, n, kKvHeads, kHeadDim}));
    const int percent = static_cast<int>(100 * (t0 + n) / context);
    if (context >= (int64_t{1} << 18) && percent / 25 > reported && percent < 100) {
      reported = percent / 25;
      progress.append(format(" %d%%", percent));
    }
  }
}

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Seconds of a call repeated as the timing policy above says. on_cpu: the
// median over the steps of the process's CPU time / (wall time * threads),
// about 1 when the threads had the cores to themselves (spinning at a barrier
// counts as on a core), lower when other processes took them.
struct Timing {
  double median = 0, best = 0, on_cpu = 0;
  int steps = 0;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

Timing time_steps(const std::function<void()>& step, int threads, int warmups, double target_seconds) {
  const auto warm_start = std::chrono::steady_clock::now();
  for (int i = 0; i < warmups; ++i) {
    step();
    // One warm-up is enough when a step takes longer than the whole budget (1M tokens).
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - warm_start).count() > target_seconds) break;
  }
  std::vector<double> seconds, on_cpu;
  double spent = 0;
  while (static_cast<int>(seconds.size()) < kMinSteps ||
         (spent < target_seconds && static_cast<int>(seconds.size()) < kMaxSteps)) {
    const double cpu_start = process_cpu_seconds();
    const auto start = std::chrono::steady_clock::now();
    step();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    on_cpu.push_back((process_cpu_seconds() - cpu_start) / (seconds.back() * threads));
    spent += seconds.back();
  }
  return {median(seconds), *std::min_element(seconds.begin(), seconds.end()), median(on_cpu),
          static_cast<int>(seconds.size())};
}

// Keys per task of qkv's decode kernel for one sequence of `keys` tokens, as
// decode.cpp chooses them (about 4 tasks per thread, none under 256 keys, a
// multiple of its 64-key block): the order the kernel-order stream copies.
int64_t kernel_chunk(int64_t keys, int threads) {
  const int64_t splits = std::clamp<int64_t>(4 * threads, 1, std::max<int64_t>(1, keys / 256));
  return (std::max<int64_t>(1, (keys + splits - 1) / splits) + 63) / 64 * 64;
}

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

void run_row(DecodeRow& row, int threads, bool quick, BandwidthTable& bandwidth, ProgressLine& progress) {
  const int64_t available = available_memory_bytes();
  const int64_t cache_bytes = row.bytes;  // capacity == context: the whole pool is read
  if (available >= 0 && static_cast<double>(cache_bytes) > kMemoryFraction * static_cast<double>(available)) {
    row.skipped = format("needs %.1f GiB, over %.0f%% of MemAvailable (%.1f GiB)", cache_bytes / kGiB,
                         kMemoryFraction * 100, available / kGiB);
    return;
  }
  progress.append(" probe...");
  row.probe_bytes = bandwidth.probe_size(row.bytes);
  row.probe_gbs = bandwidth.at(row.bytes);

  const double target = quick ? kQuickSeconds : kTargetSeconds;
  std::vector<float> q(kHeads * kHeadDim), o_qkv(kHeads * kHeadDim, 0.0f), o_base(o_qkv.size(), 0.0f);
  for (size_t i = 0; i < q.size(); ++i) q[i] = random_value(1, i);
  const int64_t rss_before = resident_bytes();
  const PeakMemory peak = measure_peak_extra([&] {
    KVCacheConfig config;
    config.capacity = row.context;
    config.kv_heads = kKvHeads;
    config.head_dim = kHeadDim;
    config.dtype = row.dtype;
    auto cache = std::make_unique<KVCache>(config);
    progress.append(" fill");
    const auto fill_start = std::chrono::steady_clock::now();
    fill_cache(*cache, row.context, progress);
    row.fill_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - fill_start).count();

    KVCacheAttentionParams params;
    params.q = Tensor::contiguous(q.data(), DType::kFloat32, {1, 1, kHeads, kHeadDim});
    params.o = Tensor::contiguous(o_qkv.data(), DType::kFloat32, {1, 1, kHeads, kHeadDim});
    params.cache = cache.get();
    params.num_threads = threads;
    progress.append(format(" %s, qkv...", format_time(row.fill_seconds).c_str()));
    row.qkv = time_steps([&] { attention_with_kvcache(params); }, threads, kWarmupSteps, target);
    row.step_extra_bytes = measure_peak_extra([&] { attention_with_kvcache(params); }).extra_bytes;
    progress.append(format(" %s, kernel-order stream...", format_time(row.qkv.median).c_str()));
    const int64_t chunk = kernel_chunk(row.context, threads);
    uint32_t sink = 0;
    row.stream = time_steps([&] { sink += stream_cache(*cache, threads, chunk); }, threads,
                            1, target);
    volatile uint32_t keep = sink;  // the sums must happen
    (void)keep;
    progress.append(format(" %s, baseline...", format_time(row.stream.median).c_str()));

    const auto baseline = [&] {
      if (!decode_baseline(*cache, q.data(), kHeads, o_base.data(), threads)) {
        throw CommandError("the baseline needs head_dim a multiple of 4 SIMD vectors");
      }
    };
    row.baseline = time_steps(baseline, threads, 1, target);
    progress.append(" " + format_time(row.baseline.median));
  });
  row.peak_extra_bytes = peak.extra_bytes;
  row.peak_method = peak.method;
  row.peak_resident_bytes = rss_before + peak.extra_bytes;
  row.max_abs_diff = 0;
  for (size_t i = 0; i < o_qkv.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(o_qkv[i]) - o_base[i]);
    if (!(diff <= row.max_abs_diff)) row.max_abs_diff = diff;  // NaN sticks
  }
}

// ------------------------------------------------------------------ report

struct DecodeRun {
  std::string cpu, simd_target, date;
  unsigned logical_cpus = 0;
  int threads = 1;
  int64_t mem_available = -1;
  int64_t l3_bytes = 0, l3_point_bytes = 0;
  double l3_point_gbs = 0, dram_gbs_start = 0, dram_gbs_end = 0;
  double load_start = -1, load_end = -1;
  BandwidthTable* bandwidth = nullptr;
  std::vector<DecodeRow> rows;
};

const DecodeRow* find_row(const DecodeRun& run, int64_t context, DType dtype) {
  for (const DecodeRow& r : run.rows) {
    if (r.context == context && r.dtype == dtype && r.ok()) return &r;
  }
  return nullptr;
}

// Prints cells in aligned columns, right-aligned but for `left` columns; a
// row of two cells (context, reason) runs on without widening the columns.
void print_table(const std::vector<std::vector<std::string>>& cells, size_t left_columns) {
  std::vector<size_t> width;
  for (const auto& row : cells) {
    if (row.size() <= 2 && cells.front().size() > 2) continue;
    width.resize(std::max(width.size(), row.size()), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : cells) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      const size_t w = c < width.size() ? width[c] : 0;
      const size_t pad = row[c].size() < w ? w - row[c].size() : 0;
      const bool left = c > 0 && c <= left_columns;
      line += "  " + (left ? row[c] + (c + 1 < row.size() ? std::string(pad, ' ') : "") : std::string(pad, ' ') + row[c]);
    }
    std::printf("%s\n", line.c_str());
  }
}

// "met", or "MISSED by <how much>".
std::string verdict(bool met, const std::string& by) { return met ? "met" : "MISSED by " + by; }

void print_decode_report(const DecodeRun& run) {
  std::vector<std::vector<std::string>> speed = {{"context", "cache", "K+V/step", "qkv/step", "tokens/s", "GB/s",
                                                  "probe GB/s", "% probe", "kernel-order GB/s", "baseline/step",
                                                  "speed-up"}};
  std::vector<std::vector<std::string>> checks = {
      {"context", "cache", "max|diff|", "peak RSS", "step adds", "fill", "on-CPU qkv", "on-CPU baseline"}};
  for (const DecodeRow& r : run.rows) {
    if (!r.ok()) {
      speed.push_back({std::to_string(r.context), std::string(type_name(r.dtype)) + " skipped: " + r.skipped});
      continue;
    }
    speed.push_back({std::to_string(r.context), type_name(r.dtype), format_bytes(static_cast<double>(r.bytes)),
                     format_time(r.qkv.median), format("%.1f", 1 / r.qkv.median), format("%.1f", r.gbs()),
                     format("%.1f", r.probe_gbs), format("%.0f%%", r.percent_of_probe()),
                     format("%.1f", r.stream_gbs()), format_time(r.baseline.median), format("x%.2f", r.speedup())});
    checks.push_back({std::to_string(r.context), type_name(r.dtype), format("%.1e", r.max_abs_diff),
                      format_bytes(static_cast<double>(r.peak_resident_bytes)),
                      format("%.0f KiB", r.step_extra_bytes / 1024.0), format_time(r.fill_seconds),
                      format("%.0f%%", 100 * r.qkv.on_cpu), format("%.0f%%", 100 * r.baseline.on_cpu)});
  }
  std::printf("\n");
  print_table(speed, 1);
  if (checks.size() > 1) {
    std::printf("\n");
    print_table(checks, 1);
  }

  // int8 against float16 at the same context.
  std::string ratios;
  for (const DecodeRow& r : run.rows) {
    const DecodeRow* fp16 = r.dtype == DType::kInt8 && r.ok() ? find_row(run, r.context, DType::kFloat16) : nullptr;
    if (fp16 == nullptr) continue;
    ratios += format("%s%lld: x%.2f", ratios.empty() ? "" : ", ", static_cast<long long>(r.context),
                     fp16->qkv.median / r.qkv.median);
  }
  if (!ratios.empty()) std::printf("\nint8/fp16  tokens/s, same context: %s\n", ratios.c_str());

  // The targets, each where it was measured.
  std::printf("\ntargets (%d thread%s)\n", run.threads, run.threads == 1 ? "" : "s");
  for (const DecodeRow& r : run.rows) {
    if (!r.ok() || r.dtype != DType::kFloat16 || r.context < kTargetMinContext) continue;
    const double percent = r.percent_of_probe();
    std::printf("  fp16 %8lld: %3.0f%% of the read bandwidth (target %.0f%%%s): %s\n",
                static_cast<long long>(r.context), percent, kTargetPercentOfProbe,
                run.threads == 2 ? "" : ", set for 2 threads",
                verdict(percent >= kTargetPercentOfProbe, format("%.0f points", kTargetPercentOfProbe - percent)).c_str());
  }
  for (const DecodeRow& r : run.rows) {
    const DecodeRow* fp16 = r.dtype == DType::kInt8 && r.ok() ? find_row(run, r.context, DType::kFloat16) : nullptr;
    if (fp16 == nullptr) continue;
    const double ratio = fp16->qkv.median / r.qkv.median;
    std::printf("  int8 %8lld: x%.2f fp16's tokens/s (target x%.1f): %s\n", static_cast<long long>(r.context), ratio,
                kTargetInt8OverFp16,
                verdict(ratio >= kTargetInt8OverFp16, format("%.0f%%", 100 * (1 - ratio / kTargetInt8OverFp16))).c_str());
  }
  for (const DecodeRow& r : run.rows) {
    if (!r.ok()) continue;
    std::printf("  %s %8lld: x%.2f the re-reading baseline (target x%.0f): %s\n", type_name(r.dtype),
                static_cast<long long>(r.context), r.speedup(), kTargetOverBaseline,
                verdict(r.speedup() >= kTargetOverBaseline, format("%.0f%%", 100 * (1 - r.speedup() / kTargetOverBaseline))).c_str());
  }
  double least_on_cpu = 1;
  for (const DecodeRow& r : run.rows) {
    if (r.ok()) least_on_cpu = std::min({least_on_cpu, r.qkv.on_cpu, r.baseline.on_cpu});
  }
  if (least_on_cpu < kQuietOnCpu) {
    std::printf("WARNING   the threads were on a CPU as little as %.0f%% of some steps (other processes): those times\n"
                "          are up to %.1fx too long. Rerun on a quiet machine before trusting them.\n",
                100 * least_on_cpu, 1 / least_on_cpu);
  }
  for (const DecodeRow& r : run.rows) {
    if (r.ok() && !(r.max_abs_diff <= kMaxAgreedDiff)) {
      std::printf("WARNING   %lld %s: qkv and the baseline differ by %.2e (more than %.0e)\n",
                  static_cast<long long>(r.context), type_name(r.dtype), r.max_abs_diff, kMaxAgreedDiff);
    }
  }

  std::printf(
      "\nqkv/step           qkv::attention_with_kvcache, q [1, 1, %lld, %lld], no k_new: median of %d-%d steps after\n"
      "                   %d warm-up steps (about %.1f s of steps per row)\n"
      "K+V/step           context * %lld KV heads * (K + V) row bytes, + 8 bytes of scales per token and head (int8)\n"
      "GB/s               K+V/step / qkv/step (1 GB = 1e9 bytes)\n"
      "probe GB/s         runtime/bandwidth_probe.h on a buffer of K+V/step bytes (at most the DRAM point), the same\n"
      "                   threads, best of several sums: a contiguous stream of as many bytes\n"
      "kernel-order GB/s  the cache itself read in the decode kernel's order and tasks (per 64-key block: K token by\n"
      "                   token, then V KV head by KV head), no arithmetic; timed as qkv/step\n"
      "baseline/step      each query head streams its KV head's K and V alone (no GQA sharing, %lldx the reads)\n"
      "speed-up           baseline/step / qkv/step\n"
      "max|diff|          largest |qkv - baseline| over the output\n"
      "peak RSS           the process's resident peak while the row ran: the cache, the fill buffers, the steps;\n"
      "                   step adds: what one qkv step adds to it\n"
      "on-CPU             CPU time / (wall time * threads) over a step (median): under 100%% other processes had\n"
      "                   the cores part of the time, and the times above are that much longer\n",
      static_cast<long long>(kHeads), static_cast<long long>(kHeadDim), kMinSteps, kMaxSteps, kWarmupSteps,
      kTargetSeconds, static_cast<long long>(kKvHeads), static_cast<long long>(kHeads / kKvHeads));
}

Json decode_json(const DecodeRun& run, const DecodeOptions& options) {
  Json report{Json::Object{}};
  report.set("qkv_version", kVersion);
  report.set("date", run.date);
  Json contexts{Json::Array{}}, types{Json::Array{}};
  for (const int64_t c : options.contexts) contexts.push(c);
  for (const std::string& t : options.types) types.push(t);
  report.set("options", Json::Object{{"contexts", contexts}, {"types", types}, {"threads", options.threads},
                                     {"quick", options.quick}});
  report.set("machine", Json::Object{{"cpu", run.cpu},
                                     {"logical_cpus", static_cast<int64_t>(run.logical_cpus)},
                                     {"threads", run.threads},
                                     {"simd_target", run.simd_target},
                                     {"mem_available_bytes", run.mem_available},
                                     {"l3_bytes", run.l3_bytes},
                                     {"load_average_start", run.load_start},
                                     {"load_average_end", run.load_end}});
  report.set("shape", Json::Object{{"batch", 1}, {"heads", kHeads}, {"kv_heads", kKvHeads}, {"head_dim", kHeadDim},
                                   {"head_dim_v", kHeadDim}, {"new_tokens_per_step", 1}, {"cache", "contiguous"}});
  Json by_size{Json::Array{}};
  for (const auto& [bytes, gbs] : run.bandwidth->measured()) by_size.push(Json::Object{{"bytes", bytes}, {"gbs", gbs}});
  report.set("read_bandwidth_gbs", Json::Object{{"dram_bytes", run.bandwidth->dram_bytes()},
                                                {"dram_start", run.dram_gbs_start},
                                                {"dram_end", run.dram_gbs_end},
                                                {"l3_point_bytes", run.l3_point_bytes},
                                                {"l3_point", run.l3_point_gbs},
                                                {"by_size", by_size},
                                                {"what", "runtime/bandwidth_probe.h: vectorized sum, best of several"}});
  report.set("timing", Json::Object{{"warm_up_steps", kWarmupSteps}, {"min_steps", kMinSteps},
                                    {"max_steps", kMaxSteps}, {"statistic", "median"}});
  Json rows{Json::Array{}};
  for (const DecodeRow& r : run.rows) {
    Json row{Json::Object{{"context", r.context}, {"cache", type_name(r.dtype)}}};
    if (!r.ok()) {
      row.set("skipped", r.skipped);
      rows.push(std::move(row));
      continue;
    }
    row.set("kv_bytes_per_step", r.bytes);
    row.set("seconds", r.qkv.median);
    row.set("best_seconds", r.qkv.best);
    row.set("steps", r.qkv.steps);
    row.set("tokens_per_second", 1 / r.qkv.median);
    row.set("gbs", r.gbs());
    row.set("probe_bytes", r.probe_bytes);
    row.set("probe_gbs", r.probe_gbs);
    row.set("percent_of_probe", r.percent_of_probe());
    row.set("kernel_order_stream_seconds", r.stream.median);
    row.set("kernel_order_stream_gbs", r.stream_gbs());
    row.set("on_cpu", r.qkv.on_cpu);
    row.set("baseline_on_cpu", r.baseline.on_cpu);
    row.set("percent_of_dram_probe", 100 * r.gbs() / std::max(run.dram_gbs_start, run.dram_gbs_end));
    row.set("baseline_seconds", r.baseline.median);
    row.set("baseline_steps", r.baseline.steps);
    row.set("speedup_vs_baseline", r.speedup());
    row.set("max_abs_diff_vs_baseline", r.max_abs_diff);
    row.set("fill_seconds", r.fill_seconds);
    row.set("peak_resident_bytes", r.peak_resident_bytes);
    row.set("peak_extra_bytes", r.peak_extra_bytes);
    row.set("step_extra_bytes", r.step_extra_bytes);
    row.set("peak_method", peak_method_description(r.peak_method));
    if (const DecodeRow* fp16 = r.dtype == DType::kInt8 ? find_row(run, r.context, DType::kFloat16) : nullptr) {
      row.set("tokens_per_second_over_fp16", fp16->qkv.median / r.qkv.median);
    }
    rows.push(std::move(row));
  }
  report.set("rows", std::move(rows));
  return report;
}

// ------------------------------------------------------------------ command

void run_bench_decode(const DecodeOptions& options) {
  if (options.contexts.empty()) throw CommandError("--contexts: give at least one context");
  for (const int64_t c : options.contexts) {
    if (c < 1) throw CommandError(format("--contexts: %lld is not a positive token count", static_cast<long long>(c)));
  }
  std::vector<DType> types;
  for (const std::string& t : options.types) types.push_back(parse_type(t));
  if (!options.json.empty()) {  // fail now, not after minutes of measuring (without creating it)
    namespace fs = std::filesystem;
    std::error_code error;
    const bool ok = fs::exists(options.json, error)
                        ? std::ofstream(options.json, std::ios::binary | std::ios::app).good()
                        : ::access(fs::absolute(options.json, error).parent_path().c_str(), W_OK) == 0;
    if (!ok) throw CommandError("--json: cannot write '" + options.json + "'");
  }

  DecodeRun run;
  run.threads = internal::resolve_threads(options.threads);
  run.cpu = cpu_model();
  run.logical_cpus = std::thread::hardware_concurrency();
  const std::vector<int64_t> targets = internal::flash_targets();
  run.simd_target = targets.empty() ? "unknown" : internal::flash_target_name(targets[0]);
  run.mem_available = available_memory_bytes();
  run.date = utc_now();
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  run.l3_bytes = l3 > 0 ? l3 : 0;
  // DRAM: 2 GiB, or 4x the L3 if that is more. L3 point: a quarter of the L3.
  const int64_t dram_bytes = std::max<int64_t>(int64_t{2} << 30, 4 * run.l3_bytes);
  run.l3_point_bytes = run.l3_bytes > 0 ? run.l3_bytes / 4 : int64_t{8} << 20;
  BandwidthTable bandwidth(run.threads, dram_bytes);
  run.bandwidth = &bandwidth;

  std::printf("qkv bench decode  %s, %u logical CPUs, %d thread%s, SIMD target %s, qkv %s, %s\n", run.cpu.c_str(),
              run.logical_cpus, run.threads, run.threads == 1 ? "" : "s", run.simd_target.c_str(), kVersion,
              run.date.c_str());
  std::printf("shape     batch 1, %lld query heads / %lld KV heads, head_dim %lld, 1 new token per step, contiguous cache\n",
              static_cast<long long>(kHeads), static_cast<long long>(kKvHeads), static_cast<long long>(kHeadDim));
  std::fflush(stdout);

  run.load_start = load_average();
  ProgressLine progress;
  progress.start("read bandwidth probe: DRAM...");
  run.dram_gbs_start = bandwidth.measure(dram_bytes);
  progress.append(format(" %.1f GB/s, L3 point...", run.dram_gbs_start));
  run.l3_point_gbs = bandwidth.at(run.l3_point_bytes);
  progress.append(format(" %.1f GB/s", run.l3_point_gbs));

  const auto start = std::chrono::steady_clock::now();
  for (const int64_t context : options.contexts) {
    for (const DType dtype : types) {
      DecodeRow row;
      row.context = context;
      row.dtype = dtype;
      row.bytes = kv_bytes(context, dtype);
      progress.start(format("[%zu/%zu] %s, context %lld (%s):", run.rows.size() + 1,
                            options.contexts.size() * types.size(), type_name(dtype),
                            static_cast<long long>(context), format_bytes(static_cast<double>(row.bytes)).c_str()));
      run_row(row, run.threads, options.quick, bandwidth, progress);
      if (!row.ok()) progress.append(" skipped: " + row.skipped);
      run.rows.push_back(std::move(row));
    }
  }
  progress.start("read bandwidth probe: DRAM again...");
  run.dram_gbs_end = bandwidth.measure(dram_bytes);
  run.load_end = load_average();
  progress.finish();
  std::fprintf(stderr, "qkv bench decode: done in %s\n",
               format_time(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()).c_str());

  std::printf("read bw   DRAM (%s): %.1f GB/s at the start, %.1f at the end; L3 point (%s of a %s L3): %.1f GB/s\n",
              format_bytes(static_cast<double>(dram_bytes)).c_str(), run.dram_gbs_start, run.dram_gbs_end,
              format_bytes(static_cast<double>(run.l3_point_bytes)).c_str(),
              format_bytes(static_cast<double>(run.l3_bytes)).c_str(), run.l3_point_gbs);
  std::printf("load      %.1f at the start, %.1f at the end (1-minute load average, %u logical CPUs)\n", run.load_start,
              run.load_end, run.logical_cpus);
  print_decode_report(run);
  if (!options.json.empty()) {
    std::ofstream out(options.json, std::ios::binary | std::ios::trunc);
    out << decode_json(run, options).dump(2) << "\n";
    if (!out.flush()) throw CommandError("cannot write --json file '" + options.json + "'");
    std::printf("json      wrote %s\n", options.json.c_str());
  }
}

}  // namespace

void register_bench_decode(CLI::App& bench) {
  auto options = std::make_shared<DecodeOptions>();
  options->contexts = {4096, 32768, 131072, 1048576};
  options->types = {"f32", "f16", "bf16", "int8"};
  CLI::App* decode = bench.add_subcommand(
      "decode", "Time one decode step against a KV cache of 4K to 1M tokens, as a fraction of the read bandwidth");
  decode->add_option("--contexts", options->contexts, "Tokens in the cache, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  decode->add_option("--types", options->types, "Cache types, comma-separated: f32, f16, bf16, int8")
      ->delimiter(',')
      ->capture_default_str();
  decode->add_option("--threads", options->threads, "Threads for qkv, the baseline and the probe (0 = all)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  decode->add_option("--json", options->json, "Write every number, the machine and the probes to this file");
  auto* contexts_given = decode->get_option("--contexts");
  decode->add_flag("--quick", options->quick, "Contexts 4096 and 32768 (unless --contexts), shorter timing");
  decode->footer(
      "\nShape: batch 1, 32 query heads, 8 KV heads, head_dim 128, contiguous cache.\n"
      "Progress goes to stderr; the report to stdout. See docs/bench.md, section Decode.");
  decode->callback([options, contexts_given] {
    DecodeOptions run = *options;
    if (run.quick && contexts_given->count() == 0) run.contexts = {4096, 32768};
    run_bench_decode(run);
  });
}

}  // namespace qkv::tools
