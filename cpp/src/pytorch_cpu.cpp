// PyTorch's cross-entropy family (torch.nn.functional), mapped onto the two kernel families:
// binary_cross_entropy(_with_logits) onto the elementwise family, cross_entropy, nll_loss,
// log_softmax and softmax onto the softmax family. Everything is checked here, on the host,
// before a kernel touches an output.

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>

#include "checks.hpp"
#include "kernels.hpp"
#include "xentkit/bfloat16.hpp"
#include "xentkit/half.hpp"
#include "xentkit/losses.hpp"

namespace xentkit {
namespace {

template <typename T>
void check_probabilities(const char* what, const T* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!(v[i] >= T(0) && v[i] <= T(1))) {  // false for NaN too
      throw value_error(detail::probability_message(what, static_cast<double>(v[i]),
                                                    std::numeric_limits<T>::max_digits10, i));
    }
  }
}

/// The divisor of the mean (NaN results when it is 0), or 1 for sum and none.
inline double divisor(Reduction reduction, double mean_divisor) {
  return reduction == Reduction::mean ? mean_divisor : 1.0;
}

/// The reduced loss: the mean is sum / divisor as PyTorch divides (0 / 0 = NaN over nothing;
/// a nonzero sum over a zero weight sum is +-inf).
inline double reduce(Reduction reduction, double sum, double mean_divisor) {
  return reduction == Reduction::mean ? sum / mean_divisor : sum;
}

inline double smoothing_of(double eps) { return detail::label_smoothing_of(eps); }

struct SoftmaxShape {
  int64_t positions;
  int64_t count;
};

template <typename T>
SoftmaxShape check_softmax_shape(const T* input, int64_t outer, int64_t channels, int64_t inner) {
  detail::check_size("outer", outer);
  detail::check_size("channels", channels);
  detail::check_size("inner", inner);
  SoftmaxShape s;
  s.positions = detail::checked_mul("target", outer, inner);
  s.count = detail::checked_mul("input", s.positions, channels);
  detail::check_pointer("input", input, s.count);
  return s;
}

/// S is the storage type of input, loss and grad: T, or half (computed in T = float).
template <typename T, typename L, typename S = T>
T class_index_loss(detail::SoftmaxOp op, const S* input, const L* target, int64_t outer,
                   int64_t channels, int64_t inner, const T* weight, S* loss, S* grad,
                   int64_t ignore_index, Reduction reduction, double smoothing,
                   double grad_output, double z_loss = 0.0, double softcap = 0.0) {
  detail::check_reduction(reduction);
  const SoftmaxShape s = check_softmax_shape(input, outer, channels, inner);
  detail::check_pointer("target", target, s.positions);
  detail::check_output("grad", grad, input, s.count);
  const std::optional<int64_t> ignore(ignore_index);
  const int64_t valid = detail::validate_labels(target, s.positions, channels, ignore,
                                                "target", "input");
  double mean_divisor = static_cast<double>(valid);
  if (reduction == Reduction::mean && weight != nullptr) {
    mean_divisor = detail::target_weight_sum(target, s.positions, channels, ignore, weight);
  }
  detail::SoftmaxProblem<T, L> pb;
  detail::HalfSoftmaxIO io;
  pb.op = op;
  detail::bind(pb, io, input, grad, static_cast<S*>(nullptr), loss);
  pb.labels = target;
  pb.outer = outer;
  pb.channels = channels;
  pb.inner = inner;
  pb.has_ignore = true;
  pb.ignore = ignore_index;
  pb.class_weight = weight;
  pb.smoothing = smoothing;
  pb.z_loss = z_loss;
  pb.softcap = softcap;
  pb.grad_scale = grad_output / divisor(reduction, mean_divisor);
  pb.cap = std::numeric_limits<double>::infinity();
  const double sum = detail::softmax_xent(pb);
  if (reduction == Reduction::mean && mean_divisor == 0.0 && smoothing > 0.0 &&
      op == detail::SoftmaxOp::xent) {
    // PyTorch divides the two terms by the (zero) weight sum separately: (1 - eps) nll / 0 is
    // NaN when the weighted nll sum is 0, and NaN + inf stays NaN. The nll sum is recomputed
    // alone (loss only; this happens only when every target has weight 0).
    detail::SoftmaxProblem<T, L> alone = pb;
    detail::HalfSoftmaxIO io_alone;
    alone.diff = alone.prob = alone.log_prob = alone.loss = nullptr;
    if (pb.half) {
      io_alone.x = pb.half->x;
      io_alone.format = pb.half->format;
      alone.half = &io_alone;
    }
    alone.smoothing = 0.0;
    const double nll = (1.0 - smoothing) * detail::softmax_xent(alone);
    return static_cast<T>(nll / mean_divisor + (sum - nll) / mean_divisor);
  }
  return static_cast<T>(reduce(reduction, sum, mean_divisor));
}

