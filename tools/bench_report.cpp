// Printing and JSON of `qkv bench`; see bench_report.h.
#include "bench_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "qkv/version.h"

namespace qkv::tools {

std::string format_time(double s) {
  if (s < 0.01) return format("%.2f ms", s * 1e3);
  if (s < 1) return format("%.1f ms", s * 1e3);
  if (s < 100) return format("%.2f s", s);
  return format("%.0f s", s);
}

namespace {

// Prints rows of cells in aligned columns, two spaces apart; column c is
// right-aligned when right[c]. The last cell of a short row (a reason why an
// implementation did not run) runs on without widening its column.
void print_table(const std::vector<std::vector<std::string>>& cells, const std::vector<bool>& right) {
  size_t columns = 0;
  for (const auto& row : cells) columns = std::max(columns, row.size());
  std::vector<size_t> width(columns, 0);
  for (const auto& row : cells) {
    for (size_t c = 0; c < row.size(); ++c) {
      if (c + 1 < row.size() || row.size() == columns) width[c] = std::max(width[c], row[c].size());
    }
  }
  for (const auto& row : cells) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      const size_t pad = row[c].size() < width[c] ? width[c] - row[c].size() : 0;
      line += "  ";
      if (c < right.size() && right[c]) line += std::string(pad, ' ') + row[c];
      else line += row[c] + (c + 1 < row.size() ? std::string(pad, ' ') : "");
    }
    std::printf("%s\n", line.c_str());
  }
}

double gflops(const BenchCase& c, double seconds) { return c.flops() / seconds * 1e-9; }

// A peer's one-line status from peers.py ("torch 2.5.1" or "torch: unavailable: ...").
std::string peer_status(const PeersReport& peers, const std::string& name) {
  const Json* info = peers.raw.find("peers");
  const Json* peer = info != nullptr ? info->find(name) : nullptr;
  if (peer == nullptr) return name + ": " + (peers.failure.empty() ? "no report" : peers.failure);
  if (const Json* reason = peer->find("unavailable"); reason != nullptr && reason->is_string()) {
    return name + ": unavailable: " + reason->as_string();
  }
  std::string text = name;
  if (const Json* version = peer->find("version"); version != nullptr && version->is_string()) {
    text += " " + version->as_string();
  }
  return text;
}

// The implementations in print order: qkv, the baseline, qkv without its bf16 units
// (if timed), the peers.
std::vector<std::string> implementation_names(const PeersReport& peers, const MachineInfo& machine) {
  std::vector<std::string> names = {"qkv", "openblas"};
  if (machine.bf16_units()) names.push_back(kFmaImpl);
  names.insert(names.end(), peers.names.begin(), peers.names.end());
  return names;
}

// Whether peers.py reported `name` unavailable as a whole (not per case).
bool peer_absent(const PeersReport& peers, const std::string& name) {
  const Json* info = peers.raw.find("peers");
  const Json* peer = info != nullptr ? info->find(name) : nullptr;
  return peer == nullptr || peer->find("unavailable") != nullptr;
}

// The peak a case's "% peak" is taken of: the best of its own probes, before
// it and after each implementation (the run's, for a result made without one).
double case_peak(const CaseResult& r, const Peak& run_peak) {
  return r.peak > 0 ? r.best_probe() : run_peak.best();
}

void print_group(const std::vector<const CaseResult*>& rows, const std::vector<std::string>& impls,
                 const Peak& run_peak) {
  std::printf("\n%s\n", rows.front()->shape.group_title().c_str());
  // An implementation skipped on every row for one reason gets one line, not a row each.
  std::vector<std::string> shown;
  for (const std::string& impl : impls) {
    const std::string& first = rows.front()->impl.at(impl).skipped;
    const bool uniform = !first.empty() && std::all_of(rows.begin(), rows.end(), [&](const CaseResult* r) {
      return r->impl.at(impl).skipped == first;
    });
    if (uniform && impl != "qkv") {
      std::printf("  %s: %s\n", impl.c_str(), first.c_str());
    } else {
      shown.push_back(impl);
    }
  }
  std::vector<std::vector<std::string>> cells = {{"seq", "implementation", "time", "GFLOP/s", "% peak", "qkv speed-up"}};
  for (const CaseResult* r : rows) {
    const Measured& qkv = r->impl.at("qkv");
    const double peak = case_peak(*r, run_peak);
    for (size_t i = 0; i < shown.size(); ++i) {
      const Measured& m = r->impl.at(shown[i]);
      std::vector<std::string> line = {i == 0 ? std::to_string(r->shape.seq) : "", shown[i]};
      if (m.ok()) {
        const double g = gflops(r->shape, m.seconds);
        line.insert(line.end(), {format_time(m.seconds), format("%.1f", g), format("%.1f%%", 100 * g / peak)});
        if (shown[i] != "qkv" && qkv.ok()) {
          line.push_back(format("x%.2f vs %s", m.seconds / qkv.seconds, shown[i].c_str()));
        }
      } else {
        line.push_back((shown[i] == "openblas" ? "skipped: " : "") + m.skipped);
      }
      cells.push_back(std::move(line));
    }
  }
  print_table(cells, {true, false, true, true, true, false});
}

