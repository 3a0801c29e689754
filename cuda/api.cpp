// The host side of the CUDA build (compiled by the host compiler against the CUDA runtime): the
// device and workspace checks that precede every launch, the reading of a workspace's error
// record, the memory and stream helpers of xentkit/cuda.hpp, and check_launch. The entry points
// themselves (checks and plans) are in cpp/src/cuda_host.cpp, shared with CPU-only builds.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "cuda_host.hpp"
#include "xentkit/cuda.hpp"
#include "xentkit/device.hpp"
#include "xentkit/errors.hpp"

namespace xentkit::cuda {
namespace {

/// Whether a device is usable, asked once: the runtime's device list does not change while a
/// process runs.
bool device_usable() noexcept {
  static const bool usable = cuda_device_count() > 0;
  return usable;
}

void require_device(const char* what) {
  if (!device_usable()) {
    throw unavailable_error(std::string(what) +
                            ": no usable CUDA device (no driver, or no device; "
                            "cuda_available() is false)");
  }
}

/// value_error naming the CUDA error of `call`; clears the runtime's last error.
[[noreturn]] void refused(const char* call, cudaError_t e) {
  (void)cudaGetLastError();
  throw value_error(std::string(call) + " failed: " + cudaGetErrorName(e) + ": " +
                    cudaGetErrorString(e));
}

void checked(const char* call, cudaError_t e) {
  if (e != cudaSuccess) refused(call, e);
}

cudaStream_t native(stream_t s) noexcept { return reinterpret_cast<cudaStream_t>(s); }

/// The error fields of a workspace (everything from `error` on), after the work on its stream.
void read_record(const Launch& launch, detail::Workspace& record, const char* what) {
  require_device(what);
  detail::check_workspace(launch.workspace, what);
  constexpr std::size_t offset = offsetof(detail::Workspace, error);
  copy_to_host(reinterpret_cast<unsigned char*>(&record) + offset,
               static_cast<const unsigned char*>(launch.workspace) + offset,
               sizeof(detail::Workspace) - offset, launch.stream);
}

}  // namespace

namespace detail {

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    throw unavailable_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorName(e) +
                            ": " + cudaGetErrorString(e));
  }
}

/// require_device(), and the kernels of this build load on the current device.
void require_kernels(const char* what) {
  require_device(what);
  const char* problem = kernel_image_problem();
  if (*problem != '\0') throw unavailable_error(std::string(what) + ": " + problem);
}

void submit(SoftmaxPlan& plan, const Launch& launch, const char* what) {
  require_kernels(what);
  check_workspace(launch.workspace, what);
  plan.workspace = launch.workspace;
  detail::launch(plan, launch.stream);
}

void submit(ElementPlan& plan, const Launch& launch, const char* what) {
  require_kernels(what);
  check_workspace(launch.workspace, what);
  plan.workspace = launch.workspace;
  detail::launch(plan, launch.stream);
  if (plan.op == ElementOp::probabilities) {
    // The storage type, for the digits of a recorded probability's message (after the kernels,
    // which clear the record).
    auto* ws = static_cast<Workspace*>(launch.workspace);
    const int byte = static_cast<int>(plan.storage) + 1;
    if (cudaMemsetAsync(&ws->reserved, byte, sizeof ws->reserved, native(launch.stream)) !=
        cudaSuccess) {
      check_launch(what);
    }
  }
}

}  // namespace detail

Status status(const Launch& launch) {
  detail::Workspace record{};
  read_record(launch, record, "status");
  return detail::status_of(record);
}

void check(const Launch& launch) {
  detail::Workspace record{};
  read_record(launch, record, "check");
  detail::throw_recorded(record);
}

void* allocate(std::size_t bytes, stream_t stream) {
  require_device("allocate");
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  checked("cudaMallocAsync", cudaMallocAsync(&p, bytes, native(stream)));
  return p;
}

void release(void* ptr, stream_t stream) noexcept {
  if (ptr == nullptr) return;
  if (cudaFreeAsync(ptr, native(stream)) != cudaSuccess) (void)cudaGetLastError();
}

int device_of(const void* ptr) {
  require_device("device_of");
  if (ptr == nullptr) return -1;
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, ptr) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  if (attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged) {
    return attributes.device;
  }
  return -1;
}

int current_device() {
  require_device("current_device");
  int device = -1;
  checked("cudaGetDevice", cudaGetDevice(&device));
  return device;
}

void set_device(int device) {
  require_device("set_device");
  checked("cudaSetDevice", cudaSetDevice(device));
}

void stream_wait(stream_t waiter, stream_t producer) {
  require_device("stream_wait");
  if (waiter == producer) return;
  cudaEvent_t event = nullptr;
  checked("cudaEventCreateWithFlags", cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  cudaError_t e = cudaEventRecord(event, native(producer));
  const char* call = "cudaEventRecord";
  if (e == cudaSuccess) {
    e = cudaStreamWaitEvent(native(waiter), event, 0);
    call = "cudaStreamWaitEvent";
  }
  // Destroying an event with pending work is allowed: it is released once the work completes.
  (void)cudaEventDestroy(event);
  if (e != cudaSuccess) refused(call, e);
}

void synchronize(stream_t stream) {
  require_device("synchronize");
  checked("cudaStreamSynchronize", cudaStreamSynchronize(native(stream)));
}

void* record_event(stream_t stream) {
  require_device("record_event");
  cudaEvent_t event = nullptr;
  checked("cudaEventCreateWithFlags", cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  const cudaError_t e = cudaEventRecord(event, native(stream));
  if (e != cudaSuccess) {
    (void)cudaEventDestroy(event);
    refused("cudaEventRecord", e);
  }
  return event;
}

bool event_done(void* event) {
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (e == cudaErrorNotReady) return false;
  if (e != cudaSuccess) refused("cudaEventQuery", e);
  return true;
}

void destroy_event(void* event) noexcept {
  if (event != nullptr) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, stream_t stream) {
  require_device("copy_to_host");
  if (bytes == 0) return;
  checked("cudaMemcpyAsync", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, native(stream)));
  checked("cudaStreamSynchronize", cudaStreamSynchronize(native(stream)));
}

}  // namespace xentkit::cuda
