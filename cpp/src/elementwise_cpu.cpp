// The elementwise cross-entropy kernel family on the CPU: one fused pass that reads inputs and
// targets once and writes the per-element losses and the gradient once. Two ops: logits (the
// sigmoid cross entropy of Caffe, PyTorch's BCE with logits and TF) and probabilities (PyTorch's
// binary_cross_entropy).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels.hpp"
#include "half_bits.hpp"
#include "simd/fast.hpp"
#include "xentkit/half.hpp"
#include "xentkit/detail/labels.hpp"
#include "xentkit/detail/parallel.hpp"

namespace xentkit::detail {
namespace {

constexpr int64_t kElementBlock = 16384;  // elements per deterministic block

/// Per-element loss l = (1 - t) x + L softplus(-x), L = 1 + (pw - 1) t, and its derivative
/// L sigmoid(x) - pw t, sharing one exp, in the input's precision R (float inputs use float math;
/// the caller sums in double). Formed per sign of x so that no term cancels for t in [0, 1]:
///   x >= 0: l = (1 - t) x + L log1p(e),   g = (1 - t) - L sigmoid(-x)
///   x <  0: l = -pw t x + L log1p(e),     g = L sigmoid(x) - pw t,      e = exp(-|x|).
/// Infinite x gives the limits (0 when the coefficient of |x| is 0).
template <typename R>
inline void logit_terms(R x, R t, R pw, R& loss, R& grad) noexcept {
  const R e = std::exp(-std::fabs(x));  // in [0, 1]; NaN for NaN x
  const R q = e / (R(1) + e);           // sigmoid(-|x|)
  const R big = pw * t;                 // the coefficient of -x for x < 0
  const R L = R(1) + (pw - R(1)) * t;  // exactly 1 without pos_weight
  if (std::isinf(x)) {
    const R w = x > 0 ? R(1) - t : big;  // the coefficient of |x|
    loss = (w == R(0)) ? R(0) : w * std::numeric_limits<R>::infinity();
  } else {
    loss = (x >= 0 ? x * (R(1) - t) : -x * big) + L * std::log1p(e);
  }
  grad = x >= 0 ? (R(1) - t) - L * q : L * q - big;
}

/// PyTorch's binary cross entropy of a probability p: each log clamped at -100, the gradient's
/// denominator p (1 - p) floored at 1e-12 held as a float. Computed in double.
inline void probability_terms(double p, double t, double& loss, double& grad) noexcept {
  constexpr double kFloor = static_cast<double>(1e-12f);
  const double lp = std::max(std::log(p), -100.0);
  const double lq = std::max(std::log1p(-p), -100.0);
  loss = -(t * lp + (1.0 - t) * lq);
  grad = (p - t) / std::max(p * (1.0 - p), kFloor);
}

inline bool ignored_target(double t, bool has_ignore, int64_t ignore) noexcept {
  if (!has_ignore) return false;
  int64_t v;
  return truncate_label(t, v) && v == ignore;
}

template <typename T>
inline T broadcast_at(const Broadcast<T>& b, int64_t i) noexcept {
  return b.data ? b.data[(i / b.stride) % b.period] : T(1);
}

/// Elements [begin, end) of pb: adds their losses to acc and their count to valid. The vector
/// kernel takes runs of 16; a run with a non-finite logit, and the tail, go to the scalar code.
template <typename T>
void element_range(const ElementProblem<T>& pb, const fast::Kernels* vec, int64_t begin,
                   int64_t end, double& acc, int64_t& valid) {
  const bool weighted = pb.weight.data != nullptr;
  auto scalar = [&](int64_t from, int64_t to) {
    for (int64_t i = from; i < to; ++i) {
      const T xi = pb.x[i];
      const T ti = pb.t[i];
      if (ignored_target(static_cast<double>(ti), pb.has_ignore, pb.ignore)) {
        if (pb.diff) pb.diff[i] = T(0);
        if (pb.loss) pb.loss[i] = T(0);
        continue;
      }
      double l, g;
      if (pb.op == ElementOp::logits) {
        T lt, gt;
        logit_terms(xi, ti, broadcast_at(pb.pos_weight, pb.base + i), lt, gt);
        l = static_cast<double>(lt);
        g = static_cast<double>(gt);
      } else {
        probability_terms(static_cast<double>(xi), static_cast<double>(ti), l, g);
      }
      if (weighted) {
        const double w = static_cast<double>(broadcast_at(pb.weight, pb.base + i));
        l = (w == 0.0 && std::isinf(l)) ? 0.0 : w * l;  // 0 * inf = 0 (the limit); NaN stays
        g *= w;
      }
      acc += l;
      ++valid;
      if (pb.loss) pb.loss[i] = static_cast<T>(l);
      if (pb.diff) pb.diff[i] = static_cast<T>(g * pb.grad_scale);
    }
  };
  if constexpr (std::is_same_v<T, float>) {
    if (vec) {
      for (int64_t i = begin; i < end;) {
        fast::SigmoidJob job;
        job.x = pb.x + i;
        job.t = pb.t + i;
        job.n = end - i;
        job.diff = pb.diff ? pb.diff + i : nullptr;
        job.loss = pb.loss ? pb.loss + i : nullptr;
        job.grad_scale = pb.grad_scale;
        double sum = 0.0;
        const int64_t done = vec->sigmoid(job, &sum);
        acc += sum;
        valid += done;
        i += done;
        const int64_t stop = std::min(end, i + fast::kLanes);
        scalar(i, stop);
        i = stop;
      }
      return;
    }
  }
  scalar(begin, end);
}

}  // namespace

template <typename T>
ElementSums elementwise_xent(const ElementProblem<T>& pb) {
  const int64_t n = pb.n;
  const int64_t n_blocks = (n + kElementBlock - 1) / kElementBlock;
  Partials<double> loss_part(n_blocks);
  Partials<int64_t> count_part(n_blocks);
  const fast::Kernels* vec = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    if (pb.op == ElementOp::logits && !pb.weight.data && !pb.pos_weight.data && !pb.has_ignore) {
      vec = fast::kernels();
    }
  }
  parallel_blocks(n_blocks, threads_for(n, n_blocks), [&](int64_t b) {
    const int64_t begin = b * kElementBlock;
    const int64_t end = std::min(n, begin + kElementBlock);
    double acc = 0.0;
    int64_t valid = 0;
    if constexpr (std::is_same_v<T, float>) {
      if (pb.half) {
        // 16-bit storage: the block is widened into float32 scratch and its outputs rounded back.
        const HalfElementIO& h = *pb.half;
        const int64_t len = end - begin;
        thread_local std::vector<float> buf;
        if (buf.size() < static_cast<size_t>(3 * kElementBlock)) buf.resize(3 * kElementBlock);
        float* xs = buf.data();
        float* ts = xs + kElementBlock;
        float* ls = ts + kElementBlock;
        widen16(h.format, h.x + begin, xs, len);
        widen16(h.format, h.t + begin, ts, len);
        ElementProblem<float> lp = pb;
        lp.half = nullptr;
        lp.x = xs;
        lp.t = ts;
        lp.n = len;
        lp.base = pb.base + begin;
        lp.diff = h.diff ? xs : nullptr;
        lp.loss = h.loss ? ls : nullptr;
        element_range(lp, vec, 0, len, acc, valid);
        if (h.diff) narrow16(h.format, xs, h.diff + begin, len);
        if (h.loss) narrow16(h.format, ls, h.loss + begin, len);
        loss_part[b] = acc;
        count_part[b] = valid;
        return;
      }
    }
    element_range(pb, vec, begin, end, acc, valid);
    loss_part[b] = acc;
    count_part[b] = valid;
  });
  ElementSums sums;
  sums.loss = loss_part.ordered_sum();
  sums.valid = count_part.ordered_sum();
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

template ElementSums elementwise_xent<float>(const ElementProblem<float>&);
template ElementSums elementwise_xent<double>(const ElementProblem<double>&);
template int64_t count_not_ignored<float>(const float*, int64_t, int64_t);
template int64_t count_not_ignored<double>(const double*, int64_t, int64_t);

int64_t count_not_ignored_half(const uint16_t* t, int64_t n, int64_t ignore, Bits16 format) {
  int64_t valid = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(format == Bits16::bf16 ? bf16_bits_to_float(t[i])
                                                                : half_bits_to_float(t[i]));
    valid += ignored_target(v, true, ignore) ? 0 : 1;
  }
  return valid;
}

}  // namespace xentkit::detail
