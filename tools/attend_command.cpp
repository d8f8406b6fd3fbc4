#include "commands.h"
namespace qkv::tools {
void register_attend(CLI::App& app) { app.add_subcommand("attend", "Attention on .npy files"); }
}  // namespace qkv::tools