/// Checks and runs an elementwise problem (probabilities are range-checked first); mean divides
/// by `count`.
template <typename T, typename S = T>
T binary_loss(detail::ElementOp op, const S* input, const S* target, int64_t count,
              Broadcast<T> weight, Broadcast<T> pos_weight, S* loss, S* grad,
              const BinaryCrossEntropyOptions& options) {
  detail::check_reduction(options.reduction);
  detail::check_size("count", count);
  detail::check_pointer("input", input, count);
  detail::check_pointer("target", target, count);
  detail::check_broadcast("weight", weight);
  detail::check_broadcast("pos_weight", pos_weight);
  detail::check_output("grad", grad, input, count);
  if constexpr (std::is_same_v<S, T>) {
    if (op == detail::ElementOp::probabilities) {
      check_probabilities("input", input, count);
      check_probabilities("target", target, count);
    }
  }
  const double n = static_cast<double>(count);
  detail::ElementProblem<T> pb;
  detail::HalfElementIO io;
  pb.op = op;
  detail::bind(pb, io, input, target, grad, loss);
  pb.n = count;
  pb.weight = weight;
  pb.pos_weight = pos_weight;
  pb.grad_scale = options.grad_output / divisor(options.reduction, n);
  const detail::ElementSums sums = detail::elementwise_xent(pb);
  return static_cast<T>(reduce(options.reduction, sums.loss, n));
}

/// softmax (into prob) or log-softmax (into log_prob) over `channels`.
template <typename T>
void softmax_output(const T* input, int64_t outer, int64_t channels, int64_t inner, T* prob,
                    T* log_prob) {
  const SoftmaxShape s = check_softmax_shape(input, outer, channels, inner);
  T* out = prob ? prob : log_prob;
  detail::check_pointer("out", out, s.count);
  detail::check_separate("out", out, input, s.count);
  detail::SoftmaxProblem<T, int64_t> pb;
  pb.x = input;
  pb.outer = outer;
  pb.channels = channels;
  pb.inner = inner;
  pb.prob = prob;
  pb.log_prob = log_prob;
  detail::softmax_xent(pb);
}

}  // namespace

template <typename T>
T binary_cross_entropy(const T* input, const T* target, int64_t count, Broadcast<T> weight,
                       T* loss, T* grad, const BinaryCrossEntropyOptions& options) {
  return binary_loss(detail::ElementOp::probabilities, input, target, count, weight, {}, loss,
                     grad, options);
}

template <typename T>
T binary_cross_entropy_with_logits(const T* input, const T* target, int64_t count,
                                   Broadcast<T> weight, Broadcast<T> pos_weight, T* loss, T* grad,
                                   const BinaryCrossEntropyOptions& options) {
  return binary_loss(detail::ElementOp::logits, input, target, count, weight, pos_weight, loss,
                     grad, options);
}

template <typename T, typename L>
T cross_entropy(const T* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
                const T* weight, T* loss, T* grad, const CrossEntropyOptions& options) {
  const double eps = smoothing_of(options.label_smoothing);
  return class_index_loss(detail::SoftmaxOp::xent, input, target, outer, channels, inner, weight,
                          loss, grad, options.ignore_index, options.reduction, eps,
                          options.grad_output, detail::z_loss_of(options.z_loss),
                          detail::softcap_of(options.softcap));
}

template <typename T>
T cross_entropy(const T* input, const T* target, int64_t outer, int64_t channels, int64_t inner,
                const T* weight, T* loss, T* grad, const CrossEntropyOptions& options) {
  detail::check_reduction(options.reduction);
  const double eps = smoothing_of(options.label_smoothing);
  if (detail::softcap_of(options.softcap) != 0.0) {
    // Soft-capping is a class-index feature (as z_loss); probability targets refuse it.
    throw value_error("softcap: expected None (0) with class probabilities, got " +
                      std::to_string(options.softcap));
  }
  const SoftmaxShape s = check_softmax_shape(input, outer, channels, inner);
  detail::check_pointer("target", target, s.count);
  detail::check_output("grad", grad, input, s.count);
  detail::check_probability_classes("input", s.positions, channels);
  const double positions = static_cast<double>(s.positions);
  detail::SoftmaxProblem<T, int64_t> pb;
  pb.x = input;
  pb.soft = target;
  pb.outer = outer;
  pb.channels = channels;
  pb.inner = inner;
  pb.class_weight = weight;
  pb.smoothing = eps;
  pb.diff = grad;
  pb.loss = loss;
  pb.grad_scale = options.grad_output / divisor(options.reduction, positions);
  pb.cap = std::numeric_limits<double>::infinity();
  const double sum = detail::softmax_xent(pb);
  return static_cast<T>(reduce(options.reduction, sum, positions));
}

template <typename T, typename L>
T nll_loss(const T* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
           const T* weight, T* loss, T* grad, const NllLossOptions& options) {
  return class_index_loss(detail::SoftmaxOp::nll, input, target, outer, channels, inner, weight,
                          loss, grad, options.ignore_index, options.reduction, 0.0,
                          options.grad_output);
}

