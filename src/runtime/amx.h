// Whether this process may run AMX-BF16 and AMX-INT8 tile instructions or
// AVX512-BF16 dot products, and the switch that turns the kernels using them
// off (tests and benchmarks run both paths).
#pragma once

namespace qkv::internal {

// True when the CPU has AMX-TILE and AMX-BF16, the OS saves tile state
// (XCR0 bits 17 and 18) and Linux granted this process the tile data state
// (arch_prctl ARCH_REQ_XCOMP_PERM, asked once per process on first call).
// Thread-safe; false on every other CPU, OS or architecture.
bool amx_bf16_available();

// The same for AMX-INT8 (CPUID.7.0:EDX bit 25) in place of AMX-BF16.
bool amx_int8_available();

// True when the CPU has AVX512-BF16 (with AVX-512 F and BW) and the OS saves
// the zmm and opmask state. False on every other CPU, OS or architecture.
bool avx512_bf16_available();

// amx_bf16_available() and not switched off by set_dot_units_enabled(false).
bool amx_enabled();

// amx_int8_available() and not switched off by set_dot_units_enabled(false).
bool amx_int8_enabled();

// avx512_bf16_available() and not switched off by set_dot_units_enabled(false).
bool avx512_bf16_enabled();

// On by default. Off: kernels that would use AMX tiles or AVX512-BF16 dot
// products take their float32 path. For tests and benchmarks; not meant to
// change while a call runs.
void set_dot_units_enabled(bool enabled);

}  // namespace qkv::internal
