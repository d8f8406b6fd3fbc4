// Placeholder until the tiled kernel lands.
#include "kernels/flash_forward.h"
#include "reference/attention_reference.h"
namespace qkv::internal {
void flash_forward(const AttentionProblem& problem) noexcept { attention_reference(problem); }
std::vector<int64_t> flash_targets() { return {0}; }
void flash_force_target(int64_t) {}
const char* flash_target_name(int64_t) { return "reference"; }
}  // namespace qkv::internal
