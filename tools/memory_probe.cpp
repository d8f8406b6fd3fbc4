// Peak extra resident memory of a call; see memory_probe.h.
#include "memory_probe.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace qkv::tools {
namespace {

// The value in kB of a "Name:   1234 kB" line of a /proc file, in bytes; -1 if
// the file or the line is missing.
int64_t read_proc_kb(const char* path, const char* name) {
  std::FILE* file = std::fopen(path, "r");
  if (!file) return -1;
  const size_t name_len = std::strlen(name);
  char line[256];
  int64_t bytes = -1;
  while (std::fgets(line, sizeof line, file)) {
    if (std::strncmp(line, name, name_len) == 0 && line[name_len] == ':') {
      long long kb = 0;
      if (std::sscanf(line + name_len + 1, "%lld", &kb) == 1) bytes = static_cast<int64_t>(kb) * 1024;
      break;
    }
  }
  std::fclose(file);
  return bytes;
}

int64_t resident_bytes() { return read_proc_kb("/proc/self/status", "VmRSS"); }
int64_t peak_resident_bytes() { return read_proc_kb("/proc/self/status", "VmHWM"); }

// Resets VmHWM to the current VmRSS (Linux >= 4.0). False if not permitted.
bool reset_peak() {
  std::FILE* file = std::fopen("/proc/self/clear_refs", "w");
  if (!file) return false;
  const bool written = std::fputs("5", file) >= 0;
  return std::fclose(file) == 0 && written;
}

// Gives memory that is free in the allocator's heap back to the kernel.
// Without it, a call that reuses buffers an earlier call freed (glibc keeps
// them resident) would look as if it needed no memory at all.
void release_free_heap() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

}  // namespace

PeakMemory measure_peak_extra(const std::function<void()>& fn) {
  release_free_heap();
  if (resident_bytes() < 0) {
    fn();
    return {0, PeakMethod::kUnavailable};
  }
  if (reset_peak()) {
    const int64_t before = resident_bytes();  // == VmHWM right after the reset
    fn();
    return {std::max<int64_t>(0, peak_resident_bytes() - before), PeakMethod::kClearRefs};
  }

  // Fallback: poll VmRSS from a second thread while fn runs. Misses buffers
  // that live for less than the polling interval.
  const int64_t before = resident_bytes();
  std::atomic<bool> done{false};
  std::atomic<int64_t> peak{before};
  std::thread sampler([&] {
    while (!done.load(std::memory_order_relaxed)) {
      const int64_t now = resident_bytes();
      if (now > peak.load(std::memory_order_relaxed)) peak.store(now, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  try {
    fn();
  } catch (...) {
    done = true;
    sampler.join();
    throw;
  }
  done = true;
  sampler.join();
  const int64_t after = resident_bytes();
  return {std::max<int64_t>(0, std::max(peak.load(), after) - before), PeakMethod::kSampled};
}

const char* peak_method_description(PeakMethod method) {
  switch (method) {
    case PeakMethod::kClearRefs:
      return "exact: VmHWM, reset through /proc/self/clear_refs";
    case PeakMethod::kSampled:
      return "a lower bound: VmRSS sampled every ms, /proc/self/clear_refs is not writable";
    case PeakMethod::kUnavailable:
      return "not measured: no /proc/self/status on this system";
  }
  return "";
}

int64_t available_memory_bytes() { return read_proc_kb("/proc/meminfo", "MemAvailable"); }

}  // namespace qkv::tools
