// `qkv demo`: qkv against textbook attention, from 1K to 64K tokens.
//
// One shape, the prefill of a GQA model (batch 1, 8 query heads sharing 2 KV
// heads, head_dim 128, causal, float32), at sequence lengths doubling from
// --min-seq to --max-seq. For each it times qkv::attention and the
// materialized baseline (baseline.h) on the same random inputs and the same
// threads, measures the peak memory each adds (memory_probe.h), and compares
// their outputs. The baseline is skipped where its seq^2 score matrix would
// not fit, which is the point of the demo.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "baseline.h"
#include "commands.h"
#include "random_inputs.h"
#include "memory_probe.h"
#include "progress.h"
#include "qkv/attention.h"

namespace qkv::tools {
namespace {

constexpr int64_t kHeads = 8;
constexpr int64_t kKvHeads = 2;
constexpr int64_t kHeadDim = 128;
// From this length on a call is timed once (the baseline at 16K writes 8 GiB
// of scores; qkv at 64K runs for a minute); below it, the median of 3.
constexpr int64_t kSingleRunSeq = 16384;
// The baseline runs only if its score matrix and output take at most this
// fraction of MemAvailable: the rest is headroom for everything else.
constexpr double kBaselineMemoryFraction = 0.8;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kMiB = 1024.0 * 1024.0;

struct DemoOptions {
  int64_t min_seq = 1024;
  int64_t max_seq = 65536;
  int64_t baseline_max_seq = 16384;
  int threads = 0;
};


// Inputs of one sequence length: q [1, seq, 8, 128], k and v [1, seq, 2, 128].
struct Inputs {
  int64_t seq = 0;
  AlignedVector<float> q, k, v;

  explicit Inputs(int64_t seq_len)
      : seq(seq_len),
        q(random_tensor(seq_len * kHeads * kHeadDim, 1)),
        k(random_tensor(seq_len * kKvHeads * kHeadDim, 2)),
        v(random_tensor(seq_len * kKvHeads * kHeadDim, 3)) {}

  // A zeroed (so resident) output of the right size.
  AlignedVector<float> new_output() const { return AlignedVector<float>(q.size(), 0.0f); }

  AttentionParams params(AlignedVector<float>& o, int threads) const {
    AttentionParams p;
    p.q = Tensor::contiguous(q.data(), DType::kFloat32, {1, seq, kHeads, kHeadDim});
    p.k = Tensor::contiguous(k.data(), DType::kFloat32, {1, seq, kKvHeads, kHeadDim});
    p.v = Tensor::contiguous(v.data(), DType::kFloat32, {1, seq, kKvHeads, kHeadDim});
    p.o = Tensor::contiguous(o.data(), DType::kFloat32, {1, seq, kHeads, kHeadDim});
    p.causal = true;
    p.causal_align = CausalAlign::kBottomRight;
    p.num_threads = threads;
    return p;
  }
};

struct Timing {
  double seconds = 0;  // median of the runs
  PeakMemory peak;     // of the first run
};

// Runs fn `runs` times; the first run also measures the peak memory.
Timing measure(const std::function<void()>& fn, int runs) {
  std::vector<double> seconds;
  auto timed = [&] {
    const auto start = std::chrono::steady_clock::now();
    fn();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
  Timing timing;
  timing.peak = measure_peak_extra(timed);
  for (int r = 1; r < runs; ++r) timed();
  std::sort(seconds.begin(), seconds.end());
  timing.seconds = seconds[seconds.size() / 2];
  return timing;
}

enum class SkipReason : uint8_t { kNone, kSeqLimit, kMemory };

struct Row {
  int64_t seq = 0;
  Timing qkv;
  std::optional<Timing> baseline;
  SkipReason skip = SkipReason::kNone;
  int64_t baseline_bytes = 0;  // its score matrix and output
  int64_t available_bytes = -1;  // MemAvailable when the baseline was considered
  double max_diff = 0;
};

double max_abs_diff(const AlignedVector<float>& a, const AlignedVector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!(d <= worst)) worst = d;  // NaN sticks
  }
  return worst;
}

template <typename... Args>
std::string format(const char* fmt, Args... args) {
  char buffer[128];
  std::snprintf(buffer, sizeof buffer, fmt, args...);
  return buffer;
}

std::string format_time(double s) {
  if (s < 0.01) return format("%.2f ms", s * 1e3);
  if (s < 1) return format("%.1f ms", s * 1e3);
  if (s < 100) return format("%.2f s", s);
  return format("%.0f s", s);
}

std::string format_mib(const PeakMemory& peak) {
  if (peak.method == PeakMethod::kUnavailable) return "n/a";
  return format("%.1f MiB", static_cast<double>(peak.extra_bytes) / kMiB);
}

std::string format_bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  return b < kGiB ? format("%.0f MiB", b / kMiB) : format("%.1f GiB", b / kGiB);
}