template <typename T>
void log_softmax(const T* input, int64_t outer, int64_t channels, int64_t inner, T* out) {
  softmax_output<T>(input, outer, channels, inner, nullptr, out);
}

template <typename T>
void softmax(const T* input, int64_t outer, int64_t channels, int64_t inner, T* out) {
  softmax_output<T>(input, outer, channels, inner, out, nullptr);
}

#define XENTKIT_CLASS_INDEX(T, L)                                                              \
  template T cross_entropy<T, L>(const T*, const L*, int64_t, int64_t, int64_t, const T*, T*,  \
                                 T*, const CrossEntropyOptions&);                              \
  template T nll_loss<T, L>(const T*, const L*, int64_t, int64_t, int64_t, const T*, T*, T*,   \
                            const NllLossOptions&);
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_CLASS_INDEX, float)
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_CLASS_INDEX, double)

#define XENTKIT_PYTORCH_REAL(T)                                                                \
  template T binary_cross_entropy<T>(const T*, const T*, int64_t, Broadcast<T>, T*, T*,        \
                                     const BinaryCrossEntropyOptions&);                        \
  template T binary_cross_entropy_with_logits<T>(const T*, const T*, int64_t, Broadcast<T>,    \
                                                 Broadcast<T>, T*, T*,                         \
                                                 const BinaryCrossEntropyOptions&);            \
  template T cross_entropy<T>(const T*, const T*, int64_t, int64_t, int64_t, const T*, T*, T*, \
                              const CrossEntropyOptions&);                                     \
  template void log_softmax<T>(const T*, int64_t, int64_t, int64_t, T*);                       \
  template void softmax<T>(const T*, int64_t, int64_t, int64_t, T*);
XENTKIT_PYTORCH_REAL(float)
XENTKIT_PYTORCH_REAL(double)

// ---- 16-bit storage (float16 and bfloat16: one path, computed in float32) -------------------

namespace {

/// The class-index cross entropy over 16-bit storage S: the options read once for both types.
template <typename S, typename L>
float sixteen_bit_cross_entropy(const S* input, const L* target, int64_t outer,
                                int64_t channels, int64_t inner, const float* weight, S* loss,
                                S* grad, const CrossEntropyOptions& options) {
  const double eps = smoothing_of(options.label_smoothing);
  return class_index_loss<float, L, S>(detail::SoftmaxOp::xent, input, target, outer, channels,
                                       inner, weight, loss, grad, options.ignore_index,
                                       options.reduction, eps, options.grad_output,
                                       detail::z_loss_of(options.z_loss),
                                       detail::softcap_of(options.softcap));
}

}  // namespace

template <typename L>
float cross_entropy(const half* input, const L* target, int64_t outer, int64_t channels,
                    int64_t inner, const float* weight, half* loss, half* grad,
                    const CrossEntropyOptions& options) {
  return sixteen_bit_cross_entropy(input, target, outer, channels, inner, weight, loss, grad,
                                   options);
}

float binary_cross_entropy_with_logits(const half* input, const half* target, int64_t count,
                                       Broadcast<float> weight, Broadcast<float> pos_weight,
                                       half* loss, half* grad,
                                       const BinaryCrossEntropyOptions& options) {
  return binary_loss<float, half>(detail::ElementOp::logits, input, target, count, weight,
                                  pos_weight, loss, grad, options);
}

#define XENTKIT_HALF_CLASS_INDEX(T, L)                                                          \
  template float cross_entropy<L>(const half*, const L*, int64_t, int64_t, int64_t,             \
                                  const float*, half*, half*, const CrossEntropyOptions&);
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_HALF_CLASS_INDEX, void)

template <typename L>
float cross_entropy(const bfloat16* input, const L* target, int64_t outer, int64_t channels,
                    int64_t inner, const float* weight, bfloat16* loss, bfloat16* grad,
                    const CrossEntropyOptions& options) {
  return sixteen_bit_cross_entropy(input, target, outer, channels, inner, weight, loss, grad,
                                   options);
}

float binary_cross_entropy_with_logits(const bfloat16* input, const bfloat16* target,
                                       int64_t count, Broadcast<float> weight,
                                       Broadcast<float> pos_weight, bfloat16* loss,
                                       bfloat16* grad, const BinaryCrossEntropyOptions& options) {
  return binary_loss<float, bfloat16>(detail::ElementOp::logits, input, target, count, weight,
                                      pos_weight, loss, grad, options);
}

#define XENTKIT_BF16_CLASS_INDEX(T, L)                                                         \
  template float cross_entropy<L>(const bfloat16*, const L*, int64_t, int64_t, int64_t,        \
                                  const float*, bfloat16*, bfloat16*, const CrossEntropyOptions&);
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_BF16_CLASS_INDEX, void)

}  // namespace xentkit
