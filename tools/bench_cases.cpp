// The sweep of `qkv bench`; see bench_cases.h.
#include "bench_cases.h"

#include <regex>

#include "commands.h"

namespace qkv::tools {

const char* short_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "fp32";
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    default: return dtype_name(dtype);  // not a storage type the bench uses
  }
}

std::string BenchCase::name() const {
  return "d" + std::to_string(head_dim) + "-h" + std::to_string(heads) + "/" + std::to_string(kv_heads) + "-s" +
         std::to_string(seq) + (causal ? "-causal-" : "-full-") + short_dtype_name(dtype);
}

std::string BenchCase::group_title() const {
  return "head_dim " + std::to_string(head_dim) + ", " + std::to_string(heads) + " query / " +
         std::to_string(kv_heads) + " KV heads, " + (causal ? "causal" : "no mask") + ", " + dtype_name(dtype);
}

bool BenchCase::same_group(const BenchCase& other) const {
  return head_dim == other.head_dim && heads == other.heads && kv_heads == other.kv_heads &&
         causal == other.causal && dtype == other.dtype;
}

double BenchCase::flops() const {
  const double full = 4.0 * static_cast<double>(heads) * static_cast<double>(seq) * static_cast<double>(seq) *
                      static_cast<double>(head_dim);
  return causal ? full / 2 : full;
}

std::vector<BenchCase> bench_sweep(bool quick) {
  const std::vector<int64_t> head_dims = quick ? std::vector<int64_t>{128} : std::vector<int64_t>{64, 128};
  const std::vector<int64_t> lengths = quick ? std::vector<int64_t>{512, 1024, 2048}
                                             : std::vector<int64_t>{512, 1024, 2048, 4096, 8192, 16384};
  const std::vector<std::pair<int64_t, int64_t>> head_counts = {{32, 8}, {32, 32}};
  std::vector<BenchCase> cases;
  for (const int64_t head_dim : head_dims) {
    for (const auto& [heads, kv_heads] : head_counts) {
      for (const int64_t seq : lengths) {
        for (const bool causal : {true, false}) {
          for (const DType dtype : {DType::kFloat32, DType::kBFloat16}) {
            cases.push_back({head_dim, heads, kv_heads, seq, causal, dtype});
          }
        }
      }
    }
  }
  return cases;
}

std::vector<BenchCase> filter_cases(const std::vector<BenchCase>& cases, const std::string& pattern) {
  if (pattern.empty()) return cases;
  std::regex re;
  try {
    re = std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw CommandError("--cases '" + pattern + "' is not a valid regular expression: " + e.what());
  }
  std::vector<BenchCase> kept;
  for (const BenchCase& c : cases) {
    if (std::regex_search(c.name(), re)) kept.push_back(c);
  }
  return kept;
}

}  // namespace qkv::tools
