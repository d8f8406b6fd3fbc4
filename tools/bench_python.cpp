// Runs bench/peers.py and bench/plot.py; see bench_python.h.
#include "bench_python.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// One "results" row of peers.py as a PeerResult.
PeerResult parse_row(const Json& row) {
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
  return result;
}

// A case as peers.py reads it.
Json case_json(const BenchCase& c) {
  return Json::Object{{"name", c.name()},       {"batch", 1},         {"seq_q", c.seq},
                      {"seq_kv", c.seq},        {"heads", c.heads},   {"kv_heads", c.kv_heads},
                      {"head_dim", c.head_dim}, {"causal", c.causal}, {"dtype", short_dtype_name(c.dtype)}};
}

// Writes all of `text` to fd; false if the reader is gone.
bool write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// One line from `in` without its newline; false at the end of input.
bool read_line(std::FILE* in, std::string& line) {
  line.clear();
  int c = 0;
  while ((c = std::fgetc(in)) != EOF && c != '\n') line.push_back(static_cast<char>(c));
  return c != EOF || !line.empty();
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

PeersServer::PeersServer(const std::string& python, const std::string& peers, int threads) {
  start(python, peers, threads);
}

void PeersServer::start(const std::string& python, const std::string& peers, int threads) {
  report_.names = peers == "auto" ? std::vector<std::string>{"torch", "onnxruntime"} : split_commas(peers);
  if (peers == "none" || report_.names.empty()) {
    report_.names.clear();
    return;
  }
  const std::string script = find_bench_script("peers.py");
  if (script.empty()) return fail("bench/peers.py not found");
  if (python_version(python).empty()) return fail("'" + python + "' cannot be run");

  int in[2] = {-1, -1}, out[2] = {-1, -1};  // the child's stdin and stdout
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
    for (const int fd : {in[0], in[1], out[0], out[1]}) {
      if (fd >= 0) ::close(fd);
    }
    return fail(std::string("cannot create a pipe: ") + std::strerror(errno));
  }
  std::string command = "exec " + shell_quote(python) + " " + shell_quote(script) +
                        " --serve --threads " + std::to_string(threads);
  if (peers != "auto") command += " --peers " + shell_quote(peers);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  const char* argv[] = {"/bin/sh", "-c", command.c_str(), nullptr};
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = -1;
  const int spawned = ::posix_spawn(&pid, "/bin/sh", &actions, nullptr, const_cast<char* const*>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(in[0]);
  ::close(out[1]);
  if (spawned != 0) {
    ::close(in[1]);
    ::close(out[0]);
    return fail(std::string("cannot start /bin/sh: ") + std::strerror(spawned));
  }
  pid_ = pid;
  to_child_ = in[1];
  from_child_ = ::fdopen(out[0], "r");
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old_sigpipe_);

  std::string line;
  if (!read_line(from_child_, line)) return fail("peers.py exited at start (see above)");
  try {
    report_.raw = Json::parse(line);
  } catch (const CommandError& e) {
    return fail(std::string("peers.py's first line is not JSON: ") + e.what());
  }
  if (report_.raw.find("peers") == nullptr) fail("peers.py's first line has no \"peers\"");
}

PeersServer::~PeersServer() {
  if (to_child_ >= 0) ::close(to_child_);  // end of input: peers.py exits
  if (from_child_ != nullptr) std::fclose(from_child_);
  if (pid_ > 0) {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    ::sigaction(SIGPIPE, &old_sigpipe_, nullptr);
  }
}

void PeersServer::fail(const std::string& why) {
  if (report_.failure.empty()) report_.failure = why;
}

PeerResult PeersServer::time(const BenchCase& c, const std::string& peer) {
  PeerResult result;
  std::string line;
  if (running() && write_all(to_child_, Json(Json::Object{{"peer", peer}, {"case", case_json(c)}}).dump(0) + "\n") &&
      read_line(from_child_, line)) {
    try {
      const Json row = Json::parse(line);
      const Json* name = row.find("case");
      const Json* impl = row.find("impl");
      if (name == nullptr || impl == nullptr || !name->is_string() || !impl->is_string() ||
          name->as_string() != c.name() || impl->as_string() != peer) {
        fail("peers.py answered another question than " + c.name() + " on " + peer + ": " + line);
      } else {
        result = parse_row(row);
      }
    } catch (const CommandError& e) {
      fail(std::string("peers.py answered with no valid JSON: ") + e.what());
    }
  } else if (running()) {
    fail("peers.py exited during the run (see above)");
  }
  if (!report_.failure.empty()) result = PeerResult{0, report_.failure, ""};
  return result;
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
