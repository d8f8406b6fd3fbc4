// `qkv bench`: qkv against its peers, as a fraction of this machine's peak.
//
// One run, one machine state:
//   1. the fp32 FMA peak with qkv's own probe (runtime/peak_probe.h), with
//      all the threads and with one; the Python peers (bench/peers.py:
//      PyTorch, ONNX Runtime) imported in a child process that serves the
//      whole run;
//   2. every case of the sweep (bench_cases.h), one after the other: the FMA
//      peak again, then qkv::attention, the materializing OpenBLAS baseline
//      (baseline.h), whose output also checks qkv's, and the peers, all with
//      the same threads, within seconds of each other (this machine's clock
//      phases change a call's time by 10% and more within minutes, so every
//      ratio of a case, to the peak too, is taken inside one such window);
//   3. qkv with one thread against all of them on one case, in alternating
//      rounds (scaling);
//   4. the FMA peak again: a machine that slowed down (heat, a neighbour)
//      shows as a gap between the first and the last;
// then one table per shape on stdout, --json with every number and --plot
// (bench/plot.py). Progress goes to stderr.
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

#include "baseline.h"
#include "bench_cases.h"
#include "bench_decode.h"
#include "bench_json.h"
#include "bench_python.h"
#include "bench_report.h"
#include "commands.h"
#include "random_inputs.h"
#include "kernels/bf16_forward.h"
#include "kernels/flash_forward.h"
#include "memory_probe.h"
#include "progress.h"
#include "qkv/attention.h"
#include "qkv/version.h"
#include "runtime/half.h"
#include "runtime/amx.h"
#include "runtime/peak_probe.h"
#include "runtime/threads.h"