// Geometric mean of qkv's speed-up over `peer` on the cases of `dtype` where
// both ran; count = how many.
std::pair<double, int> mean_speedup(const std::vector<CaseResult>& results, const std::string& peer, DType dtype) {
  double log_sum = 0;
  int count = 0;
  for (const CaseResult& r : results) {
    if (r.shape.dtype != dtype) continue;
    const Measured& qkv = r.impl.at("qkv");
    const Measured& other = r.impl.at(peer);
    if (!qkv.ok() || !other.ok()) continue;
    log_sum += std::log(other.seconds / qkv.seconds);
    ++count;
  }
  return {count > 0 ? std::exp(log_sum / count) : 0.0, count};
}

Json measured_json(const BenchCase& c, const std::string& impl, const Measured& m, const Measured& qkv,
                   double peak, double run_peak) {
  Json out{Json::Object{}};
  if (!m.ok()) {
    out.set("skipped", m.skipped);
    return out;
  }
  out.set("seconds", m.seconds);
  out.set("gflops", gflops(c, m.seconds));
  out.set("percent_of_peak", 100 * gflops(c, m.seconds) / peak);
  out.set("percent_of_run_peak", 100 * gflops(c, m.seconds) / run_peak);
  if (impl != "qkv" && qkv.ok()) out.set("qkv_speedup", m.seconds / qkv.seconds);
  if (!std::isnan(m.max_abs_diff)) out.set("max_abs_diff_vs_qkv", m.max_abs_diff);
  if (!m.note.empty()) out.set("note", m.note);
  return out;
}

// Lowest qkv % of peak over the fp32 cases with this head_dim, causal flag
// (both when `any_mask`) and seq >= kTargetMinSeq.
Target percent_target(const BenchRun& run, const std::string& what, int64_t head_dim, bool causal, bool any_mask,
                      double goal) {
  Target t{what, 0, goal, "%", "", 0};
  for (const CaseResult& r : run.cases) {
    const BenchCase& c = r.shape;
    const Measured& qkv = r.impl.at("qkv");
    if (c.dtype != DType::kFloat32 || c.head_dim != head_dim || c.seq < kTargetMinSeq || !qkv.ok() ||
        (!any_mask && c.causal != causal)) {
      continue;
    }
    const double percent = 100 * gflops(c, qkv.seconds) / case_peak(r, run.peak);
    if (t.cases++ == 0 || percent < t.value) {
      t.value = percent;
      t.where = "lowest: " + c.name();
    }
  }
  return t;
}

}  // namespace

