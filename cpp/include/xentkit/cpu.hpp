#pragma once
// The instruction set of the CPU kernels. The float32 hot paths are compiled for several
// instruction sets and one is chosen at run time; results may differ in the last bits between
// instruction sets, never between thread counts.

#include <string>

namespace xentkit {

/// The instruction set in use: "avx512", "avx2", "baseline" (vector code for the compiler's
/// default target) or "scalar" (the reference kernels only).
std::string simd_level();

/// The levels this build and this CPU can run, best first ("scalar" is always last).
std::string simd_levels_available();

/// Chooses the level: one of simd_levels_available(), or "auto" for the best. The initial level
/// is the XENTKIT_SIMD environment variable when it names an available level, else "auto".
/// Throws value_error for any other name. Safe while calls are running: a call reads the
/// level once when it starts.
void set_simd_level(const std::string& name);

}  // namespace xentkit
