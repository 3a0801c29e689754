// The vectorised kernels built for one instruction set (flags set in cpp/CMakeLists.txt).
#define XENTKIT_ISA avx512
#define XENTKIT_ISA_NAME "avx512"
#include "simd/kernels_impl.hpp"