namespace qkv::tools {
namespace {

// The baseline writes a [heads, seq, seq] float32 score matrix: it runs up to
// this length (8 GiB of scores at 32 heads) and only where that matrix and
// its output take at most this fraction of MemAvailable.
constexpr int64_t kBaselineMaxSeq = 8192;
constexpr double kBaselineMemoryFraction = 0.6;
// OpenBLAS's (pthreads build) workers spin for about 2^28 cycles (~0.1 s)
// after a call before they sleep; idling this long after the baseline keeps
// them from stealing cores from whatever is timed next.
constexpr auto kBlasIdle = std::chrono::milliseconds(250);
// The case of the 1-thread vs N-thread row.
const BenchCase kScalingCase{128, 32, 8, 2048, true, DType::kFloat32};
constexpr int kScalingRounds = 3;  // odd: the median is one round's time
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

struct BenchOptions {
  bool quick = false;
  int threads = 0;
  std::string json, plot;
  std::string peers = "auto";
  std::string python = "python3";
  std::string cases;
  int retries = kCaseRetries;  // times a case is timed again when the machine changed speed
};

// ---------------------------------------------------------------- inputs


AlignedVector<uint16_t> to_bf16(const AlignedVector<float>& values) {
  AlignedVector<uint16_t> out(values.size());
  const auto n = static_cast<int64_t>(values.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = internal::bf16_from_f32(values[i]);
  return out;
}

// The inputs of one shape: q [1, seq, heads, head_dim], k and v [1, seq,
// kv_heads, head_dim], in float32 and, made on first use from the same
// values, in bfloat16. Cases that differ only in causal and dtype share them.
class Inputs {
 public:
  explicit Inputs(const BenchCase& c)
      : shape_(c),
        q_(random_tensor(c.seq * c.heads * c.head_dim, 1)),
        k_(random_tensor(c.seq * c.kv_heads * c.head_dim, 2)),
        v_(random_tensor(c.seq * c.kv_heads * c.head_dim, 3)) {}

  bool serves(const BenchCase& c) const {
    return c.seq == shape_.seq && c.heads == shape_.heads && c.kv_heads == shape_.kv_heads &&
           c.head_dim == shape_.head_dim;
  }

  // A zeroed (so resident) output for case c: float32 or bfloat16 elements.
  AlignedVector<float> new_output_f32() const { return AlignedVector<float>(q_.size(), 0.0f); }
  AlignedVector<uint16_t> new_output_bf16() const { return AlignedVector<uint16_t>(q_.size(), 0); }

  // Params of case c writing to o (float32 or bfloat16 as c.dtype says).
  AttentionParams params(const BenchCase& c, void* o, int threads) {
    const void* q = q_.data();
    const void* k = k_.data();
    const void* v = v_.data();
    if (c.dtype == DType::kBFloat16) {
      if (q16_.empty()) {
        q16_ = to_bf16(q_);
        k16_ = to_bf16(k_);
        v16_ = to_bf16(v_);
      }
      q = q16_.data();
      k = k16_.data();
      v = v16_.data();
    }
    AttentionParams p;
    p.q = Tensor::contiguous(q, c.dtype, {1, c.seq, c.heads, c.head_dim});
    p.k = Tensor::contiguous(k, c.dtype, {1, c.seq, c.kv_heads, c.head_dim});
    p.v = Tensor::contiguous(v, c.dtype, {1, c.seq, c.kv_heads, c.head_dim});
    p.o = Tensor::contiguous(o, c.dtype, {1, c.seq, c.heads, c.head_dim});
    p.causal = c.causal;  // seq_q == seq_kv: both alignments agree
    p.num_threads = threads;
    p.backend = Backend::kAuto;
    return p;
  }

 private:
  BenchCase shape_;
  AlignedVector<float> q_, k_, v_;
  AlignedVector<uint16_t> q16_, k16_, v16_;
};

// ---------------------------------------------------------------- measuring

// Seconds per call of fn under the timing policy of bench_report.h.
double time_call(const std::function<void()>& fn, int64_t seq) {
  fn();  // warm-up: thread pools, first-touch of buffers, caches
  const bool single = seq > kBenchSingleRunAboveSeq;
  std::vector<double> seconds;
  double spent = 0;
  while (seconds.empty() ||
         (!single && static_cast<int>(seconds.size()) < kBenchMaxRuns &&
          (static_cast<int>(seconds.size()) < kBenchMinRuns || spent < kBenchRunSeconds))) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    spent += seconds.back();
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

double max_abs_diff(const AlignedVector<float>& a, const AlignedVector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!(d <= worst)) worst = d;  // NaN sticks
  }
  return worst;
}

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    // x86: "model name"; some Arm kernels: "Model" or "Hardware".
    if (key == "model name" || key == "Model" || key == "Hardware") {
      const size_t start = line.find_first_not_of(" \t", colon + 1);
      if (start != std::string::npos) return line.substr(start);
    }
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

MachineInfo machine_info(int threads) {
  MachineInfo info;
  info.cpu = cpu_model();
  info.logical_cpus = std::thread::hardware_concurrency();
  info.threads = threads;
  const std::vector<int64_t> targets = internal::flash_targets();
  if (!targets.empty()) info.simd_target = internal::flash_target_name(targets[0]);
  info.bf16_engine = internal::bf16_engine_name(internal::bf16_flash_engine());
  info.mem_available = available_memory_bytes();
  info.date = utc_now();
  return info;
}

// Why the baseline does not run on case c ("" if it does).
std::string baseline_skip_reason(const BenchCase& c, int64_t bytes) {
  if (c.dtype != DType::kFloat32) return "float32 only";
  if (c.seq > kBaselineMaxSeq) return format("seq > %lld, to bound the run time", static_cast<long long>(kBaselineMaxSeq));
  const int64_t available = available_memory_bytes();
  if (available >= 0 && static_cast<double>(bytes) > kBaselineMemoryFraction * static_cast<double>(available)) {
    return format("needs %.1f GiB, over %.0f%% of MemAvailable (%.1f GiB)", bytes / kGiB,
                  kBaselineMemoryFraction * 100, available / kGiB);
  }
  return "";
}

// The FMA probe is short (about 50 ms): a neighbour process that runs during
// it lowers the result, never raises it, so take the best of a few.
double measure_peak(int threads) {
  constexpr int kProbes = 3;
  double best = 0;
  for (int i = 0; i < kProbes; ++i) best = std::max(best, internal::measure_fma_peak_gflops(threads));
  return best;
}

// Time since the run started, for the progress line.
class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  std::string elapsed() const {  // "12:05"
    const auto total = static_cast<long long>(seconds());
    return format("%lld:%02lld", total / 60, total % 60);
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Times qkv, qkv-fma, the baseline and the peers on one case, with the FMA
// probe before the first and after each (CaseResult::probes_after).
void time_case(const BenchCase& c, Inputs& inputs, int threads, bool bf16_units, PeersServer& peers,
               ProgressLine& progress, CaseResult& result) {
  const auto probe = [&] { result.probes_after.push_back(measure_peak(threads)); };
  result.peak = measure_peak(threads);
  progress.append(format(" %.0f, qkv...", result.peak));

  Measured& qkv = result.impl["qkv"];
  AlignedVector<float> o_qkv;
  if (c.dtype == DType::kBFloat16) {
    AlignedVector<uint16_t> o = inputs.new_output_bf16();
    const AttentionParams params = inputs.params(c, o.data(), threads);
    qkv.seconds = time_call([&] { attention(params); }, c.seq);
  } else {
    o_qkv = inputs.new_output_f32();
    const AttentionParams params = inputs.params(c, o_qkv.data(), threads);
    qkv.seconds = time_call([&] { attention(params); }, c.seq);
  }
  probe();
  progress.append(" " + format_time(qkv.seconds));

  if (bf16_units) {  // the same call with the bf16 units off: the float32 kernel
    Measured& fma = result.impl[kFmaImpl];
    if (c.dtype == DType::kBFloat16) {
      progress.append(std::string(", ") + kFmaImpl + "...");
      AlignedVector<uint16_t> o = inputs.new_output_bf16();
      const AttentionParams params = inputs.params(c, o.data(), threads);
      internal::set_dot_units_enabled(false);
      fma.seconds = time_call([&] { attention(params); }, c.seq);
      internal::set_dot_units_enabled(true);
      probe();
      progress.append(" " + format_time(fma.seconds));
    } else {
      fma.skipped = "bf16 cases only";
    }
  }
  progress.append(", openblas...");

  Measured& baseline = result.impl["openblas"];
  const int64_t baseline_bytes = materialized_attention_bytes(inputs.params(c, nullptr, threads)) +
                                 c.seq * c.heads * c.head_dim * 4;  // its scores and output
  baseline.skipped = baseline_skip_reason(c, baseline_bytes);
  if (baseline.skipped.empty()) {
    AlignedVector<float> o = inputs.new_output_f32();
    const AttentionParams params = inputs.params(c, o.data(), threads);
    baseline.seconds = time_call([&] { materialized_attention(params); }, c.seq);
    baseline.max_abs_diff = max_abs_diff(o_qkv, o);
    std::this_thread::sleep_for(kBlasIdle);
    probe();
    progress.append(" " + format_time(baseline.seconds));
  } else {
    progress.append(" skipped");
    // qkv's workers too spin a little after a call: idle before a peer is timed.
    if (!peers.names().empty()) std::this_thread::sleep_for(kBlasIdle);
  }

  for (const std::string& name : peers.names()) {
    progress.append(", " + name + "...");
    const PeerResult peer = peers.time(c, name);
    Measured& m = result.impl[name];
    m.seconds = peer.unavailable.empty() ? peer.seconds : 0;
    m.skipped = peer.unavailable;
    m.note = peer.note;
    if (m.ok()) probe();
    progress.append(m.ok() ? " " + format_time(m.seconds) : " unavailable");
  }
}

// Times every case in order (time_case); a case during which the machine
// changed speed (this VM halves its speed for seconds to minutes at a time)
// is timed again, up to `retries` times. Inputs are made once per shape
// and shared by the cases that follow with the same shape.
std::vector<CaseResult> run_sweep(const std::vector<BenchCase>& cases, int threads, int retries,
                                  bool bf16_units, PeersServer& peers, const Stopwatch& clock,
                                  ProgressLine& progress) {
  std::vector<CaseResult> results;
  std::unique_ptr<Inputs> inputs;
  for (size_t n = 0; n < cases.size(); ++n) {
    const BenchCase& c = cases[n];
    if (!inputs || !inputs->serves(c)) {
      inputs.reset();  // free the previous shape first
      inputs = std::make_unique<Inputs>(c);
    }
    CaseResult result;
    for (int attempt = 0;; ++attempt) {
      result = CaseResult();
      result.shape = c;
      result.retries = attempt;
      progress.start(format("[%zu/%zu %s] %s%s: peak...", n + 1, cases.size(), clock.elapsed().c_str(),
                            c.name().c_str(), attempt > 0 ? format(" (again, %d)", attempt).c_str() : ""));
      time_case(c, *inputs, threads, bf16_units, peers, progress, result);
      if (result.steady() || attempt >= retries) break;
    }
    results.push_back(std::move(result));
  }
  return results;
}

// qkv on kScalingCase with one thread and with `threads`, in kScalingRounds
// alternating rounds (one, then all, back to back): each time is the median
// of its rounds, so a change of the machine's phase during one round (this VM
// has them) moves neither much.
Scaling run_scaling(int threads, ProgressLine& progress) {
  Scaling scaling;
  scaling.shape = kScalingCase;
  if (threads == 1) {
    scaling.skipped = "--threads 1";
    return scaling;
  }
  progress.start(format("scaling: %s, 1 thread against %d, %d rounds:", kScalingCase.name().c_str(), threads,
                        kScalingRounds));
  Inputs inputs(kScalingCase);
  AlignedVector<float> o = inputs.new_output_f32();
  const AttentionParams one = inputs.params(kScalingCase, o.data(), 1);
  const AttentionParams all = inputs.params(kScalingCase, o.data(), threads);
  std::vector<double> one_seconds, all_seconds;
  for (int round = 0; round < kScalingRounds; ++round) {
    one_seconds.push_back(time_call([&] { attention(one); }, kScalingCase.seq));
    all_seconds.push_back(time_call([&] { attention(all); }, kScalingCase.seq));
    progress.append(format(" %s/%s", format_time(one_seconds.back()).c_str(), format_time(all_seconds.back()).c_str()));
  }
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  scaling.one_thread_seconds = median(one_seconds);
  scaling.seconds = median(all_seconds);
  scaling.rounds = kScalingRounds;
  return scaling;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush()) throw CommandError("cannot write --json file '" + path + "'");
}

// One tiny call of each implementation, so that thread pools and library
// buffers exist before anything is measured.
void warm_up(int threads) {
  const BenchCase tiny{64, 4, 2, 256, true, DType::kFloat32};
  Inputs inputs(tiny);
  AlignedVector<float> o = inputs.new_output_f32();
  const AttentionParams params = inputs.params(tiny, o.data(), threads);
  attention(params);
  materialized_attention(params);
  std::this_thread::sleep_for(kBlasIdle);
}

void check_peers_option(const std::string& peers) {
  if (peers == "auto" || peers == "none") return;
  size_t start = 0;
  while (start <= peers.size()) {
    const size_t comma = std::min(peers.find(',', start), peers.size());
    const std::string name = peers.substr(start, comma - start);
    if (name != "torch" && name != "onnxruntime") {
      throw CommandError("--peers: unknown peer '" + name + "' (known: torch, onnxruntime; or auto, none)");
    }
    start = comma + 1;
  }
}

// Fails now, not after an hour of measuring, if `path` cannot be written
// (without creating it: --plot may still be skipped).
void check_writable(const std::string& path, const char* option) {
  if (path.empty()) return;
  namespace fs = std::filesystem;
  std::error_code error;
  bool ok = false;
  if (fs::exists(path, error)) {
    ok = fs::is_regular_file(path, error) && std::ofstream(path, std::ios::binary | std::ios::app).good();
  } else {
    const fs::path parent = fs::absolute(path, error).parent_path();
    ok = fs::is_directory(parent, error) && ::access(parent.c_str(), W_OK) == 0;
  }
  if (!ok) throw CommandError(std::string(option) + ": cannot write '" + path + "'");
}

void run_bench(const BenchOptions& options) {
  check_peers_option(options.peers);
  check_writable(options.json, "--json");
  check_writable(options.plot, "--plot");
  const std::vector<BenchCase> cases = filter_cases(bench_sweep(options.quick), options.cases);
  if (cases.empty()) throw CommandError("--cases '" + options.cases + "' matches no case");
  const int threads = internal::resolve_threads(options.threads);
  BenchRun run;
  run.machine = machine_info(threads);
  const MachineInfo& machine = run.machine;
  std::printf("qkv bench  %s, %u logical CPUs, %d thread%s, SIMD target %s%s, qkv %s, %s\n", machine.cpu.c_str(),
              machine.logical_cpus, threads, threads == 1 ? "" : "s", machine.simd_target.c_str(),
              machine.bf16_units() ? (" (bf16: " + machine.bf16_engine + ")").c_str() : "", kVersion, machine.date.c_str());
  std::printf("cases     %zu%s\n", cases.size(), options.quick ? " (--quick)" : "");
  std::fflush(stdout);

  const Stopwatch clock;
  ProgressLine progress;
  progress.start("FMA peak...");
  run.peak.start = measure_peak(threads);
  run.peak.one_thread = threads == 1 ? run.peak.start : measure_peak(1);
  progress.append(format(" %.1f GFLOP/s, %.1f with 1 thread; warming up...", run.peak.start, run.peak.one_thread));
  warm_up(threads);
  if (options.peers != "none") {
    progress.start(format("[%s] peers: %s bench/peers.py --serve...", clock.elapsed().c_str(),
                          options.python.c_str()));
    progress.finish();  // peers.py reports its imports itself
  }
  PeersServer peers(options.python, options.peers, threads);
  if (!peers.report().failure.empty()) std::fprintf(stderr, "peers: %s\n", peers.report().failure.c_str());

  run.cases = run_sweep(cases, threads, options.retries, machine.bf16_units(), peers, clock, progress);
  run.peers = peers.report();
  run.scaling = run_scaling(threads, progress);

  progress.start(format("[%s] FMA peak again...", clock.elapsed().c_str()));
  run.peak.end = measure_peak(threads);
  progress.finish();
  std::fprintf(stderr, "qkv bench: done in %s\n", clock.elapsed().c_str());

  print_report(run);
  const Json report = report_json(run, Json::Object{{"quick", options.quick},
                                                    {"threads", options.threads},
                                                    {"cases", options.cases},
                                                    {"peers", options.peers},
                                                    {"retries", options.retries}});
  if (!options.json.empty()) {
    write_file(options.json, report.dump(2) + "\n");
    std::printf("json      wrote %s\n", options.json.c_str());
  }
  if (!options.plot.empty()) {
    const std::string why_not = run_plot(options.python, report, options.plot);
    if (why_not.empty()) {
      std::printf("plot      wrote %s\n", options.plot.c_str());
    } else {
      std::printf("plot      skipped: %s\n", why_not.c_str());
    }
  }
}

}  // namespace

void register_bench(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  CLI::App* bench = app.add_subcommand(
      "bench", "Time qkv, a materializing OpenBLAS baseline, PyTorch and ONNX Runtime against this machine's peak");
  bench->add_flag("--quick", options->quick, "Short sweep: head_dim 128, seq 512 to 2048");
  bench->add_option("--threads", options->threads, "Threads for every implementation (0 = all)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  bench->add_option("--json", options->json, "Write every number, the machine and the peak to this file");
  bench->add_option("--plot", options->plot, "Draw GFLOP/s against seq to this PNG (needs matplotlib)");
  bench->add_option("--peers", options->peers, "Python peers: auto, none, or a list such as torch,onnxruntime")
      ->capture_default_str();
  bench->add_option("--python", options->python, "Python interpreter for bench/peers.py and bench/plot.py")
      ->capture_default_str();
  bench->add_option("--cases", options->cases,
                    "Only the cases whose name matches this regex, e.g. 'd128-h32/8-s(512|1024)-causal-fp32'");
  bench->add_option("--retries", options->retries,
                    "Times a case is timed again when the FMA probe after one of its implementations is more "
                    "than 5% off the one before it (the machine changed speed)")
      ->capture_default_str()
      ->check(CLI::Range(0, 10));
  bench->footer(
      "\nCases are named d<head_dim>-h<heads>/<kv_heads>-s<seq>-<causal|full>-<fp32|bf16>.\n"
      "Progress goes to stderr; the report, one table per shape, to stdout.");
  register_bench_decode(*bench);  // `qkv bench decode` (bench_decode.h)
  bench->callback([options, bench] {
    if (bench->get_subcommands().empty()) run_bench(*options);
  });
}

}  // namespace qkv::tools