std::vector<Target> bench_targets(const BenchRun& run) {
  std::vector<Target> targets = {
      percent_target(run, "fp32 head_dim 128 causal, seq >= 2048: % of peak", 128, true, false, 75),
      percent_target(run, "fp32 head_dim 128 no mask, seq >= 2048: % of peak", 128, false, false, 80),
      percent_target(run, "fp32 head_dim 64, seq >= 2048: % of peak", 64, false, true, 65),
  };
  // bf16 storage at least as fast as fp32 on the same shape.
  Target bf16{"bf16 storage: fp32's time / bf16's, same shape", 0, 1, "x", "", 0};
  for (const CaseResult& r : run.cases) {
    if (r.shape.dtype != DType::kBFloat16 || !r.impl.at("qkv").ok()) continue;
    BenchCase fp32_shape = r.shape;
    fp32_shape.dtype = DType::kFloat32;
    const auto fp32 = std::find_if(run.cases.begin(), run.cases.end(),
                                   [&](const CaseResult& o) { return o.shape.name() == fp32_shape.name(); });
    if (fp32 == run.cases.end() || !fp32->impl.at("qkv").ok()) continue;
    const double ratio = fp32->impl.at("qkv").seconds / r.impl.at("qkv").seconds;
    if (bf16.cases++ == 0 || ratio < bf16.value) {
      bf16.value = ratio;
      bf16.where = "lowest: " + r.shape.name();
    }
  }
  targets.push_back(bf16);
  Target scaling{"threads: one thread's time / all threads'", 0, kTargetThreadScaling, "x", "", 0};
  if (run.scaling.skipped.empty() && run.scaling.seconds > 0) {
    scaling.value = run.scaling.ratio();
    scaling.where = "on " + run.scaling.shape.name();
    scaling.cases = 1;
  }
  targets.push_back(scaling);
  // Ahead of every peer: the value is the fraction of (case, peer) pairs
  // where qkv was faster; the exceptions are listed.
  Target ahead{"ahead of every peer: share of (case, peer) pairs qkv wins", 0, 100, "%", "", 0, "(case, peer) pair"};
  int wins = 0;
  for (const CaseResult& r : run.cases) {
    const Measured& qkv = r.impl.at("qkv");
    if (!qkv.ok()) continue;
    for (const auto& [impl, m] : r.impl) {
      if (impl == "qkv" || impl == kFmaImpl || !m.ok()) continue;
      ++ahead.cases;
      if (m.seconds > qkv.seconds) {
        ++wins;
      } else {
        ahead.where += format("%s%s vs %s x%.2f", ahead.where.empty() ? "behind on: " : "; ",
                              r.shape.name().c_str(), impl.c_str(), m.seconds / qkv.seconds);
      }
    }
  }
  if (ahead.cases > 0) ahead.value = 100.0 * wins / ahead.cases;
  targets.push_back(ahead);
  return targets;
}

