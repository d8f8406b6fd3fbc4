// The subcommands of the qkv program. Each registers itself on the app; its
// callback throws qkv::Error (or CommandError) for bad input, which main()
// turns into one line on stderr and exit code 2.
#pragma once

#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>

namespace qkv::tools {

// An error in the command line or its files (not in the library call).
class CommandError : public std::runtime_error {
 public:
  explicit CommandError(const std::string& message) : std::runtime_error(message) {}
};

void register_attend(CLI::App& app);  // attend_command.cpp
void register_bench(CLI::App& app);   // bench_command.cpp
void register_demo(CLI::App& app);    // demo_command.cpp

}  // namespace qkv::tools
