// Compiled in builds without CUDA: the device queries report nothing, and every CUDA entry point
// (after the host checks of cuda_host.cpp) and helper throws unavailable_error.
#include <string>

#include "cuda_host.hpp"
#include "xentkit/cuda.hpp"
#include "xentkit/device.hpp"
#include "xentkit/errors.hpp"

namespace xentkit {

bool cuda_built() noexcept { return false; }
int cuda_device_count() noexcept { return 0; }

namespace cuda {
namespace {

[[noreturn]] void unavailable(const char* what) {
  throw unavailable_error(std::string(what) +
                          ": this build of xentkit has no CUDA kernels (cuda_built() is false)");
}

}  // namespace

namespace detail {

void submit(SoftmaxPlan&, const Launch&, const char* what) { unavailable(what); }
void submit(ElementPlan&, const Launch&, const char* what) { unavailable(what); }

}  // namespace detail

Status status(const Launch&) { unavailable("status"); }
void check(const Launch&) { unavailable("check"); }
void* allocate(std::size_t, stream_t) { unavailable("allocate"); }
void release(void*, stream_t) noexcept {}
int device_of(const void*) { unavailable("device_of"); }
int current_device() { unavailable("current_device"); }
void set_device(int) { unavailable("set_device"); }
void stream_wait(stream_t, stream_t) { unavailable("stream_wait"); }
void synchronize(stream_t) { unavailable("synchronize"); }
void copy_to_host(void*, const void*, std::size_t, stream_t) { unavailable("copy_to_host"); }
void* record_event(stream_t) { unavailable("record_event"); }
bool event_done(void*) { unavailable("event_done"); }
void destroy_event(void*) noexcept {}
const char* kernel_image_problem() noexcept {
  return "this build of xentkit has no CUDA kernels (cuda_built() is false)";
}

}  // namespace cuda
}  // namespace xentkit
