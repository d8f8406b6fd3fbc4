// Running the built `qkv` program (QKV_CLI_PATH) from a test: a fresh
// directory per test and the program's exit code, stdout and stderr.
// Shared by cli_test.cpp and bench_command_test.cpp.
#pragma once

#include <sys/wait.h>  // WEXITSTATUS
#include <unistd.h>    // getpid

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>

namespace qkv::tools {

// A fresh directory per test, removed afterwards; the program's stdout and
// stderr go to files beside it, so the directory holds only the test's files.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = (std::filesystem::temp_directory_path() /
             ("qkv_cli_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
    std::filesystem::remove(path_ + ".stdout", ignored);
    std::filesystem::remove(path_ + ".stderr", ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs `qkv <args>` inside `dir`.
inline CliResult run_qkv(const TempDir& dir, const std::string& args) {
  const std::string command = "cd '" + dir.path() + "' && '" QKV_CLI_PATH "' " + args + " >'" + dir.path() +
                              ".stdout' 2>'" + dir.path() + ".stderr'";
  const int status = std::system(command.c_str());
  CliResult run;
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  run.out = read_bytes(dir.path() + ".stdout");
  run.err = read_bytes(dir.path() + ".stderr");
  return run;
}

}  // namespace qkv::tools
