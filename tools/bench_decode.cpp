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
#include <unistd.h>  // access

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_decode.h"
#include "bench_decode_kernels.h"
#include "bench_decode_run.h"
#include "bench_json.h"
#include "bench_report.h"
#include "commands.h"
#include "kernels/decode.h"
#include "kernels/flash_forward.h"
#include "memory_probe.h"
#include "progress.h"
#include "random_inputs.h"
#include "qkv/kv_cache.h"
#include "qkv/version.h"
#include "runtime/bandwidth_probe.h"
#include "runtime/caches.h"
#include "runtime/threads.h"

namespace qkv::tools {

namespace {

using namespace decode_bench;  // NOLINT: the run's pieces

// ------------------------------------------------------------------ setup



DType parse_type(const std::string& name) {
  if (name == "f32" || name == "fp32" || name == "float32") return DType::kFloat32;
  if (name == "f16" || name == "fp16" || name == "float16") return DType::kFloat16;
  if (name == "bf16" || name == "bfloat16") return DType::kBFloat16;
  if (name == "int8" || name == "i8") return DType::kInt8;
  throw CommandError("--types: unknown cache type '" + name + "' (known: f32, f16, bf16, int8)");
}

// K+V bytes one step reads: every token, KV head and element once, with the
// int8 scales (one float for K and one for V per token and KV head).
int64_t kv_bytes(int64_t context, DType dtype) {
  const int64_t scales = dtype == DType::kInt8 ? 8 : 0;
  return context * kKvHeads * (2 * kHeadDim * static_cast<int64_t>(dtype_size(dtype)) + scales);
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
  std::vector<double> seconds;
  double spent = 0, cpu = 0;
  while (static_cast<int>(seconds.size()) < kMinSteps ||
         (spent < target_seconds && static_cast<int>(seconds.size()) < kMaxSteps)) {
    const double cpu_start = process_cpu_seconds();
    const auto start = std::chrono::steady_clock::now();
    step();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    cpu += process_cpu_seconds() - cpu_start;
    spent += seconds.back();
  }
  return {median(seconds), *std::min_element(seconds.begin(), seconds.end()), cpu / (spent * threads),
          static_cast<int>(seconds.size())};
}

// Keys per task of qkv's decode kernel for one sequence of `keys` tokens, as
// decode.cpp chooses them (about 2 tasks per thread, none under 256 keys, a
// multiple of its largest block): the order the kernel-order stream copies.
int64_t kernel_chunk(int64_t keys, int threads) {
  constexpr int64_t kRound = internal::kDecodeMaxBlockKeys;
  const int64_t splits = std::clamp<int64_t>(2 * threads, 1, std::max<int64_t>(1, keys / 256));
  return (std::max<int64_t>(1, (keys + splits - 1) / splits) + kRound - 1) / kRound * kRound;
}

// ------------------------------------------------------------------ one row

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
  run.l3_bytes = internal::l3_cache_bytes();
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
  run.int8_engine = internal::decode_int8_engine(kHeadDim, kHeadDim, kHeads / kKvHeads);
  if (std::find(types.begin(), types.end(), DType::kInt8) != types.end()) {
    std::printf("int8      %s\n", run.int8_engine.c_str());
  }
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
