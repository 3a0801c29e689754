// Caffe's two loss layers, mapped onto the kernel families: SigmoidCrossEntropyLoss onto the
// sigmoid family, SoftmaxWithLoss onto the softmax family. Everything is checked here, on the
// host, before a kernel touches an output.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "checks.hpp"
#include "kernels.hpp"
#include "xentkit/detail/normalize.hpp"
#include "xentkit/bfloat16.hpp"
#include "xentkit/half.hpp"
#include "xentkit/losses.hpp"

namespace xentkit {
namespace {

/// -log(FLT_MIN) = 87.3365...: Caffe's cap on a position's loss, for every value type.
inline double flt_min_cap() noexcept { return -std::log(static_cast<double>(FLT_MIN)); }

/// S is the storage type of scores, targets and diff: T, or half (computed in T = float).
template <typename T, typename S>
T sigmoid_layer(const S* scores, const S* targets, int64_t outer, int64_t count, S* diff,
                const SigmoidCrossEntropyLossOptions& options) {
  detail::check_size("outer", outer);
  detail::check_size("count", count);
  if (outer == 0 ? count != 0 : count % outer != 0) {
    throw value_error("scores: expected an element count divisible by the first dimension " +
                      std::to_string(outer) + ", got " + std::to_string(count) + " elements");
  }
  detail::check_pointer("scores", scores, count);
  detail::check_pointer("targets", targets, count);
  const int64_t inner = outer == 0 ? 0 : count / outer;
  const bool has_ignore = options.ignore_label.has_value();
  const int64_t ignore = options.ignore_label.value_or(0);
  if (count == 0) return T(0);

  // The diff needs the normalizer before the fused pass; only VALID with an ignored label makes it
  // depend on the data, and then a cheap pass over the targets counts first.
  int64_t valid = count;
  if (has_ignore && options.normalization == Normalization::valid && diff != nullptr) {
    if constexpr (std::is_same_v<S, T>) {
      valid = detail::count_not_ignored(targets, count, ignore);
    } else {
      valid = detail::count_not_ignored_half(detail::half_bits(targets), count, ignore,
                                             detail::bits16_of<S>());
    }
  }
  double norm = detail::normalizer(options.normalization, outer, inner, valid);
  detail::ElementProblem<T> pb;
  detail::HalfElementIO io;
  detail::bind(pb, io, scores, targets, diff, static_cast<S*>(nullptr));
  pb.n = count;
  pb.has_ignore = has_ignore;
  pb.ignore = ignore;
  pb.grad_scale = options.loss_weight / norm;
  const detail::ElementSums sums = detail::elementwise_xent(pb);
  norm = detail::normalizer(options.normalization, outer, inner, sums.valid);
  return static_cast<T>(sums.loss / norm);
}

template <typename T, typename L, typename S>
T softmax_layer(const S* scores, const L* labels, int64_t outer, int64_t channels, int64_t inner,
                S* diff, S* prob, const SoftmaxWithLossOptions& options) {
  detail::check_size("outer", outer);
  detail::check_size("channels", channels);
  detail::check_size("inner", inner);
  const int64_t positions = detail::checked_mul("labels", outer, inner);
  const int64_t count = detail::checked_mul("scores", positions, channels);
  detail::check_pointer("scores", scores, count);
  detail::check_pointer("labels", labels, positions);
  if (prob != nullptr && count > 0 &&
      (prob == scores || (diff != nullptr && prob == diff))) {
    throw value_error("prob: expected a buffer of its own, got one shared with scores or diff");
  }
  if (positions == 0) return T(0);

  const int64_t valid = detail::validate_labels(labels, positions, channels, options.ignore_label);
  const double norm = detail::normalizer(options.normalization, outer, inner, valid);
  if (count == 0) return T(0);  // C == 0 and every position ignored

  detail::SoftmaxProblem<T, L> pb;
  detail::HalfSoftmaxIO io;
  detail::bind(pb, io, scores, diff, prob, static_cast<S*>(nullptr));
  pb.labels = labels;
  pb.outer = outer;
  pb.channels = channels;
  pb.inner = inner;
  pb.has_ignore = options.ignore_label.has_value();
  pb.ignore = options.ignore_label.value_or(0);
  pb.grad_scale = options.loss_weight / norm;
  pb.cap = flt_min_cap();
  return static_cast<T>(detail::softmax_xent(pb) / norm);
}

}  // namespace

template <typename T>
T sigmoid_cross_entropy_loss(const T* scores, const T* targets, int64_t outer, int64_t count,
                             T* diff, const SigmoidCrossEntropyLossOptions& options) {
  return sigmoid_layer<T, T>(scores, targets, outer, count, diff, options);
}

float sigmoid_cross_entropy_loss(const half* scores, const half* targets, int64_t outer,
                                 int64_t count, half* diff,
                                 const SigmoidCrossEntropyLossOptions& options) {
  return sigmoid_layer<float, half>(scores, targets, outer, count, diff, options);
}

template <typename T, typename L>
T softmax_with_loss(const T* scores, const L* labels, int64_t outer, int64_t channels,
                    int64_t inner, T* diff, T* prob, const SoftmaxWithLossOptions& options) {
  return softmax_layer<T, L, T>(scores, labels, outer, channels, inner, diff, prob, options);
}

template <typename L>
float softmax_with_loss(const half* scores, const L* labels, int64_t outer, int64_t channels,
                        int64_t inner, half* diff, half* prob,
                        const SoftmaxWithLossOptions& options) {
  return softmax_layer<float, L, half>(scores, labels, outer, channels, inner, diff, prob,
                                       options);
}

#define XENTKIT_SOFTMAX_WITH_LOSS(T, L)                                                   \
  template T softmax_with_loss<T, L>(const T*, const L*, int64_t, int64_t, int64_t, T*, T*, \
                                     const SoftmaxWithLossOptions&);
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_SOFTMAX_WITH_LOSS, float)
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_SOFTMAX_WITH_LOSS, double)
float sigmoid_cross_entropy_loss(const bfloat16* scores, const bfloat16* targets, int64_t outer,
                                 int64_t count, bfloat16* diff,
                                 const SigmoidCrossEntropyLossOptions& options) {
  return sigmoid_layer<float, bfloat16>(scores, targets, outer, count, diff, options);
}

