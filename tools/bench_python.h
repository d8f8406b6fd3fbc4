// The Python side of `qkv bench`: bench/peers.py times other libraries on the
// same cases, bench/plot.py draws the --plot figure from the --json file.
// Both run as child processes of the interpreter --python names; when it or a
// library is missing the bench says so and goes on without it.
#pragma once

#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "bench_cases.h"
#include "bench_json.h"

namespace qkv::tools {

// The path of bench/<name> in the source tree the program was built from, or
// beside the program (build/qkv -> bench/), or under the working directory;
// "" when none exists.
std::string find_bench_script(const std::string& name);

// The interpreter's version ("3.11.7"), or "" if `python` cannot be run.
std::string python_version(const std::string& python);

// One implementation timed on one case by peers.py.
struct PeerResult {
  double seconds = 0;       // median; 0 when not measured
  std::string unavailable;  // why it was not measured ("" when it was)
  std::string note;         // e.g. how GQA was expressed
};

struct PeersReport {
  std::vector<std::string> names;  // the peers asked for, in order ("torch", "onnxruntime")
  std::string failure;  // set when peers.py could not start or stopped answering (later results say why too)
  Json raw;             // peers.py's first line (versions, notes), kept for --json
};

// bench/peers.py in serve mode, a child process for the whole run: time()
// asks it for one peer on one case, so `qkv bench` times a case's peers right
// after qkv on it (the same machine state on both sides of a speed-up; this
// machine's clock phases move a call's time by 10% and more within minutes).
class PeersServer {
 public:
  // Starts peers.py and waits for its first line (importing torch takes
  // seconds). `peers` is "auto" (every peer peers.py knows), "none" (no
  // child at all), or a comma-separated list. Never throws for a missing
  // interpreter, script or library: report() says why, and so does every
  // result time() gives.
  PeersServer(const std::string& python, const std::string& peers, int threads);
  ~PeersServer();  // ends the child's input and waits for it to exit
  PeersServer(const PeersServer&) = delete;
  PeersServer& operator=(const PeersServer&) = delete;

  // The peers asked for, in order ("torch", "onnxruntime").
  const std::vector<std::string>& names() const { return report_.names; }
  // `peer` timed on case c with the threads given at start, or why not.
  // Blocks until peers.py answers.
  PeerResult time(const BenchCase& c, const std::string& peer);
  // The peers, peers.py's first line (versions, notes) and why it failed, if it did.
  const PeersReport& report() const { return report_; }

 private:
  void start(const std::string& python, const std::string& peers, int threads);  // the constructor's work
  void fail(const std::string& why);  // no further requests; every answer says why
  bool running() const { return pid_ > 0 && report_.failure.empty(); }

  PeersReport report_;
  int pid_ = -1;
  int to_child_ = -1;              // the child's stdin
  std::FILE* from_child_ = nullptr;  // the child's stdout
  struct sigaction old_sigpipe_ {};  // restored at the end: writes to a dead child fail, not kill
};

// Runs plot.py on `report` (what --json writes) to draw `png_path`; returns ""
// on success, else why there is no plot (e.g. "matplotlib is not installed
// for python3").
std::string run_plot(const std::string& python, const Json& report, const std::string& png_path);

}  // namespace qkv::tools
