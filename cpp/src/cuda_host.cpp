// The CUDA entry points (xentkit/cuda.hpp), compiled in every build: each checks its arguments on
// the host and hands its plan to submit(), which launches (cuda/api.cpp) or throws
// unavailable_error (cuda_unavailable.cpp). Also the host reading of a workspace's error record.

#include "cuda_host.hpp"

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "kernels.hpp"
#include "xentkit/detail/labels.hpp"

namespace xentkit::cuda {

namespace detail {

void check_workspace(const void* workspace, const char* what) {
  if (workspace == nullptr) {
    throw value_error(std::string(what) + ": expected a workspace of " +
                      std::to_string(kWorkspaceBytes) +
                      " bytes of device memory (Launch::workspace), got a null pointer");
  }
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    throw value_error(std::string(what) +
                      ": expected a workspace aligned to 256 bytes (as cudaMalloc returns), got "
                      "an address " + std::to_string(reinterpret_cast<uintptr_t>(workspace) % 256) +
                      " bytes past a multiple of 256");
  }
}

Status status_of(const Workspace& record) noexcept {
  Status s;
  if (record.kind == Status::bad_label || record.kind == Status::bad_probability) {
    s.kind = record.kind;
    s.index = record.index;
    s.value = record.value;
  }
  return s;
}

namespace {

const char* argument_name(int32_t argument) noexcept {
  switch (static_cast<Argument>(argument)) {
    case Argument::labels: return "labels";
    case Argument::target: return "target";
    case Argument::input: return "input";
  }
  return "labels";
}

template <typename L>
[[noreturn]] void throw_label(const Workspace& r, L raw) {
  const char* argument = argument_name(r.argument);
  if (r.channels == 0) {
    // Caffe's layer names its scores "scores", PyTorch's functions "input" (TensorFlow's sparse
    // function fails on the host).
    throw xentkit::detail::no_class_error(
        static_cast<Argument>(r.argument) == Argument::labels ? "scores" : "input", argument,
        r.index);
  }
  std::optional<int64_t> ignore;
  if (r.has_ignore) ignore = r.ignore;
  throw xentkit::detail::make_label_error(argument, raw, r.index, r.channels, ignore);
}

double double_of_bits(uint64_t bits) noexcept {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

}  // namespace

void throw_recorded(const Workspace& r) {
  if (r.kind == Status::bad_label) {
    const uint64_t raw = r.raw;
    switch (static_cast<LabelKind>(r.label_kind)) {
      case LabelKind::i8: throw_label(r, static_cast<int8_t>(static_cast<int64_t>(raw)));
      case LabelKind::i16: throw_label(r, static_cast<int16_t>(static_cast<int64_t>(raw)));
      case LabelKind::i32: throw_label(r, static_cast<int32_t>(static_cast<int64_t>(raw)));
      case LabelKind::i64: throw_label(r, static_cast<int64_t>(raw));
      case LabelKind::u8: throw_label(r, static_cast<uint8_t>(raw));
      case LabelKind::u16: throw_label(r, static_cast<uint16_t>(raw));
      case LabelKind::u32: throw_label(r, static_cast<uint32_t>(raw));
      case LabelKind::u64: throw_label(r, static_cast<uint64_t>(raw));
      case LabelKind::f32: throw_label(r, static_cast<float>(double_of_bits(raw)));
      case LabelKind::f64: throw_label(r, double_of_bits(raw));
    }
    throw_label(r, r.value);
  }
  if (r.kind == Status::bad_probability) {
    // float16 and bfloat16 are computed in float32: their values print as float32 ones.
    const int tag = r.reserved & 0xff;
    const int digits = tag == static_cast<int>(Storage::f64) + 1
                           ? std::numeric_limits<double>::max_digits10
                           : std::numeric_limits<float>::max_digits10;
    throw value_error(xentkit::detail::probability_message(argument_name(r.argument), r.value,
                                                           digits, r.index));
  }
}

}  // namespace detail

// ---- entry points ------------------------------------------------------------------------------

template <typename T>
void sigmoid_cross_entropy_loss(const T* scores, const T* targets, int64_t outer, int64_t count,
                                T* diff, T* loss, const SigmoidCrossEntropyLossOptions& options,
                                const Launch& launch) {
  auto plan =
      detail::plan_sigmoid_cross_entropy_loss(scores, targets, outer, count, diff, loss, options);
  detail::submit(plan, launch, "sigmoid_cross_entropy_loss");
}

template <typename T, typename L>
void softmax_with_loss(const T* scores, const L* labels, int64_t outer, int64_t channels,
                       int64_t inner, T* diff, T* prob, T* loss,
                       const SoftmaxWithLossOptions& options, const Launch& launch) {
  auto plan = detail::plan_softmax_with_loss(scores, labels, outer, channels, inner, diff, prob,
                                             loss, options);
  detail::submit(plan, launch, "softmax_with_loss");
}

template <typename T>
void binary_cross_entropy(const T* input, const T* target, int64_t count, Broadcast<T> weight,
                          T* loss, T* grad, T* reduced, const BinaryCrossEntropyOptions& options,
                          const Launch& launch) {
  auto plan = detail::plan_binary_cross_entropy(input, target, count, weight, loss, grad,
                                                reduced, options);
  detail::submit(plan, launch, "binary_cross_entropy");
}

template <typename T>
void binary_cross_entropy_with_logits(const T* input, const T* target, int64_t count,
                                      Broadcast<T> weight, Broadcast<T> pos_weight, T* loss,
                                      T* grad, T* reduced,
                                      const BinaryCrossEntropyOptions& options,
                                      const Launch& launch) {
  auto plan = detail::plan_binary_cross_entropy_with_logits(input, target, count, weight,
                                                            pos_weight, loss, grad, reduced,
                                                            options);
  detail::submit(plan, launch, "binary_cross_entropy_with_logits");
}

template <typename T, typename L>
void cross_entropy(const T* input, const L* target, int64_t outer, int64_t channels,
                   int64_t inner, const T* weight, T* loss, T* grad, T* reduced,
                   const CrossEntropyOptions& options, const Launch& launch) {
  auto plan = detail::plan_cross_entropy(input, target, outer, channels, inner, weight, loss,
                                         grad, reduced, options);
  detail::submit(plan, launch, "cross_entropy");
}

template <typename T>
void cross_entropy(const T* input, const T* target, int64_t outer, int64_t channels,
                   int64_t inner, const T* weight, T* loss, T* grad, T* reduced,
                   const CrossEntropyOptions& options, const Launch& launch) {
  auto plan = detail::plan_cross_entropy_probabilities(input, target, outer, channels, inner,
                                                       weight, loss, grad, reduced, options);
  detail::submit(plan, launch, "cross_entropy");
}

template <typename T, typename L>
void nll_loss(const T* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
              const T* weight, T* loss, T* grad, T* reduced, const NllLossOptions& options,
              const Launch& launch) {
  auto plan = detail::plan_nll_loss(input, target, outer, channels, inner, weight, loss, grad,
                                    reduced, options);
  detail::submit(plan, launch, "nll_loss");
}

template <typename T>
void log_softmax(const T* input, int64_t outer, int64_t channels, int64_t inner, T* out,
                 const Launch& launch) {
  auto plan = detail::plan_softmax_output<T>(input, outer, channels, inner, nullptr, out);
  detail::submit(plan, launch, "log_softmax");
}

template <typename T>
void softmax(const T* input, int64_t outer, int64_t channels, int64_t inner, T* out,
             const Launch& launch) {
  auto plan = detail::plan_softmax_output<T>(input, outer, channels, inner, out, nullptr);
  detail::submit(plan, launch, "softmax");
}

template <typename T>
void sigmoid_cross_entropy_with_logits(const T* labels, const T* logits, int64_t count, T* loss,
                                       T* grad, const Launch& launch) {
  auto plan = detail::plan_sigmoid_cross_entropy_with_logits(labels, logits, count, loss, grad);
  detail::submit(plan, launch, "sigmoid_cross_entropy_with_logits");
}

template <typename T>
void softmax_cross_entropy_with_logits(const T* labels, const T* logits, int64_t outer,
                                       int64_t channels, int64_t inner, T* loss, T* grad,
                                       const Launch& launch) {
  auto plan = detail::plan_softmax_cross_entropy_with_logits(labels, logits, outer, channels,
                                                             inner, loss, grad);
  detail::submit(plan, launch, "softmax_cross_entropy_with_logits");
}

template <typename T, typename L>
void sparse_softmax_cross_entropy_with_logits(const L* labels, const T* logits, int64_t rows,
                                              int64_t channels, T* loss, T* grad,
                                              const Launch& launch) {
  auto plan = detail::plan_sparse_softmax_cross_entropy_with_logits(labels, logits, rows,
                                                                    channels, loss, grad);
  detail::submit(plan, launch, "sparse_softmax_cross_entropy_with_logits");
}

// ---- instantiations: T in {float, double, half, bfloat16} ---------------------------------------

#define XENTKIT_CUDA_LABELLED(T, L)                                                             \
  template void softmax_with_loss<T, L>(const T*, const L*, int64_t, int64_t, int64_t, T*, T*,  \
                                        T*, const SoftmaxWithLossOptions&, const Launch&);
#define XENTKIT_CUDA_INDEXED(T, L)                                                              \
  template void cross_entropy<T, L>(const T*, const L*, int64_t, int64_t, int64_t, const T*,    \
                                    T*, T*, T*, const CrossEntropyOptions&, const Launch&);     \
  template void nll_loss<T, L>(const T*, const L*, int64_t, int64_t, int64_t, const T*, T*, T*, \
                               T*, const NllLossOptions&, const Launch&);                       \
  template void sparse_softmax_cross_entropy_with_logits<T, L>(const L*, const T*, int64_t,     \
                                                               int64_t, T*, T*, const Launch&);
#define XENTKIT_CUDA_REAL(T)                                                                    \
  template void sigmoid_cross_entropy_loss<T>(const T*, const T*, int64_t, int64_t, T*, T*,     \
                                              const SigmoidCrossEntropyLossOptions&,            \
                                              const Launch&);                                   \
  template void binary_cross_entropy<T>(const T*, const T*, int64_t, Broadcast<T>, T*, T*, T*,  \
                                        const BinaryCrossEntropyOptions&, const Launch&);       \
  template void binary_cross_entropy_with_logits<T>(const T*, const T*, int64_t, Broadcast<T>,  \
                                                    Broadcast<T>, T*, T*, T*,                   \
                                                    const BinaryCrossEntropyOptions&,           \
                                                    const Launch&);                             \
  template void cross_entropy<T>(const T*, const T*, int64_t, int64_t, int64_t, const T*, T*,   \
                                 T*, T*, const CrossEntropyOptions&, const Launch&);            \
  template void log_softmax<T>(const T*, int64_t, int64_t, int64_t, T*, const Launch&);         \
  template void softmax<T>(const T*, int64_t, int64_t, int64_t, T*, const Launch&);             \
  template void sigmoid_cross_entropy_with_logits<T>(const T*, const T*, int64_t, T*, T*,       \
                                                     const Launch&);                            \
  template void softmax_cross_entropy_with_logits<T>(const T*, const T*, int64_t, int64_t,      \
                                                     int64_t, T*, T*, const Launch&);           \
  XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_CUDA_LABELLED, T)                                         \
  XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_CUDA_INDEXED, T)

XENTKIT_CUDA_REAL(float)
XENTKIT_CUDA_REAL(double)
XENTKIT_CUDA_REAL(half)
XENTKIT_CUDA_REAL(bfloat16)

}  // namespace xentkit::cuda
