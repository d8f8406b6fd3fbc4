// The Python side of `qkv bench`: bench/peers.py times other libraries on the
// same cases, bench/plot.py draws the --plot figure from the --json file.
// Both run as child processes of the interpreter --python names; when it or a
// library is missing the bench says so and goes on without it.
#pragma once

#include <map>
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
  std::map<std::string, std::map<std::string, PeerResult>> results;  // [case name][peer]
  std::string failure;  // set when peers.py could not run at all (every result says why too)
  Json raw;             // peers.py's whole output, kept for --json
};

// Runs peers.py once on every case with `threads` threads. `peers` is "auto"
// (every peer peers.py knows), "none", or a comma-separated list. Never
// throws for a missing interpreter, script or library: it reports them.
PeersReport run_peers(const std::string& python, const std::string& peers, const std::vector<BenchCase>& cases,
                      int threads);

// Runs plot.py on `report` (what --json writes) to draw `png_path`; returns ""
// on success, else why there is no plot (e.g. "matplotlib is not installed
// for python3").
std::string run_plot(const std::string& python, const Json& report, const std::string& png_path);

}  // namespace qkv::tools
