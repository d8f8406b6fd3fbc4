// qkv: the command-line program. Exit codes: 0 success, 2 bad input (one line
// on stderr naming the problem), 1 an unexpected internal failure.
#include <cstdio>
#include <exception>
#include <new>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "qkv/error.h"
#include "qkv/version.h"

int main(int argc, char** argv) {
  CLI::App app{"qkv: exact, fast, memory-efficient attention for CPUs"};
  app.set_version_flag("--version", qkv::kVersion);
  app.require_subcommand(1);
  qkv::tools::register_attend(app);
  qkv::tools::register_bench(app);
  qkv::tools::register_demo(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "qkv: error: %s\n", e.what());
    return 2;
  } catch (const qkv::Error& e) {
    std::fprintf(stderr, "qkv: error: %s\n", e.what());
    return 2;
  } catch (const qkv::tools::CommandError& e) {
    std::fprintf(stderr, "qkv: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "qkv: error: out of memory\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
