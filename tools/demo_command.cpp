#include "commands.h"
namespace qkv::tools {
void register_demo(CLI::App& app) { app.add_subcommand("demo", "Built-in demonstration"); }
}  // namespace qkv::tools
