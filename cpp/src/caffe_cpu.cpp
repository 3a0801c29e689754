// Caffe's two loss layers, mapped onto the kernel families: SigmoidCrossEntropyLoss onto the
// sigmoid family, SoftmaxWithLoss onto the softmax family. Everything is checked here, on the
// host, before a kernel touches an output.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>

#include "checks.hpp"
#include "kernels.hpp"
#include "xentkit/detail/normalize.hpp"
#include "xentkit/losses.hpp"

namespace xentkit {
namespace {

/// -log(FLT_MIN) = 87.3365...: Caffe's cap on a position's loss, for every value type.
inline double flt_min_cap() noexcept { return -std::log(static_cast<double>(FLT_MIN)); }

}  // namespace

template <typename T>
T sigmoid_cross_entropy_loss(const T* scores, const T* targets, int64_t outer, int64_t count,
                             T* diff, const SigmoidCrossEntropyLossOptions& options) {
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
    valid = detail::count_not_ignored(targets, count, ignore);
  }
  double norm = detail::normalizer(options.normalization, outer, inner, valid);
  detail::ElementProblem<T> pb;
  pb.x = scores;
  pb.t = targets;
  pb.n = count;
  pb.has_ignore = has_ignore;
  pb.ignore = ignore;
  pb.diff = diff;
  pb.grad_scale = options.loss_weight / norm;
  const detail::ElementSums sums = detail::elementwise_xent(pb);
  norm = detail::normalizer(options.normalization, outer, inner, sums.valid);
  return static_cast<T>(sums.loss / norm);
}

template <typename T, typename L>
T softmax_with_loss(const T* scores, const L* labels, int64_t outer, int64_t channels,
                    int64_t inner, T* diff, T* prob, const SoftmaxWithLossOptions& options) {
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
  pb.x = scores;
  pb.labels = labels;
  pb.outer = outer;
  pb.channels = channels;
  pb.inner = inner;
  pb.has_ignore = options.ignore_label.has_value();
  pb.ignore = options.ignore_label.value_or(0);
  pb.diff = diff;
  pb.prob = prob;
  pb.grad_scale = options.loss_weight / norm;
  pb.cap = flt_min_cap();
  return static_cast<T>(detail::softmax_xent(pb) / norm);
}

#define XENTKIT_SOFTMAX_WITH_LOSS(T, L)                                                   \
  template T softmax_with_loss<T, L>(const T*, const L*, int64_t, int64_t, int64_t, T*, T*, \
                                     const SoftmaxWithLossOptions&);
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_SOFTMAX_WITH_LOSS, float)
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_SOFTMAX_WITH_LOSS, double)

template float sigmoid_cross_entropy_loss<float>(const float*, const float*, int64_t, int64_t,
                                                 float*, const SigmoidCrossEntropyLossOptions&);
template double sigmoid_cross_entropy_loss<double>(const double*, const double*, int64_t, int64_t,
                                                   double*, const SigmoidCrossEntropyLossOptions&);

}  // namespace xentkit