template <typename L>
float softmax_with_loss(const bfloat16* scores, const L* labels, int64_t outer, int64_t channels,
                        int64_t inner, bfloat16* diff, bfloat16* prob,
                        const SoftmaxWithLossOptions& options) {
  return softmax_layer<float, L, bfloat16>(scores, labels, outer, channels, inner, diff, prob,
                                           options);
}

#define XENTKIT_HALF_SOFTMAX_WITH_LOSS(T, L)                                                 \
  template float softmax_with_loss<L>(const half*, const L*, int64_t, int64_t, int64_t, half*, \
                                      half*, const SoftmaxWithLossOptions&);
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_HALF_SOFTMAX_WITH_LOSS, void)
#define XENTKIT_BF16_SOFTMAX_WITH_LOSS(T, L)                                                   \
  template float softmax_with_loss<L>(const bfloat16*, const L*, int64_t, int64_t, int64_t,     \
                                      bfloat16*, bfloat16*, const SoftmaxWithLossOptions&);
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_BF16_SOFTMAX_WITH_LOSS, void)

template float sigmoid_cross_entropy_loss<float>(const float*, const float*, int64_t, int64_t,
                                                 float*, const SigmoidCrossEntropyLossOptions&);
template double sigmoid_cross_entropy_loss<double>(const double*, const double*, int64_t, int64_t,
                                                   double*, const SigmoidCrossEntropyLossOptions&);

}  // namespace xentkit
