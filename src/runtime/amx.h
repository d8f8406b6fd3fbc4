// Whether this process may run AMX-BF16 and AMX-INT8 tile instructions, and
// the switch that turns the AMX kernels off (tests and benchmarks time both
// paths).
#pragma once

namespace qkv::internal {

// True when the CPU has AMX-TILE and AMX-BF16, the OS saves tile state
// (XCR0 bits 17 and 18) and Linux granted this process the tile data state
// (arch_prctl ARCH_REQ_XCOMP_PERM, asked once per process on first call).
// Thread-safe; false on every other CPU, OS or architecture.
bool amx_bf16_available();

// The same for AMX-INT8 (CPUID.7.0:EDX bit 25) in place of AMX-BF16.
bool amx_int8_available();

// amx_bf16_available() and not switched off by set_amx_enabled(false).
bool amx_enabled();

// amx_int8_available() and not switched off by set_amx_enabled(false).
bool amx_int8_enabled();

// On by default. Off: kernels that would use AMX take their portable path.
// For tests and benchmarks; not meant to change while a call runs.
void set_amx_enabled(bool enabled);

}  // namespace qkv::internal