void print_report(const BenchRun& run) {
  const std::vector<CaseResult>& results = run.cases;
  const PeersReport& peers = run.peers;
  const MachineInfo& machine = run.machine;
  const Peak& peak = run.peak;
  const Scaling& scaling = run.scaling;
  std::printf("FMA peak  %.1f GFLOP/s fp32 with %d thread%s (start %.1f, end %.1f)", peak.best(), machine.threads,
              machine.threads == 1 ? "" : "s", peak.start, peak.end);
  if (machine.threads > 1) std::printf("; %.1f with 1 thread", peak.one_thread);
  double lowest = 0, highest = 0;
  for (const CaseResult& r : results) {
    if (r.peak <= 0) continue;
    lowest = lowest > 0 ? std::min(lowest, r.peak) : r.peak;
    highest = std::max(highest, r.peak);
  }
  if (highest > 0) std::printf("; before each case %.1f to %.1f", lowest, highest);
  std::printf("\n");
  int again = 0;
  std::string unsteady;
  for (const CaseResult& r : results) {
    again += r.retries > 0;
    if (!r.steady()) unsteady += (unsteady.empty() ? "" : ", ") + r.shape.name();
  }
  if (again > 0) {
    std::printf("steady    %d case%s timed again: the probe after an implementation was more than %.0f%% off "
                "the one before (the machine changed speed)%s%s\n",
                again, again == 1 ? "" : "s", 100 * kSteadyProbes,
                unsteady.empty() ? "" : "; still unsteady after the last: ",
                unsteady.c_str());
  }
  if (!peers.names.empty()) {
    std::string line;
    for (const std::string& name : peers.names) line += (line.empty() ? "" : "; ") + peer_status(peers, name);
    std::printf("peers     %s\n", line.c_str());
  }

  // One table per group (every field but seq), in the order groups first appear;
  // peers that did not run at all were named on the line above, not in every table.
  std::vector<std::string> impls = implementation_names(peers, machine);
  const size_t first_peer = impls.size() - peers.names.size();
  impls.erase(std::remove_if(impls.begin() + static_cast<std::ptrdiff_t>(first_peer), impls.end(),
                             [&](const std::string& name) { return peer_absent(peers, name); }),
              impls.end());
  std::vector<std::vector<const CaseResult*>> groups;
  for (const CaseResult& r : results) {
    auto group = std::find_if(groups.begin(), groups.end(), [&](const std::vector<const CaseResult*>& g) {
      return g.front()->shape.same_group(r.shape);
    });
    if (group == groups.end()) groups.push_back({&r});
    else group->push_back(&r);
  }
  for (std::vector<const CaseResult*>& group : groups) {
    std::stable_sort(group.begin(), group.end(),
                     [](const CaseResult* a, const CaseResult* b) { return a->shape.seq < b->shape.seq; });
    print_group(group, impls, peak);
  }

  std::printf("\n");
  if (scaling.skipped.empty()) {
    std::printf("scaling   qkv on %s: 1 thread %s, %d threads %s: x%.2f (FMA peak x%.2f; medians of %d alternating "
                "rounds)\n",
                scaling.shape.name().c_str(), format_time(scaling.one_thread_seconds).c_str(), machine.threads,
                format_time(scaling.seconds).c_str(), scaling.ratio(), peak.best() / peak.one_thread, scaling.rounds);
  } else {
    std::printf("scaling   skipped: %s\n", scaling.skipped.c_str());
  }
  for (size_t i = 1; i < impls.size(); ++i) {
    std::string line;
    for (const DType dtype : {DType::kFloat32, DType::kBFloat16}) {
      const auto [mean, count] = mean_speedup(results, impls[i], dtype);
      if (count > 0) {
        line += format("%sx%.2f on %d %s case%s", line.empty() ? "" : ", ", mean, count, short_dtype_name(dtype),
                       count == 1 ? "" : "s");
      }
    }
    if (!line.empty()) std::printf("vs %-12s qkv speed-up, geometric mean: %s\n", impls[i].c_str(), line.c_str());
  }
  std::printf("\ntargets (%d thread%s%s)\n", machine.threads, machine.threads == 1 ? "" : "s",
              machine.threads == 2 ? "" : "; set for 2 threads");
  for (const Target& t : bench_targets(run)) {
    if (t.cases == 0) {
      std::printf("  %s: not in this run\n", t.what.c_str());
      continue;
    }
    const std::string value = t.unit == "x" ? format("x%.2f", t.value) : format("%.1f%%", t.value);
    const std::string goal = t.unit == "x" ? format("x%.2f", t.goal) : format("%.0f%%", t.goal);
    const std::string by = t.unit == "x" ? format("%.0f%%", 100 * (1 - t.value / t.goal))
                                         : format("%.1f points", t.goal - t.value);
    std::printf("  %s: %s (target %s; %d %s%s%s%s): %s\n", t.what.c_str(), value.c_str(), goal.c_str(), t.cases,
                t.counted.c_str(), t.cases == 1 ? "" : "s", t.where.empty() ? "" : "; ", t.where.c_str(), verdict(t.met(), by).c_str());
  }
  std::printf("\n");
  for (const CaseResult& r : results) {
    const Measured& b = r.impl.at("openblas");
    if (b.ok() && !(b.max_abs_diff <= kBenchMaxAgreedDiff)) {
      std::printf("WARNING   %s: qkv and openblas differ by %.2e (more than %.0e)\n", r.shape.name().c_str(),
                  b.max_abs_diff, kBenchMaxAgreedDiff);
    }
  }
  // Notes from peers.py, once each (e.g. how GQA was expressed).
  std::vector<std::string> notes;
  for (const CaseResult& r : results) {
    for (const auto& [impl, m] : r.impl) {
      const std::string note = impl + ": " + m.note;
      if (!m.note.empty() && std::find(notes.begin(), notes.end(), note) == notes.end()) notes.push_back(note);
    }
  }
  for (const std::string& note : notes) std::printf("note      %s\n", note.c_str());

  std::printf(
      "\ntime      median of %d-%d calls after a warm-up call (as many as fill %.1f s); one call above seq %lld.\n"
      "          Batch 1, random inputs in [-1, 1); bf16 cases use the fp32 values rounded to bf16.\n"
      "GFLOP/s   4*heads*seq^2*head_dim, halved for causal: the work of a kernel that skips masked keys,\n"
      "          whatever an implementation really computes.\n"
      "%% peak    of the fp32 FMA peak: the best of the probes right before the case and after each of\n"
      "          its implementations (all within seconds), for bf16 cases too, where bf16 dot-product units\n"
      "          (AVX512-BF16, AMX: qkv where the CPU has them, peers) may exceed 100%%. --json also gives the\n"
      "          percentage of the run's peak (max of start and end).\n"
      "speed-up  the implementation's time / qkv's time on the same case: > 1 means qkv is faster.\n"
      "openblas  textbook attention: the full score matrix from OpenBLAS sgemm, softmax, sgemm (baseline.h).\n",
      kBenchMinRuns, kBenchMaxRuns, kBenchRunSeconds, static_cast<long long>(kBenchSingleRunAboveSeq));
  if (machine.bf16_units()) {
    std::printf("%s   qkv with its bf16 units (%s) switched off: bf16 cases on the float32 FMA kernel.\n",
                kFmaImpl, machine.bf16_engine.c_str());
  }
}

