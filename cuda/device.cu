// Device queries for CUDA builds. With the static runtime and no driver, cudaGetDeviceCount fails
// (cudaErrorInsufficientDriver, 35, or cudaErrorNoDevice): the count is then 0 and the sticky
// error is cleared so later calls are not poisoned.
#include <cuda_runtime_api.h>

#include "xentkit/device.hpp"

namespace xentkit {

bool cuda_built() noexcept { return true; }

int cuda_device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace xentkit
