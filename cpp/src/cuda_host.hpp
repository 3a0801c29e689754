#pragma once
// The host side of the CUDA entry points (internal), compiled in every build: the checks of each
// public loss (the CPU function's, in its order and with its messages) and the plan that maps the
// loss onto one of the two device kernel families (device_plan.hpp). Only submit() and the record
// readers differ between builds: cuda/api.cpp launches, cuda_unavailable.cpp throws.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>

#include "device_plan.hpp"
#include "checks.hpp"
#include "xentkit/cuda.hpp"
#include "xentkit/detail/normalize.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/half.hpp"
#include "xentkit/options.hpp"

namespace xentkit::cuda::detail {

using xentkit::detail::check_broadcast;
using xentkit::detail::check_output;
using xentkit::detail::check_pointer;
using xentkit::detail::check_reduction;
using xentkit::detail::check_separate;
using xentkit::detail::check_size;
using xentkit::detail::checked_mul;

// ---- what a build does with a checked plan ----------------------------------------------------

/// Checks the device and the workspace, then enqueues the plan (CUDA build), or throws
/// unavailable_error (CPU-only build). `what` names the entry point in messages.
void submit(SoftmaxPlan& plan, const Launch& launch, const char* what);
void submit(ElementPlan& plan, const Launch& launch, const char* what);

/// value_error unless `workspace` is non-null and aligned to 256 bytes.
void check_workspace(const void* workspace, const char* what);

/// The public record of a workspace's error fields.
Status status_of(const Workspace& record) noexcept;
/// Throws the error a workspace records (the CPU function's exception and message), if any.
void throw_recorded(const Workspace& record);

/// The workspace's `reserved` field holds 1 + Storage of the last binary_cross_entropy call
/// (written by the host after the kernels), so a probability error prints its value with the
/// digits of its type. Every byte of the field holds the same value (a cudaMemsetAsync).
inline int32_t storage_tag(Storage s) noexcept {
  return static_cast<int32_t>(0x01010101u * static_cast<uint32_t>(static_cast<int32_t>(s) + 1));
}

// ---- element types --------------------------------------------------------------------------

template <typename T>
constexpr Storage storage_of() noexcept {
  if constexpr (std::is_same_v<T, float>) return Storage::f32;
  else if constexpr (std::is_same_v<T, double>) return Storage::f64;
  else if constexpr (std::is_same_v<T, half>) return Storage::f16;
  else {
    static_assert(std::is_same_v<T, bfloat16>, "value types: float, double, half, bfloat16");
    return Storage::bf16;
  }
}

template <typename L>
constexpr LabelKind label_kind_of() noexcept {
  if constexpr (std::is_same_v<L, int8_t>) return LabelKind::i8;
  else if constexpr (std::is_same_v<L, int16_t>) return LabelKind::i16;
  else if constexpr (std::is_same_v<L, int32_t>) return LabelKind::i32;
  else if constexpr (std::is_same_v<L, int64_t>) return LabelKind::i64;
  else if constexpr (std::is_same_v<L, uint8_t>) return LabelKind::u8;
  else if constexpr (std::is_same_v<L, uint16_t>) return LabelKind::u16;
  else if constexpr (std::is_same_v<L, uint32_t>) return LabelKind::u32;
  else if constexpr (std::is_same_v<L, uint64_t>) return LabelKind::u64;
  else if constexpr (std::is_same_v<L, float>) return LabelKind::f32;
  else {
    static_assert(std::is_same_v<L, double>, "label types: integers of 8 to 64 bits, float, double");
    return LabelKind::f64;
  }
}

/// -log(FLT_MIN): Caffe's cap on a position's loss, for every value type.
inline double caffe_cap() noexcept { return -std::log(static_cast<double>(FLT_MIN)); }

inline constexpr double kNoCap = std::numeric_limits<double>::infinity();

// ---- Caffe ------------------------------------------------------------------------------------

template <typename T>
ElementPlan plan_sigmoid_cross_entropy_loss(const T* scores, const T* targets, int64_t outer,
                                            int64_t count, T* diff, T* loss,
                                            const SigmoidCrossEntropyLossOptions& options) {
  check_size("outer", outer);
  check_size("count", count);
  if (outer == 0 ? count != 0 : count % outer != 0) {
    throw value_error("scores: expected an element count divisible by the first dimension " +
                      std::to_string(outer) + ", got " + std::to_string(count) + " elements");
  }
  check_pointer("scores", scores, count);
  check_pointer("targets", targets, count);
  check_output("diff", diff, scores, count);
  const int64_t inner = outer == 0 ? 0 : count / outer;
  ElementPlan p;
  p.op = ElementOp::logits;
  p.storage = storage_of<T>();
  p.x = scores;
  p.t = targets;
  p.n = count;
  p.has_ignore = options.ignore_label.has_value();
  p.ignore = options.ignore_label.value_or(0);
  p.diff = diff;
  p.reduced = loss;
  if (p.has_ignore && options.normalization == Normalization::valid) {
    p.divide = Divide::caffe_valid;  // max(1, elements not ignored)
  } else {
    // Without an ignored label every element counts: VALID is max(1, count).
    p.divide = Divide::constant;
    p.divisor = xentkit::detail::normalizer(options.normalization, outer, inner, count);
  }
  p.grad_output = options.loss_weight;
  return p;
}

template <typename T, typename L>
SoftmaxPlan plan_softmax_with_loss(const T* scores, const L* labels, int64_t outer,
                                   int64_t channels, int64_t inner, T* diff, T* prob, T* loss,
                                   const SoftmaxWithLossOptions& options) {
  check_size("outer", outer);
  check_size("channels", channels);
  check_size("inner", inner);
  const int64_t positions = checked_mul("labels", outer, inner);
  const int64_t count = checked_mul("scores", positions, channels);
  check_pointer("scores", scores, count);
  check_pointer("labels", labels, positions);
  check_output("diff", diff, scores, count);
  if (prob != nullptr && count > 0 &&
      (static_cast<const void*>(prob) == scores || (diff != nullptr && prob == diff))) {
    throw value_error("prob: expected a buffer of its own, got one shared with scores or diff");
  }
  SoftmaxPlan p;
  p.op = SoftmaxOp::xent;
  p.storage = storage_of<T>();
  p.x = scores;
  p.labels = labels;
  p.label_kind = label_kind_of<L>();
  p.label_argument = Argument::labels;
  p.outer = outer;
  p.channels = channels;
  p.inner = inner;
  p.has_ignore = options.ignore_label.has_value();
  p.ignore = options.ignore_label.value_or(0);
  p.cap = caffe_cap();
  p.diff = diff;
  p.prob = prob;
  p.reduced = loss;
  if (p.has_ignore && options.normalization == Normalization::valid) {
    p.divide = Divide::caffe_valid;
  } else {
    // Every label is a class (or the call fails): VALID counts every position.
    p.divide = Divide::constant;
    p.divisor = xentkit::detail::normalizer(options.normalization, outer, inner, positions);
  }
  p.grad_output = options.loss_weight;
  return p;
}

// ---- PyTorch ----------------------------------------------------------------------------------

/// Sizes of a softmax problem, checked as the CPU checks them (names of PyTorch's arguments).
template <typename T>
int64_t check_softmax_shape(const T* input, int64_t outer, int64_t channels, int64_t inner,
                            int64_t* positions) {
  check_size("outer", outer);
  check_size("channels", channels);
  check_size("inner", inner);
  *positions = checked_mul("target", outer, inner);
  const int64_t count = checked_mul("input", *positions, channels);
  check_pointer("input", input, count);
  return count;
}

template <typename T>
ElementPlan plan_binary(ElementOp op, const T* input, const T* target, int64_t count,
                        Broadcast<T> weight, Broadcast<T> pos_weight, T* loss, T* grad,
                        T* reduced, const BinaryCrossEntropyOptions& options) {
  check_reduction(options.reduction);
  check_size("count", count);
  check_pointer("input", input, count);
  check_pointer("target", target, count);
  check_broadcast("weight", weight);
  check_broadcast("pos_weight", pos_weight);
  check_output("grad", grad, input, count);
  if (op == ElementOp::probabilities && grad != nullptr &&
      xentkit::detail::overlapping(grad, target, count)) {
    // The device reads a bad target again after the gradient is written, for its message.
    throw value_error("grad: expected a buffer that does not overlap target (the input itself, "
                      "or a buffer of its own), got one that overlaps target");
  }
  ElementPlan p;
  p.op = op;
  p.storage = storage_of<T>();
  p.x = input;
  p.t = target;
  p.n = count;
  p.weight = BroadcastView{weight.data, weight.stride, weight.period};
  p.pos_weight = BroadcastView{pos_weight.data, pos_weight.stride, pos_weight.period};
  p.diff = grad;
  p.loss = loss;
  p.reduced = reduced;
  p.divide = Divide::constant;
  p.divisor = options.reduction == Reduction::mean ? static_cast<double>(count) : 1.0;
  p.grad_output = options.grad_output;
  return p;
}

template <typename T>
ElementPlan plan_binary_cross_entropy(const T* input, const T* target, int64_t count,
                                      Broadcast<T> weight, T* loss, T* grad, T* reduced,
                                      const BinaryCrossEntropyOptions& options) {
  return plan_binary(ElementOp::probabilities, input, target, count, weight, Broadcast<T>{},
                     loss, grad, reduced, options);
}

template <typename T>
ElementPlan plan_binary_cross_entropy_with_logits(const T* input, const T* target, int64_t count,
                                                  Broadcast<T> weight, Broadcast<T> pos_weight,
                                                  T* loss, T* grad, T* reduced,
                                                  const BinaryCrossEntropyOptions& options) {
  return plan_binary(ElementOp::logits, input, target, count, weight, pos_weight, loss, grad,
                     reduced, options);
}

/// cross_entropy (class indices) and nll_loss. The mean divides by the sum of w[y] over targets
/// not ignored (by their number without weights): 0 gives NaN, as PyTorch.
template <typename T, typename L>
SoftmaxPlan plan_class_index(SoftmaxOp op, const T* input, const L* target, int64_t outer,
                             int64_t channels, int64_t inner, const T* weight, T* loss, T* grad,
                             T* reduced, int64_t ignore_index, Reduction reduction,
                             double smoothing, double grad_output) {
  check_reduction(reduction);
  int64_t positions = 0;
  const int64_t count = check_softmax_shape(input, outer, channels, inner, &positions);
  check_pointer("target", target, positions);
  check_output("grad", grad, input, count);
  SoftmaxPlan p;
  p.op = op;
  p.storage = storage_of<T>();
  p.x = input;
  p.labels = target;
  p.label_kind = label_kind_of<L>();
  p.label_argument = Argument::target;
  p.outer = outer;
  p.channels = channels;
  p.inner = inner;
  p.has_ignore = true;
  p.ignore = ignore_index;
  p.class_weight = weight;
  p.smoothing = smoothing;
  p.cap = kNoCap;
  p.diff = grad;
  p.loss = loss;
  p.reduced = reduced;
  if (reduction == Reduction::mean) {
    // Without weights every w[y] is 1: the sum is the number of targets not ignored.
    p.divide = Divide::weight_sum;
    p.split_terms = weight != nullptr && smoothing > 0.0 && op == SoftmaxOp::xent;
  } else {
    p.divide = Divide::constant;
    p.divisor = 1.0;
  }
  p.grad_output = grad_output;
  return p;
}

template <typename T, typename L>
SoftmaxPlan plan_cross_entropy(const T* input, const L* target, int64_t outer, int64_t channels,
                               int64_t inner, const T* weight, T* loss, T* grad, T* reduced,
                               const CrossEntropyOptions& options) {
  const double eps = xentkit::detail::label_smoothing_of(options.label_smoothing);
  const double z = xentkit::detail::z_loss_of(options.z_loss);
  const double s = xentkit::detail::softcap_of(options.softcap);
  SoftmaxPlan p = plan_class_index(SoftmaxOp::xent, input, target, outer, channels, inner, weight,
                                   loss, grad, reduced, options.ignore_index, options.reduction,
                                   eps, options.grad_output);
  p.z_loss = z;
  p.softcap = s;
  return p;
}

/// Probability targets in the layout of input.
template <typename T>
SoftmaxPlan plan_cross_entropy_probabilities(const T* input, const T* target, int64_t outer,
                                             int64_t channels, int64_t inner, const T* weight,
                                             T* loss, T* grad, T* reduced,
                                             const CrossEntropyOptions& options) {
  check_reduction(options.reduction);
  const double eps = xentkit::detail::label_smoothing_of(options.label_smoothing);
  if (xentkit::detail::softcap_of(options.softcap) != 0.0) {
    // As on the CPU: soft-capping is a class-index feature.
    throw value_error("softcap: expected None (0) with class probabilities, got " +
                      std::to_string(options.softcap));
  }
  int64_t positions = 0;
  const int64_t count = check_softmax_shape(input, outer, channels, inner, &positions);
  xentkit::detail::check_probability_classes("input", positions, channels);
  check_pointer("target", target, count);
  check_output("grad", grad, input, count);
  SoftmaxPlan p;
  p.op = SoftmaxOp::xent;
  p.storage = storage_of<T>();
  p.x = input;
  p.soft = target;
  p.outer = outer;
  p.channels = channels;
  p.inner = inner;
  p.class_weight = weight;
  p.smoothing = eps;
  p.cap = kNoCap;
  p.diff = grad;
  p.loss = loss;
  p.reduced = reduced;
  p.divide = Divide::constant;
  // The mean divides by numel / C, as PyTorch: 0 / 0 (NaN) when there are no classes.
  p.divisor = options.reduction == Reduction::mean
                  ? (channels == 0 ? 0.0 : static_cast<double>(positions))
                  : 1.0;
  p.grad_output = options.grad_output;
  return p;
}

template <typename T, typename L>
SoftmaxPlan plan_nll_loss(const T* input, const L* target, int64_t outer, int64_t channels,
                          int64_t inner, const T* weight, T* loss, T* grad, T* reduced,
                          const NllLossOptions& options) {
  return plan_class_index(SoftmaxOp::nll, input, target, outer, channels, inner, weight, loss,
                          grad, reduced, options.ignore_index, options.reduction, 0.0,
                          options.grad_output);
}

/// softmax (into prob) or log-softmax (into log_prob).
template <typename T>
SoftmaxPlan plan_softmax_output(const T* input, int64_t outer, int64_t channels, int64_t inner,
                                T* prob, T* log_prob) {
  int64_t positions = 0;
  const int64_t count = check_softmax_shape(input, outer, channels, inner, &positions);
  T* out = prob ? prob : log_prob;
  check_pointer("out", out, count);
  check_separate("out", out, input, count);
  SoftmaxPlan p;
  p.op = SoftmaxOp::xent;
  p.storage = storage_of<T>();
  p.x = input;
  p.outer = outer;
  p.channels = channels;
  p.inner = inner;
  p.cap = kNoCap;
  p.prob = prob;
  p.log_prob = log_prob;
  return p;
}

// ---- TensorFlow (no reduction) ----------------------------------------------------------------

template <typename T>
ElementPlan plan_sigmoid_cross_entropy_with_logits(const T* labels, const T* logits,
                                                   int64_t count, T* loss, T* grad) {
  check_size("count", count);
  check_pointer("labels", labels, count);
  check_pointer("logits", logits, count);
  check_output("grad", grad, logits, count);
  ElementPlan p;
  p.op = ElementOp::logits;
  p.storage = storage_of<T>();
  p.x = logits;
  p.t = labels;
  p.n = count;
  p.diff = grad;
  p.loss = loss;
  return p;
}

template <typename T>
SoftmaxPlan plan_softmax_cross_entropy_with_logits(const T* labels, const T* logits,
                                                   int64_t outer, int64_t channels, int64_t inner,
                                                   T* loss, T* grad) {
  check_size("outer", outer);
  check_size("channels", channels);
  check_size("inner", inner);
  const int64_t count = checked_mul("logits", checked_mul("logits", outer, inner), channels);
  xentkit::detail::check_probability_classes("logits", outer * inner, channels);
  check_pointer("labels", labels, count);
  check_pointer("logits", logits, count);
  check_output("grad", grad, logits, count);
  SoftmaxPlan p;
  p.op = SoftmaxOp::xent;
  p.storage = storage_of<T>();
  p.x = logits;
  p.soft = labels;
  p.outer = outer;
  p.channels = channels;
  p.inner = inner;
  p.cap = kNoCap;
  p.diff = grad;
  p.loss = loss;
  return p;
}

template <typename T, typename L>
SoftmaxPlan plan_sparse_softmax_cross_entropy_with_logits(const L* labels, const T* logits,
                                                          int64_t rows, int64_t channels,
                                                          T* loss, T* grad) {
  check_size("rows", rows);
  check_size("channels", channels);
  const int64_t count = checked_mul("logits", rows, channels);
  check_pointer("labels", labels, rows);
  check_pointer("logits", logits, count);
  check_output("grad", grad, logits, count);
  // No label can be ignored: a row over no classes fails whatever its label (the CPU names the
  // first one).
  if (rows > 0 && channels == 0) throw xentkit::detail::no_class_error("logits", "labels", 0);
  SoftmaxPlan p;
  p.op = SoftmaxOp::xent;
  p.storage = storage_of<T>();
  p.x = logits;
  p.labels = labels;
  p.label_kind = label_kind_of<L>();
  p.label_argument = Argument::labels;
  p.outer = rows;
  p.channels = channels;
  p.inner = 1;
  p.cap = kNoCap;
  p.diff = grad;
  p.loss = loss;
  return p;
}

}  // namespace xentkit::cuda::detail
