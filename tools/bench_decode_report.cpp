// `qkv bench decode`'s report: the tables and target lines on stdout and
// the JSON (bench_decode.cpp measures; bench_decode_run.h holds the results).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_decode_run.h"
#include "bench_json.h"
#include "bench_report.h"
#include "qkv/version.h"

namespace qkv::tools::decode_bench {

namespace {

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

// The step's read rate as a share of the DRAM probe (the larger of the run's
// two readings): the report's L3-resident fp16 lines and every JSON row.
double percent_of_dram_probe(const DecodeRun& run, const DecodeRow& r) {
  return 100 * r.gbs() / std::max(run.dram_gbs_start, run.dram_gbs_end);
}

}  // namespace

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
    // A cache that fits the L3 is held to the L3's probe; the DRAM probe's
    // share beside it (the memory a cache past the L3 comes from).
    const std::string in_l3 =
        r.bytes <= run.l3_bytes
            ? format(" (the cache fits the L3: %.0f%% of the DRAM probe)", percent_of_dram_probe(run, r))
            : "";
    // One decimal: 84.96% read "85%" and "MISSED by 0 points".
    std::printf("  fp16 %8lld: %4.1f%% of the read bandwidth (target %.0f%%%s): %s%s\n",
                static_cast<long long>(r.context), percent, kTargetPercentOfProbe,
                run.threads == 2 ? "" : ", set for 2 threads",
                verdict(percent >= kTargetPercentOfProbe, format("%.1f points", kTargetPercentOfProbe - percent)).c_str(),
                in_l3.c_str());
  }
  for (const DecodeRow& r : run.rows) {
    const DecodeRow* fp16 = r.dtype == DType::kInt8 && r.ok() ? find_row(run, r.context, DType::kFloat16) : nullptr;
    if (fp16 == nullptr) continue;
    const double ratio = fp16->qkv.median / r.qkv.median;
    std::printf("  int8 %8lld: x%.2f fp16's tokens/s (target x%.1f): %s\n", static_cast<long long>(r.context), ratio,
                kTargetInt8OverFp16,
                verdict(ratio >= kTargetInt8OverFp16, format("%.1f%%", 100 * (1 - ratio / kTargetInt8OverFp16))).c_str());
  }
  for (const DecodeRow& r : run.rows) {
    if (!r.ok()) continue;
    std::printf("  %s %8lld: x%.2f the re-reading baseline (target x%.0f): %s\n", type_name(r.dtype),
                static_cast<long long>(r.context), r.speedup(), kTargetOverBaseline,
                verdict(r.speedup() >= kTargetOverBaseline, format("%.0f%%", 100 * (1 - r.speedup() / kTargetOverBaseline))).c_str());
  }
  double least_on_cpu = 1;
  for (const DecodeRow& r : run.rows) {
    if (!r.ok()) continue;
    if (r.qkv.median >= kMinQuietCheckSeconds) least_on_cpu = std::min(least_on_cpu, r.qkv.on_cpu);
    if (r.baseline.median >= kMinQuietCheckSeconds) least_on_cpu = std::min(least_on_cpu, r.baseline.on_cpu);
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
      "kernel-order GB/s  the cache itself read in the decode kernel's order, tasks and blocks (per block: K token by\n"
      "                   token, then V KV head by KV head), no arithmetic; timed as qkv/step\n"
      "baseline/step      each query head streams its KV head's K and V alone (no GQA sharing, %lldx the reads)\n"
      "speed-up           baseline/step / qkv/step\n"
      "max|diff|          largest |qkv - baseline| over the output\n"
      "peak RSS           the process's resident peak while the row ran: the cache, the fill buffers, the steps;\n"
      "                   step adds: what one qkv step adds to it\n"
      "on-CPU             CPU time / (wall time * threads) over all timed steps: under 100%% other processes had\n"
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
                                     {"int8_engine", run.int8_engine},
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
    row.set("percent_of_dram_probe", percent_of_dram_probe(run, r));
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

}  // namespace qkv::tools::decode_bench
