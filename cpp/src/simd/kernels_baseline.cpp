// The vectorised kernels built for one instruction set (flags set in cpp/CMakeLists.txt).
#define XENTKIT_ISA baseline
#define XENTKIT_ISA_NAME "baseline"
#include "simd/kernels_impl.hpp"