Json report_json(const BenchRun& run, Json options) {
  const std::vector<CaseResult>& results = run.cases;
  const PeersReport& peers = run.peers;
  const MachineInfo& machine = run.machine;
  const Peak& peak = run.peak;
  const Scaling& scaling = run.scaling;
  Json report{Json::Object{}};
  report.set("qkv_version", kVersion);
  report.set("date", machine.date);
  report.set("options", std::move(options));
  report.set("machine", Json::Object{{"cpu", machine.cpu},
                                     {"logical_cpus", static_cast<int64_t>(machine.logical_cpus)},
                                     {"threads", machine.threads},
                                     {"simd_target", machine.simd_target},
                                     {"bf16_engine", machine.bf16_engine},
                                     {"mem_available_bytes", machine.mem_available}});
  report.set("peak_gflops", Json::Object{{"peak", peak.best()},
                                         {"start", peak.start},
                                         {"end", peak.end},
                                         {"one_thread", peak.one_thread},
                                         {"what", "fp32 FMA throughput, qkv's probe (runtime/peak_probe.h)"}});
  report.set("timing", Json::Object{{"warm_up_calls", 1},
                                    {"min_runs", kBenchMinRuns},
                                    {"max_runs", kBenchMaxRuns},
                                    {"run_seconds", kBenchRunSeconds},
                                    {"statistic", "median"},
                                    {"single_run_above_seq", kBenchSingleRunAboveSeq}});
  Json scaling_json{Json::Object{}};
  scaling_json.set("case", scaling.shape.name());
  if (scaling.skipped.empty()) {
    scaling_json.set("threads", machine.threads);
    scaling_json.set("one_thread_seconds", scaling.one_thread_seconds);
    scaling_json.set("seconds", scaling.seconds);
    scaling_json.set("rounds", scaling.rounds);
    scaling_json.set("speedup", scaling.ratio());
    scaling_json.set("peak_speedup", peak.best() / peak.one_thread);
  } else {
    scaling_json.set("skipped", scaling.skipped);
  }
  report.set("scaling", std::move(scaling_json));

  const std::vector<std::string> impls = implementation_names(peers, machine);
  Json impl_list{Json::Array{}};
  for (const std::string& impl : impls) impl_list.push(impl);
  report.set("implementations", std::move(impl_list));
  Json cases{Json::Array{}};
  for (const CaseResult& r : results) {
    const BenchCase& c = r.shape;
    Json row{Json::Object{{"name", c.name()},
                          {"batch", 1},
                          {"seq", c.seq},
                          {"heads", c.heads},
                          {"kv_heads", c.kv_heads},
                          {"head_dim", c.head_dim},
                          {"causal", c.causal},
                          {"dtype", short_dtype_name(c.dtype)},
                          {"flops", c.flops()}}};
    row.set("peak_gflops", case_peak(r, peak));
    Json probes{Json::Array{}};
    for (const double probe : r.probes_after) probes.push(probe);
    row.set("probes_after_gflops", std::move(probes));
    row.set("retries", static_cast<int64_t>(r.retries));
    row.set("steady", r.steady());
    Json by_impl{Json::Object{}};
    for (const std::string& impl : impls) {
      by_impl.set(impl, measured_json(c, impl, r.impl.at(impl), r.impl.at("qkv"), case_peak(r, peak), peak.best()));
    }
    row.set("results", std::move(by_impl));
    cases.push(std::move(row));
  }
  report.set("cases", std::move(cases));
  Json targets{Json::Array{}};
  for (const Target& t : bench_targets(run)) {
    Json target{Json::Object{{"what", t.what}, {"cases", t.cases}}};
    if (t.cases > 0) {
      target.set("value", t.value);
      target.set("goal", t.goal);
      target.set("unit", t.unit);
      target.set("where", t.where);
      target.set("met", t.met());
    }
    targets.push(std::move(target));
  }
  report.set("targets", std::move(targets));
  if (!peers.names.empty()) {
    Json peer_info{Json::Object{}};
    if (const Json* python = peers.raw.find("python")) peer_info.set("python", *python);
    if (const Json* info = peers.raw.find("peers")) peer_info.set("peers", *info);
    if (!peers.failure.empty()) peer_info.set("failure", peers.failure);
    report.set("peers", std::move(peer_info));
  }
  return report;
}

}  // namespace qkv::tools
