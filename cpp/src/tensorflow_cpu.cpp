// TensorFlow's cross entropies with logits (tf.nn), mapped onto the kernel families: per-element
// (per-row) losses, no reduction, the gradient of their sum.

#include <cstdint>
#include <limits>
#include <optional>

#include "checks.hpp"
#include "kernels.hpp"
#include "xentkit/losses.hpp"

namespace xentkit {

template <typename T>
void sigmoid_cross_entropy_with_logits(const T* labels, const T* logits, int64_t count, T* loss,
                                       T* grad) {
  detail::check_size("count", count);
  detail::check_pointer("labels", labels, count);
  detail::check_pointer("logits", logits, count);
  detail::check_output("grad", grad, logits, count);
  detail::ElementProblem<T> pb;
  pb.x = logits;
  pb.t = labels;
  pb.n = count;
  pb.diff = grad;
  pb.loss = loss;
  detail::elementwise_xent(pb);
}

template <typename T>
void softmax_cross_entropy_with_logits(const T* labels, const T* logits, int64_t outer,
                                       int64_t channels, int64_t inner, T* loss, T* grad) {
  detail::check_size("outer", outer);
  detail::check_size("channels", channels);
  detail::check_size("inner", inner);
  const int64_t count =
      detail::checked_mul("logits", detail::checked_mul("logits", outer, inner), channels);
  detail::check_pointer("labels", labels, count);
  detail::check_pointer("logits", logits, count);
  detail::check_output("grad", grad, logits, count);
  detail::check_probability_classes("logits", detail::checked_mul("logits", outer, inner),
                                    channels);
  detail::SoftmaxProblem<T, int64_t> pb;
  pb.x = logits;
  pb.soft = labels;
  pb.outer = outer;
  pb.channels = channels;
  pb.inner = inner;
  pb.diff = grad;
  pb.loss = loss;
  pb.cap = std::numeric_limits<double>::infinity();
  detail::softmax_xent(pb);
}

template <typename T, typename L>
void sparse_softmax_cross_entropy_with_logits(const L* labels, const T* logits, int64_t rows,
                                              int64_t channels, T* loss, T* grad) {
  detail::check_size("rows", rows);
  detail::check_size("channels", channels);
  const int64_t count = detail::checked_mul("logits", rows, channels);
  detail::check_pointer("labels", labels, rows);
  detail::check_pointer("logits", logits, count);
  detail::check_output("grad", grad, logits, count);
  detail::validate_labels(labels, rows, channels, std::nullopt, "labels", "logits");
  detail::SoftmaxProblem<T, L> pb;
  pb.x = logits;
  pb.labels = labels;
  pb.outer = rows;
  pb.channels = channels;
  pb.inner = 1;
  pb.diff = grad;
  pb.loss = loss;
  pb.cap = std::numeric_limits<double>::infinity();
  detail::softmax_xent(pb);
}

#define XENTKIT_SPARSE(T, L)                                                                 \
  template void sparse_softmax_cross_entropy_with_logits<T, L>(const L*, const T*, int64_t, \
                                                               int64_t, T*, T*);
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_SPARSE, float)
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_SPARSE, double)

template void sigmoid_cross_entropy_with_logits<float>(const float*, const float*, int64_t, float*,
                                                       float*);
template void sigmoid_cross_entropy_with_logits<double>(const double*, const double*, int64_t,
                                                        double*, double*);
template void softmax_cross_entropy_with_logits<float>(const float*, const float*, int64_t,
                                                       int64_t, int64_t, float*, float*);
template void softmax_cross_entropy_with_logits<double>(const double*, const double*, int64_t,
                                                        int64_t, int64_t, double*, double*);

}  // namespace xentkit
