// The per-chunk primitive of the fused linear cross-entropy (xentkit/linear.hpp): the plan reads
// the targets once (validation and the divisor of "mean"); each chunk is one call of the softmax
// family over a block of rows, writing the gradient over its own logits.

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>

#include "checks.hpp"
#include "kernels.hpp"
#include "xentkit/linear.hpp"

namespace xentkit {
namespace {

/// The softmax problem of one chunk over storage S (T or a 16-bit type computed in T = float).
template <typename T, typename L, typename S>
double run_chunk(const LinearCrossEntropyPlan& plan, S* logits, const L* target, int64_t n,
                 const T* weight, S* loss, bool grad) {
  detail::check_size("n", n);
  const int64_t classes = plan.classes;
  const int64_t count = detail::checked_mul("logits", n, classes);
  detail::check_pointer("logits", logits, count);
  detail::check_pointer("target", target, n);
  if (n == 0) return 0.0;
  const CrossEntropyOptions& o = plan.options;
  const std::optional<int64_t> ignore(o.ignore_index);
  detail::validate_labels(target, n, classes, ignore, "target", "logits");
  detail::SoftmaxProblem<T, L> pb;
  detail::HalfSoftmaxIO io;
  pb.op = detail::SoftmaxOp::xent;
  detail::bind(pb, io, static_cast<const S*>(logits), grad ? logits : static_cast<S*>(nullptr),
               static_cast<S*>(nullptr), loss);
  pb.labels = target;
  pb.outer = n;
  pb.channels = classes;
  pb.inner = 1;
  pb.has_ignore = true;
  pb.ignore = o.ignore_index;
  pb.class_weight = weight;
  pb.smoothing = o.label_smoothing;
  pb.z_loss = o.z_loss;
  pb.softcap = o.softcap;
  pb.grad_scale = plan.grad_scale;
  pb.cap = std::numeric_limits<double>::infinity();
  return detail::softmax_xent(pb);
}

}  // namespace

template <typename T, typename L>
LinearCrossEntropyPlan plan_linear_cross_entropy(const L* target, int64_t rows, int64_t classes,
                                                 const T* weight,
                                                 const CrossEntropyOptions& options) {
  detail::check_reduction(options.reduction);
  detail::check_size("rows", rows);
  detail::check_size("classes", classes);
  detail::check_pointer("target", target, rows);
  LinearCrossEntropyPlan plan;
  plan.rows = rows;
  plan.classes = classes;
  plan.options = options;
  plan.options.label_smoothing = detail::label_smoothing_of(options.label_smoothing);
  plan.options.z_loss = detail::z_loss_of(options.z_loss);
  plan.options.softcap = detail::softcap_of(options.softcap);
  const std::optional<int64_t> ignore(options.ignore_index);
  plan.valid = detail::validate_labels(target, rows, classes, ignore, "target", "logits");
  plan.divisor = 1.0;
  if (options.reduction == Reduction::mean) {
    plan.divisor = weight ? detail::target_weight_sum(target, rows, classes, ignore, weight)
                          : static_cast<double>(plan.valid);
  }
  plan.grad_scale = options.grad_output / plan.divisor;
  return plan;
}

template <typename T, typename L>
double linear_cross_entropy_chunk(const LinearCrossEntropyPlan& plan, T* logits, const L* target,
                                  int64_t n, const T* weight, T* loss, bool grad) {
  static_assert(std::is_floating_point_v<T>, "float or double logits");
  return run_chunk<T, L, T>(plan, logits, target, n, weight, loss, grad);
}

template <typename L>
double linear_cross_entropy_chunk(const LinearCrossEntropyPlan& plan, half* logits,
                                  const L* target, int64_t n, const float* weight, half* loss,
                                  bool grad) {
  return run_chunk<float, L, half>(plan, logits, target, n, weight, loss, grad);
}

template <typename L>
double linear_cross_entropy_chunk(const LinearCrossEntropyPlan& plan, bfloat16* logits,
                                  const L* target, int64_t n, const float* weight,
                                  bfloat16* loss, bool grad) {
  return run_chunk<float, L, bfloat16>(plan, logits, target, n, weight, loss, grad);
}

double linear_cross_entropy_result(const LinearCrossEntropyPlan& plan, double sum) noexcept {
  if (plan.options.reduction != Reduction::mean) return sum;
  // Over a zero divisor every term is 0 (nothing valid, or only zero weights): PyTorch's 0 / 0.
  if (plan.divisor == 0.0) return std::numeric_limits<double>::quiet_NaN();
  return sum / plan.divisor;
}

#define XENTKIT_LINEAR_PLAN(T, L)                                                             \
  template LinearCrossEntropyPlan plan_linear_cross_entropy<T, L>(                            \
      const L*, int64_t, int64_t, const T*, const CrossEntropyOptions&);                      \
  template double linear_cross_entropy_chunk<T, L>(const LinearCrossEntropyPlan&, T*, const L*, \
                                                   int64_t, const T*, T*, bool);
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_LINEAR_PLAN, float)
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_LINEAR_PLAN, double)
#define XENTKIT_LINEAR_16(T, L)                                                               \
  template double linear_cross_entropy_chunk<L>(const LinearCrossEntropyPlan&, T*, const L*,   \
                                                int64_t, const float*, T*, bool);
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_LINEAR_16, half)
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_LINEAR_16, bfloat16)

}  // namespace xentkit
