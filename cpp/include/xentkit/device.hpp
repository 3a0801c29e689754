#pragma once
// CUDA availability. Public headers never include CUDA headers.

namespace xentkit {

/// True when this build has the CUDA kernels.
bool cuda_built() noexcept;

/// Number of usable CUDA devices: 0 in a CPU-only build, without a driver, or without a device.
int cuda_device_count() noexcept;

/// True when the CUDA kernels are built and at least one device is usable.
inline bool cuda_available() noexcept { return cuda_built() && cuda_device_count() > 0; }

}  // namespace xentkit