// Prints rows of cells in aligned columns: numbers right-aligned, the first
// column too (lengths), separated by two spaces.
void print_table(const std::vector<std::vector<std::string>>& cells) {
  std::vector<size_t> width;
  for (const auto& row : cells) {
    width.resize(std::max(width.size(), row.size()), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : cells) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += std::string(c == 0 ? 0 : 2, ' ') + std::string(width[c] - row[c].size(), ' ') + row[c];
    }
    std::printf("%s\n", line.c_str());
  }
}

void print_report(const std::vector<Row>& rows, const DemoOptions& options, int threads) {
  std::vector<std::vector<std::string>> cells = {
      {"seq", "qkv", "qkv GFLOP/s", "qkv peak", "baseline", "baseline peak", "speed-up", "max |diff|"}};
  std::string over_limit, over_memory;
  int64_t available = -1;
  PeakMethod method = PeakMethod::kUnavailable;
  for (const Row& row : rows) {
    // 4 * heads * seq_q * seq_kv * head_dim (Q.K and P.V), half of it visible.
    const double flops = 4.0 * kHeads * static_cast<double>(row.seq) * row.seq * kHeadDim / 2;
    std::vector<std::string> line = {std::to_string(row.seq), format_time(row.qkv.seconds),
                                     format("%.1f", flops / row.qkv.seconds / 1e9), format_mib(row.qkv.peak)};
    method = row.qkv.peak.method;
    if (row.baseline) {
      line.push_back(format_time(row.baseline->seconds));
      line.push_back(format_mib(row.baseline->peak));
      line.push_back(format("%.2fx", row.baseline->seconds / row.qkv.seconds));
      line.push_back(format("%.1e", row.max_diff));
    } else {
      line.push_back("skipped: needs " + format_bytes(row.baseline_bytes));
      line.insert(line.end(), {"-", "-", "-"});
      std::string& list = row.skip == SkipReason::kSeqLimit ? over_limit : over_memory;
      list += (list.empty() ? "" : ", ") + std::to_string(row.seq);
      if (row.skip == SkipReason::kMemory && available < 0) available = row.available_bytes;
    }
    cells.push_back(std::move(line));
  }
  print_table(cells);

  std::printf(
      "\nqkv       qkv::attention (Backend::kAuto), %d thread%s.\n"
      "baseline  textbook attention as in PyTorch's math path: the full [1, %lld, seq, seq] float32\n"
      "          score matrix from OpenBLAS sgemm, -inf causal mask, softmax, then P.V; same inputs\n"
      "          and threads.\n"
      "peak      resident memory a call adds on top of its inputs and outputs;\n"
      "          %s.\n"
      "          qkv keeps a pack buffer of up to 16 MiB per calling thread between calls:\n"
      "          a call that fits the one kept adds less.\n"
      "GFLOP/s   4*heads*seq^2*head_dim, halved for causal. Times are the median of 3 runs below\n"
      "          seq %lld, one run from there on.\n",
      threads, threads == 1 ? "" : "s", static_cast<long long>(kHeads), peak_method_description(method),
      static_cast<long long>(kSingleRunSeq));
  if (!over_limit.empty()) {
    std::printf("skipped   baseline at seq %s: above --baseline-max-seq %lld, to bound the run time.\n",
                over_limit.c_str(), static_cast<long long>(options.baseline_max_seq));
  }
  if (!over_memory.empty()) {
    std::printf("skipped   baseline at seq %s: it would need more than %.0f%% of MemAvailable (%s).\n",
                over_memory.c_str(), kBaselineMemoryFraction * 100, format_bytes(available).c_str());
  }
}

