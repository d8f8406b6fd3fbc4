// Peak extra resident memory of a call, measured from the outside (Linux /proc).
//
// The number that matters for attention at long context is how much memory a
// call adds on top of its inputs and outputs: O(seq^2) for a materialized
// score matrix, O(seq) or O(1) for a fused kernel. Linux reports the peak
// resident set size (VmHWM) of the process; writing "5" to
// /proc/self/clear_refs resets that peak to the current size, so
//   extra = VmHWM after the call - VmRSS before it
// is exact to the page and catches short-lived buffers. Free memory kept by
// the allocator (glibc) is handed back first, so buffers a call reuses from
// an earlier one count again. Memory that the call allocates but never
// touches is not resident and is not counted, which is also what the machine
// feels.
#pragma once

#include <cstdint>
#include <functional>

namespace qkv::tools {

enum class PeakMethod : uint8_t {
  kClearRefs,    // exact: peak reset through /proc/self/clear_refs, then VmHWM
  kSampled,      // clear_refs not writable: VmRSS polled every millisecond (a lower bound)
  kUnavailable,  // no /proc/self/status (not Linux): nothing measured
};

struct PeakMemory {
  int64_t extra_bytes = 0;  // >= 0; 0 when kUnavailable
  PeakMethod method = PeakMethod::kUnavailable;
};

// Runs fn once and returns the peak resident memory it added. Inputs and
// outputs the caller allocated and touched before are not counted.
PeakMemory measure_peak_extra(const std::function<void()>& fn);

// A short phrase saying how the peak was measured, for a tool's output.
const char* peak_method_description(PeakMethod method);

// MemAvailable from /proc/meminfo in bytes: what can still be allocated
// without swapping. -1 when unknown.
int64_t available_memory_bytes();

}  // namespace qkv::tools
