#pragma once
// The CUDA entry points: the same losses as losses.hpp over device pointers, on a stream.
//
// Every function here enqueues its kernels on `launch.stream` and returns without waiting for the
// device. Shapes, options and output buffers are checked on the host before anything is enqueued;
// a bad one throws as on the CPU, and nothing is written. What only the device can see is checked
// there: a class index outside [0, C) that is not ignored, or a probability outside [0, 1] for
// binary_cross_entropy, makes every output of the call NaN (per-element losses and gradients of the
// offending rows, and the reduced loss) and is recorded in the workspace; `check(launch)` waits for
// the stream and throws the matching label_error / value_error. No function allocates memory or
// synchronizes the host.
//
// Value types T: float, double, half and bfloat16 (the last two computed in float32). Reductions are
// deterministic: partial sums over a partition that depends only on the shape, combined in a fixed
// order (no floating-point atomics), so the same input gives the same bits on every run.
//
// In a build without CUDA, or with no usable device, every entry point throws unavailable_error.
// Public headers never include CUDA headers: the stream is the runtime's opaque handle.

#include <cstddef>
#include <cstdint>

#include "xentkit/bfloat16.hpp"
#include "xentkit/half.hpp"
#include "xentkit/options.hpp"

struct CUstream_st;

namespace xentkit {

namespace cuda {

/// cudaStream_t (nullptr is the legacy default stream).
using stream_t = CUstream_st*;

/// Bytes of device scratch every call needs (partial sums, the scale of the gradient, the error
/// record). A workspace may be reused by calls ordered on one stream, never by two calls that can
/// run at the same time.
inline constexpr std::size_t kWorkspaceBytes = 32768;

/// Where a call runs: its stream and its workspace (kWorkspaceBytes of device memory, aligned to
/// 256 bytes, as cudaMalloc returns).
struct Launch {
  void* workspace = nullptr;
  stream_t stream = nullptr;
};

/// What the device recorded about the last call that used a workspace.
struct Status {
  enum Kind : int32_t { ok = 0, bad_label = 1, bad_probability = 2 };
  int32_t kind = ok;
  int64_t index = -1;  // flat index of the first offending label or probability
  double value = 0.0;  // its value
};

/// Waits for launch.stream and returns the record of the last call on launch.workspace.
Status status(const Launch& launch);

/// Waits for launch.stream and throws the error the last call on launch.workspace recorded:
/// label_error for a bad class index, value_error for a probability outside [0, 1], each with the
/// message the CPU function gives (value and flat index). Does nothing when the call was clean.
void check(const Launch& launch);

// ---- device memory and streams, for bindings that own no CUDA runtime of their own -----------
// Each throws unavailable_error in a build without CUDA, and value_error naming the CUDA error
// when the runtime refuses.

/// cudaMallocAsync on the current device, ordered on `stream` (the device's default pool).
void* allocate(std::size_t bytes, stream_t stream);
/// cudaFreeAsync of a pointer from allocate(), ordered on `stream`. Never throws.
void release(void* ptr, stream_t stream) noexcept;
/// The device that holds `ptr` (device or managed memory), or -1 for host or unknown memory.
int device_of(const void* ptr);
int current_device();
void set_device(int device);
/// Makes `waiter` wait (on the device, not the host) for the work enqueued on `producer` so far.
void stream_wait(stream_t waiter, stream_t producer);
/// Waits on the host for `stream`.
void synchronize(stream_t stream);
/// Copies `bytes` from device memory to host memory after the work on `stream`, and waits.
void copy_to_host(void* dst, const void* src, std::size_t bytes, stream_t stream);
/// An event marking the work enqueued on `stream` so far (for buffers that must outlive it).
void* record_event(stream_t stream);
/// Whether the work an event marks has finished (never waits). Destroy the event after.
bool event_done(void* event);
/// Releases an event (pending work still completes). Never throws.
void destroy_event(void* event) noexcept;
/// Why this build's kernels cannot run on the current device (for example no kernel image for
/// its architecture), or empty when they can (asked once per device).
const char* kernel_image_problem() noexcept;

// ---- Caffe layers. `loss` is one device value of T (the reduced, unweighted loss). -----------

template <typename T>
void sigmoid_cross_entropy_loss(const T* scores, const T* targets, int64_t outer, int64_t count,
                                T* diff, T* loss, const SigmoidCrossEntropyLossOptions& options,
                                const Launch& launch);

/// L: int8..int64, uint8..uint64, float, double (truncated toward zero, as on the CPU).
template <typename T, typename L>
void softmax_with_loss(const T* scores, const L* labels, int64_t outer, int64_t channels,
                       int64_t inner, T* diff, T* prob, T* loss,
                       const SoftmaxWithLossOptions& options, const Launch& launch);

// ---- PyTorch-compatible functions. `loss` (nullable): per-element losses; `reduced` (nullable):
// one value, the mean or sum (for Reduction::none, the sum); `grad` (nullable, may be the input).

template <typename T>
void binary_cross_entropy(const T* input, const T* target, int64_t count, Broadcast<T> weight,
                          T* loss, T* grad, T* reduced, const BinaryCrossEntropyOptions& options,
                          const Launch& launch);

template <typename T>
void binary_cross_entropy_with_logits(const T* input, const T* target, int64_t count,
                                      Broadcast<T> weight, Broadcast<T> pos_weight, T* loss,
                                      T* grad, T* reduced,
                                      const BinaryCrossEntropyOptions& options,
                                      const Launch& launch);

/// L: int8..int64, uint8..uint64.
template <typename T, typename L>
void cross_entropy(const T* input, const L* target, int64_t outer, int64_t channels,
                   int64_t inner, const T* weight, T* loss, T* grad, T* reduced,
                   const CrossEntropyOptions& options, const Launch& launch);

/// Probability targets in the layout of input.
template <typename T>
void cross_entropy(const T* input, const T* target, int64_t outer, int64_t channels,
                   int64_t inner, const T* weight, T* loss, T* grad, T* reduced,
                   const CrossEntropyOptions& options, const Launch& launch);

template <typename T, typename L>
void nll_loss(const T* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
              const T* weight, T* loss, T* grad, T* reduced, const NllLossOptions& options,
              const Launch& launch);

template <typename T>
void log_softmax(const T* input, int64_t outer, int64_t channels, int64_t inner, T* out,
                 const Launch& launch);

template <typename T>
void softmax(const T* input, int64_t outer, int64_t channels, int64_t inner, T* out,
             const Launch& launch);

// ---- TensorFlow-compatible functions (per-element / per-row losses, no reduction). ----------

template <typename T>
void sigmoid_cross_entropy_with_logits(const T* labels, const T* logits, int64_t count, T* loss,
                                       T* grad, const Launch& launch);

template <typename T>
void softmax_cross_entropy_with_logits(const T* labels, const T* logits, int64_t outer,
                                       int64_t channels, int64_t inner, T* loss, T* grad,
                                       const Launch& launch);

template <typename T, typename L>
void sparse_softmax_cross_entropy_with_logits(const L* labels, const T* logits, int64_t rows,
                                              int64_t channels, T* loss, T* grad,
                                              const Launch& launch);

}  // namespace cuda
}  // namespace xentkit
