// The sigmoid cross-entropy kernel family on the CPU: one fused pass that reads scores and targets
// once and writes the diff once.

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels.hpp"
#include "xentkit/detail/labels.hpp"
#include "xentkit/detail/parallel.hpp"

namespace xentkit::detail {
namespace {

constexpr int64_t kSigmoidBlock = 16384;  // elements per deterministic block

/// Per-element loss l = max(x, 0) - x*t + log1p(exp(-|x|)) and gradient sigmoid(x) - t, sharing
/// one exp, in the input's precision R (float inputs use float math; the caller sums in double).
/// The gradient is formed as (1 - t) - sigmoid(-x) for x >= 0 so that it keeps its relative
/// precision when sigmoid(x) rounds to 1. Infinite x gives the limits (0 when t matches).
template <typename R>
inline void sigmoid_terms(R x, R t, R& loss, R& grad) noexcept {
  const R e = std::exp(-std::fabs(x));  // in [0, 1]; NaN for NaN x
  const R q = e / (R(1) + e);           // sigmoid(-|x|)
  if (std::isinf(x)) {
    const R w = x > 0 ? R(1) - t : t;  // the coefficient of |x|
    loss = (w == R(0)) ? R(0) : w * std::numeric_limits<R>::infinity();
  } else {
    loss = (x >= 0 ? x * (R(1) - t) : -x * t) + std::log1p(e);
  }
  grad = x >= 0 ? (R(1) - t) - q : q - t;
}

inline bool ignored_target(double t, bool has_ignore, int64_t ignore) noexcept {
  if (!has_ignore) return false;
  int64_t v;
  return truncate_label(t, v) && v == ignore;
}

}  // namespace

template <typename T>
SigmoidSums sigmoid_xent(const SigmoidProblem<T>& pb) {
  const T* x = pb.x;
  const T* t = pb.t;
  T* diff = pb.diff;
  const int64_t n = pb.n;
  const bool has_ignore = pb.has_ignore;
  const int64_t ignore = pb.ignore;
  const double grad_scale = pb.grad_scale;
  const int64_t n_blocks = (n + kSigmoidBlock - 1) / kSigmoidBlock;
  std::vector<double> loss_part(static_cast<size_t>(n_blocks), 0.0);
  std::vector<int64_t> count_part(static_cast<size_t>(n_blocks), 0);
  parallel_blocks(n_blocks, threads_for(n, n_blocks), [&](int64_t b) {
    const int64_t begin = b * kSigmoidBlock;
    const int64_t end = std::min(n, begin + kSigmoidBlock);
    double acc = 0.0;
    int64_t valid = 0;
    for (int64_t i = begin; i < end; ++i) {
      const T xi = x[i];
      const T ti = t[i];
      if (ignored_target(static_cast<double>(ti), has_ignore, ignore)) {
        if (diff) diff[i] = T(0);
        continue;
      }
      T l, g;
      sigmoid_terms(xi, ti, l, g);
      acc += static_cast<double>(l);
      ++valid;
      if (diff) diff[i] = static_cast<T>(static_cast<double>(g) * grad_scale);
    }
    loss_part[static_cast<size_t>(b)] = acc;
    count_part[static_cast<size_t>(b)] = valid;
  });
  SigmoidSums sums;
  sums.loss = ordered_sum(loss_part);
  for (int64_t c : count_part) sums.valid += c;
  return sums;
}

template <typename T>
int64_t count_not_ignored(const T* t, int64_t n, int64_t ignore) {
  int64_t valid = 0;
  for (int64_t i = 0; i < n; ++i) {
    valid += ignored_target(static_cast<double>(t[i]), true, ignore) ? 0 : 1;
  }
  return valid;
}

template SigmoidSums sigmoid_xent<float>(const SigmoidProblem<float>&);
template SigmoidSums sigmoid_xent<double>(const SigmoidProblem<double>&);
template int64_t count_not_ignored<float>(const float*, int64_t, int64_t);
template int64_t count_not_ignored<double>(const double*, int64_t, int64_t);

}  // namespace xentkit::detail
