// Runs bench/peers.py and bench/plot.py; see bench_python.h.
#include "bench_python.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "commands.h"

namespace qkv::tools {
namespace {

namespace fs = std::filesystem;

// The shell's exit status for "command not found".
constexpr int kNotFound = 127;
// plot.py's exit status when matplotlib (or numpy) cannot be imported.
constexpr int kPlotMissingModule = 3;

// 'text' for /bin/sh, with embedded single quotes closed and escaped.
std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (const char c : text) {
    if (c == '\'') quoted += "'\\''";
    else quoted += c;
  }
  return quoted + "'";
}

struct ChildResult {
  int status = -1;  // exit status, or -1 if it did not exit normally
  std::string out;  // its standard output
};

// Runs `command` through /bin/sh with stdin from /dev/null; its stderr goes to
// ours, its stdout is returned.
ChildResult run_capture(const std::string& command) {
  ChildResult result;
  std::fflush(stdout);
  std::fflush(stderr);
  FILE* pipe = ::popen((command + " < /dev/null").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) result.out.append(buffer, n);
  const int status = ::pclose(pipe);
  if (status != -1 && WIFEXITED(status)) result.status = WEXITSTATUS(status);
  return result;
}

// A temporary file holding `text`, removed when this goes out of scope.
class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    std::string pattern = (fs::temp_directory_path() / "qkv-bench-XXXXXX").string();
    const int fd = ::mkstemp(pattern.data());
    if (fd < 0) throw CommandError("cannot create a temporary file in " + fs::temp_directory_path().string());
    ::close(fd);
    path_ = pattern;
    std::ofstream(path_, std::ios::binary) << text;
  }
  ~TempFile() {
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<std::string> split_commas(const std::string& list) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) parts.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return parts;
}

// Every case marked unavailable for every peer, for the same reason.
void mark_all(PeersReport& report, const std::vector<BenchCase>& cases, const std::string& reason) {
  report.failure = reason;
  for (const BenchCase& c : cases) {
    for (const std::string& peer : report.names) report.results[c.name()][peer].unavailable = reason;
  }
}

}  // namespace

std::string find_bench_script(const std::string& name) {
  std::vector<fs::path> candidates;
  // This file is tools/bench_python.cpp of the source tree (if it still exists).
  candidates.push_back(fs::path(__FILE__).parent_path().parent_path() / "bench" / name);
  std::error_code error;
  const fs::path exe = fs::read_symlink("/proc/self/exe", error);
  if (!error) candidates.push_back(exe.parent_path().parent_path() / "bench" / name);
  candidates.push_back(fs::current_path(error) / "bench" / name);
  for (const fs::path& path : candidates) {
    if (fs::is_regular_file(path, error)) return path.lexically_normal().string();
  }
  return "";
}

std::string python_version(const std::string& python) {
  const ChildResult result =
      run_capture(shell_quote(python) + " -c 'import sys; print(sys.version.split()[0])' 2>/dev/null");
  if (result.status != 0) return "";
  std::string version = result.out;
  while (!version.empty() && (version.back() == '\n' || version.back() == '\r')) version.pop_back();
  return version;
}

PeersReport run_peers(const std::string& python, const std::string& peers, const std::vector<BenchCase>& cases,
                      int threads) {
  PeersReport report;
  report.names = peers == "auto" ? std::vector<std::string>{"torch", "onnxruntime"} : split_commas(peers);
  if (peers == "none" || report.names.empty()) {
    report.names.clear();
    return report;
  }
  const std::string script = find_bench_script("peers.py");
  if (script.empty()) {
    mark_all(report, cases, "bench/peers.py not found");
    return report;
  }
  if (python_version(python).empty()) {
    mark_all(report, cases, "'" + python + "' cannot be run");
    return report;
  }

  Json list{Json::Array{}};
  for (const BenchCase& c : cases) {
    list.push(Json::Object{{"name", c.name()},
                           {"batch", 1},
                           {"seq_q", c.seq},
                           {"seq_kv", c.seq},
                           {"heads", c.heads},
                           {"kv_heads", c.kv_heads},
                           {"head_dim", c.head_dim},
                           {"causal", c.causal},
                           {"dtype", short_dtype_name(c.dtype)}});
  }
  const TempFile input(list.dump(0));
  std::string command = shell_quote(python) + " " + shell_quote(script) + " --cases " + shell_quote(input.path()) +
                        " --threads " + std::to_string(threads);
  if (peers != "auto") command += " --peers " + shell_quote(peers);
  const ChildResult child = run_capture(command);
  if (child.status != 0) {
    mark_all(report, cases, "peers.py failed (exit status " + std::to_string(child.status) + ", see above)");
    return report;
  }
  try {
    report.raw = Json::parse(child.out);
  } catch (const CommandError& e) {
    mark_all(report, cases, std::string("peers.py printed no valid JSON: ") + e.what());
    return report;
  }

  // Every (case, peer) starts as "no result"; peers.py's rows fill them in.
  for (const BenchCase& c : cases) {
    for (const std::string& peer : report.names) report.results[c.name()][peer].unavailable = "no result";
  }
  const Json* rows = report.raw.find("results");
  if (rows == nullptr || !rows->is_array()) {
    mark_all(report, cases, "peers.py printed no \"results\" list");
    return report;
  }
  for (const Json& row : rows->as_array()) {
    const Json* name = row.find("case");
    const Json* impl = row.find("impl");
    if (name == nullptr || impl == nullptr || !name->is_string() || !impl->is_string()) continue;
    auto found = report.results.find(name->as_string());
    if (found == report.results.end()) continue;
    PeerResult result;
    if (const Json* seconds = row.find("seconds"); seconds != nullptr && seconds->is_number()) {
      result.seconds = seconds->as_number();
    }
    if (const Json* reason = row.find("unavailable"); reason != nullptr && reason->is_string()) {
      result.unavailable = reason->as_string();
    } else if (!(result.seconds > 0)) {
      result.unavailable = "no time reported";
    }
    if (const Json* note = row.find("note"); note != nullptr && note->is_string()) result.note = note->as_string();
    found->second[impl->as_string()] = result;
  }
  return report;
}

std::string run_plot(const std::string& python, const Json& report, const std::string& png_path) {
  const std::string script = find_bench_script("plot.py");
  if (script.empty()) return "bench/plot.py not found";
  if (python_version(python).empty()) return "'" + python + "' cannot be run";
  const TempFile input(report.dump(0));
  const ChildResult child = run_capture(shell_quote(python) + " " + shell_quote(script) + " " +
                                        shell_quote(input.path()) + " --out " + shell_quote(png_path));
  if (child.status == 0) return "";
  if (child.status == kPlotMissingModule) return "matplotlib is not installed for " + python;
  if (child.status == kNotFound) return "'" + python + "' not found";
  return "plot.py failed (exit status " + std::to_string(child.status) + ", see above)";
}

}  // namespace qkv::tools