// Runs both implementations once on a small problem, so thread pools and
// library buffers are created before anything is measured.
void warm_up(int threads) {
  const Inputs inputs(256);
  AlignedVector<float> o = inputs.new_output();
  attention(inputs.params(o, threads));
  materialized_attention(inputs.params(o, threads));
}

void run_demo(const DemoOptions& options) {
  if (options.max_seq < options.min_seq) {
    throw CommandError("--max-seq (" + std::to_string(options.max_seq) + ") must be at least --min-seq (" +
                       std::to_string(options.min_seq) + ")");
  }
  const int threads = options.threads > 0 ? options.threads : std::max(1, omp_get_max_threads());
  std::vector<int64_t> lengths;
  for (int64_t seq = options.min_seq; seq <= options.max_seq; seq *= 2) lengths.push_back(seq);

  std::printf(
      "qkv demo: causal attention (bottom-right), batch 1, %lld query heads sharing %lld KV heads, "
      "head_dim %lld, float32, random inputs (seed %llu), %d thread%s\n\n",
      static_cast<long long>(kHeads), static_cast<long long>(kKvHeads), static_cast<long long>(kHeadDim),
      static_cast<unsigned long long>(kInputSeed), threads, threads == 1 ? "" : "s");
  std::fflush(stdout);

  ProgressLine progress;
  progress.start("warming up...");
  warm_up(threads);

  std::vector<Row> rows;
  for (size_t n = 0; n < lengths.size(); ++n) {
    Row row;
    row.seq = lengths[n];
    const int runs = row.seq >= kSingleRunSeq ? 1 : 3;
    progress.start(format("[%zu/%zu] seq %lld: qkv...", n + 1, lengths.size(), static_cast<long long>(row.seq)));

    const Inputs inputs(row.seq);
    AlignedVector<float> o_qkv = inputs.new_output();
    const AttentionParams qkv_params = inputs.params(o_qkv, threads);
    row.qkv = measure([&] { attention(qkv_params); }, runs);
    progress.append(" " + format_time(row.qkv.seconds) + ", baseline...");

    row.baseline_bytes = materialized_attention_bytes(qkv_params) +
                         static_cast<int64_t>(o_qkv.size() * sizeof(float));
    row.available_bytes = available_memory_bytes();
    if (row.seq > options.baseline_max_seq) {
      row.skip = SkipReason::kSeqLimit;
    } else if (row.available_bytes >= 0 &&
               row.baseline_bytes > kBaselineMemoryFraction * static_cast<double>(row.available_bytes)) {
      row.skip = SkipReason::kMemory;
    }
    if (row.skip == SkipReason::kNone) {
      AlignedVector<float> o_baseline = inputs.new_output();
      const AttentionParams baseline_params = inputs.params(o_baseline, threads);
      row.baseline = measure([&] { materialized_attention(baseline_params); }, runs);
      row.max_diff = max_abs_diff(o_qkv, o_baseline);
      progress.append(" " + format_time(row.baseline->seconds));
    } else {
      progress.append(" skipped");
    }
    rows.push_back(row);
  }
  progress.finish();
  print_report(rows, options, threads);
}

}  // namespace

void register_demo(CLI::App& app) {
  auto options = std::make_shared<DemoOptions>();
  CLI::App* demo = app.add_subcommand(
      "demo", "Time qkv against textbook attention (full score matrix) from 1K to 64K tokens");
  demo->add_option("--min-seq", options->min_seq, "Shortest sequence length")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  demo->add_option("--max-seq", options->max_seq, "Longest sequence length (lengths double from --min-seq)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  demo->add_option("--baseline-max-seq", options->baseline_max_seq,
                   "Longest sequence length at which the baseline runs (it also skips when out of memory)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  demo->add_option("--threads", options->threads, "Threads for both implementations (0 = all)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  demo->callback([options] { run_demo(*options); });
}

}  // namespace qkv::tools
