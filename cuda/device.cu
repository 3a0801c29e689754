// Device queries for CUDA builds. With the static runtime and no driver, cudaGetDeviceCount fails
// (cudaErrorInsufficientDriver, 35, or cudaErrorNoDevice): the count is then 0 and the sticky
// error is cleared so later calls are not poisoned.
#include <cuda_runtime_api.h>

#include <mutex>
#include <string>

#include "xentkit/cuda.hpp"
#include "xentkit/device.hpp"

namespace xentkit {
namespace {

/// Compiled for the same architectures as every kernel: if its image does not load on a device,
/// none of them does.
__global__ void probe_kernel() {}

constexpr int kProbeDevices = 64;

std::string probe(int device) {
  cudaFuncAttributes fa{};
  const cudaError_t e = cudaFuncGetAttributes(&fa, probe_kernel);
  if (e == cudaSuccess) return {};
  (void)cudaGetLastError();
  int major = 0, minor = 0;
  (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  (void)cudaGetLastError();
  return "CUDA device " + std::to_string(device) + " (compute capability " +
         std::to_string(major) + "." + std::to_string(minor) +
         ") cannot run this build's kernels: " + cudaGetErrorName(e) + ": " +
         cudaGetErrorString(e) + " (rebuild with CMAKE_CUDA_ARCHITECTURES naming it)";
}

}  // namespace

bool cuda_built() noexcept { return true; }

int cuda_device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

namespace cuda {

const char* kernel_image_problem() noexcept {
  static std::once_flag once[kProbeDevices];
  static std::string problem[kProbeDevices];
  static const std::string no_device =
      "no usable CUDA device (no driver, or no device visible to this process)";
  static const std::string too_many = "CUDA device index beyond the 64 xentkit probes";
  if (cuda_device_count() <= 0) return no_device.c_str();
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return no_device.c_str();
  }
  if (dev < 0 || dev >= kProbeDevices) return too_many.c_str();
  try {
    std::call_once(once[dev], [dev] { problem[dev] = probe(dev); });
  } catch (...) {
    return no_device.c_str();
  }
  return problem[dev].c_str();
}

}  // namespace cuda
}  // namespace xentkit
