#include "runtime/caches.h"

#include <unistd.h>

#include <atomic>
#include <cctype>
#include <fstream>
#include <string>

namespace qkv::internal {
namespace {
std::atomic<int64_t> g_l2_for_test{0};

constexpr bool Plausible(int64_t bytes) {
  // Some VMs and libcs report 0 or nonsense: keep to 64 KiB .. 64 MiB.
  return bytes >= (int64_t{64} << 10) && bytes <= (int64_t{64} << 20);
}

std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

int64_t sysfs_cache_bytes(int level) {
  const std::string wanted = std::to_string(level);
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string at = ReadLine(dir + "level");
    if (at.empty()) break;
    const std::string type = ReadLine(dir + "type");
    if (at == wanted && (type == "Unified" || type == "Data")) return parse_cache_size(ReadLine(dir + "size"));
  }
  return -1;
}

int64_t l3_cache_bytes() {
  static const int64_t bytes = [] {
    if (const int64_t sysfs = sysfs_cache_bytes(3); sysfs > 0) return sysfs;
#ifdef _SC_LEVEL3_CACHE_SIZE
    if (const int64_t reported = static_cast<int64_t>(sysconf(_SC_LEVEL3_CACHE_SIZE)); reported > 0) {
      return reported;
    }
#endif
    return int64_t{0};
  }();
  return bytes;
}

int64_t parse_cache_size(std::string_view text) {
  int64_t value = 0;
  size_t i = 0;
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    if (value > (int64_t{1} << 40)) return -1;
    value = value * 10 + (text[i] - '0');
  }
  if (i == 0) return -1;
  std::string_view unit = text.substr(i);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.remove_suffix(1);
  if (unit.empty()) return value;
  if (unit == "K" || unit == "k") return value << 10;
  if (unit == "M") return value << 20;
  if (unit == "G") return value << 30;
  return -1;
}

void set_l2_cache_bytes_for_test(int64_t bytes) { g_l2_for_test.store(bytes); }

int64_t l2_cache_bytes() {
  if (const int64_t forced = g_l2_for_test.load(std::memory_order_relaxed); forced > 0) return forced;
  static const int64_t bytes = [] {
    constexpr int64_t kFallback = int64_t{512} << 10;
#ifdef _SC_LEVEL2_CACHE_SIZE
    if (const int64_t reported = static_cast<int64_t>(sysconf(_SC_LEVEL2_CACHE_SIZE)); Plausible(reported)) {
      return reported;
    }
#endif
    const int64_t sysfs = sysfs_cache_bytes(2);
    return Plausible(sysfs) ? sysfs : kFallback;
  }();
  return bytes;
}

}  // namespace qkv::internal
