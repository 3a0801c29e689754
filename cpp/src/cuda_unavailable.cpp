// Compiled in builds without CUDA: the device queries report nothing.
#include "xentkit/device.hpp"

namespace xentkit {

bool cuda_built() noexcept { return false; }
int cuda_device_count() noexcept { return 0; }

}  // namespace xentkit
