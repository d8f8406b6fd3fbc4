// AMX and AVX512-BF16 detection. For AMX, three things must hold before the first tile instruction:
//   1. CPUID.(EAX=7, ECX=0):EDX bit 24 (AMX-TILE), with bit 22 (AMX-BF16)
//      and bit 25 (AMX-INT8) for the products;
//   2. XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves tile state;
//   3. on Linux, the process asked for the 8 KiB tile data state with
//      arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); without it the
//      first tile instruction raises SIGILL. The permission is per process,
//      so every thread (OpenMP workers included) may then use tiles.
#include "runtime/amx.h"

#include <atomic>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define QKV_AMX_DETECTION 1
#endif

namespace qkv::internal {
namespace {

#ifdef QKV_AMX_DETECTION
constexpr unsigned kAmxBf16 = 1u << 22;  // CPUID.7.0:EDX
constexpr unsigned kAmxTile = 1u << 24;
constexpr unsigned kAmxInt8 = 1u << 25;
constexpr unsigned long long kXcr0Tile = (1ull << 17) | (1ull << 18);
constexpr long kArchReqXcompPerm = 0x1023;
constexpr long kXfeatureXtiledata = 18;

// The CPUID.7.0:EDX bits of the usable AMX features (0: none).
unsigned detect() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
  const unsigned features = edx & (kAmxBf16 | kAmxInt8 | kAmxTile);
  if ((features & kAmxTile) == 0) return 0;
  // XGETBV is usable when the OS set CR4.OSXSAVE (CPUID.1:ECX bit 27).
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || (ecx & (1u << 27)) == 0) return 0;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const unsigned long long xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  if ((xcr0 & kXcr0Tile) != kXcr0Tile) return 0;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0 ? features : 0;
}

// AVX512-BF16 (CPUID.(EAX=7, ECX=1):EAX bit 5) with AVX-512 F and BW, and
// the OS saving the opmask and zmm state (XCR0 bits 1, 2, 5, 6, 7).
bool detect_avx512_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  constexpr unsigned kAvx512F = 1u << 16, kAvx512Bw = 1u << 30;
  if ((ebx & (kAvx512F | kAvx512Bw)) != (kAvx512F | kAvx512Bw) || eax < 1) return false;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) || (eax & (1u << 5)) == 0) return false;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || (ecx & (1u << 27)) == 0) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0xE6u) == 0xE6u;
}
#else
constexpr unsigned kAmxBf16 = 1, kAmxInt8 = 2;
unsigned detect() { return 0; }
bool detect_avx512_bf16() { return false; }
#endif

unsigned features() {
  static const unsigned usable = detect();  // once per process, thread-safe
  return usable;
}

std::atomic<bool> g_enabled{true};

}  // namespace

bool amx_bf16_available() { return (features() & kAmxBf16) != 0; }

bool amx_int8_available() { return (features() & kAmxInt8) != 0; }

bool avx512_bf16_available() {
  static const bool usable = detect_avx512_bf16();  // once per process, thread-safe
  return usable;
}

bool avx512_bf16_enabled() {
  return g_enabled.load(std::memory_order_relaxed) && avx512_bf16_available();
}

bool amx_enabled() { return g_enabled.load(std::memory_order_relaxed) && amx_bf16_available(); }

bool amx_int8_enabled() { return g_enabled.load(std::memory_order_relaxed) && amx_int8_available(); }

void set_dot_units_enabled(bool enabled) { g_enabled.store(enabled, std::memory_order_relaxed); }

}  // namespace qkv::internal
