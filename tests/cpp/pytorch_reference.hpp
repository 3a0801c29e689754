#pragma once
// Double-precision references of the PyTorch- and TensorFlow-compatible functions, written from
// their formulas (losses.hpp): per-element losses, the reduced value and the gradient.
// Conventions of the references:
//   * every input is read in its stored type and converted to double;
//   * a term whose coefficient (weight, w*q', 1 - eps, eps/C, pos_weight*t, ...) is exactly 0
//     adds nothing, even where its logarithm is infinite;
//   * the labelled entry p[y] - 1 of a softmax gradient is written as -(sum of the other
//     probabilities), the same number without cancellation.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "xentkit/xentkit.hpp"

namespace xkref {

/// A class-weight pointer type that takes no part in template argument deduction (so nullptr
/// may be passed for it).
template <typename T>
struct WeightsOf {
  using type = T;
};
template <typename T>
using Weights = typename WeightsOf<T>::type;

inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// PyTorch's 1e-12 floor of p(1 - p), held as a float32 constant.
inline constexpr double kBceGradFloor = 9.999999960041972e-13;

struct Result {
  std::vector<double> loss;  // per element / per position
  double reduced = 0.0;      // what the function returns
  std::vector<double> grad;  // gradient of grad_output * reduced (none: of the sum)
  double denominator = 1.0;  // of the mean
};

/// coefficient * value, 0 when the coefficient is exactly 0 (whatever the value).
inline double term(double coefficient, double value) {
  return coefficient == 0.0 ? 0.0 : coefficient * value;
}

inline double sum_of(const std::vector<double>& v) {
  double s = 0.0;
  for (double e : v) s += e;
  return s;
}

/// The reduced value of per-element losses: mean (sum / denominator, NaN when it is 0), sum, or
/// for Reduction::none the sum.
inline double reduce(const std::vector<double>& loss, xentkit::Reduction reduction,
                     double denominator) {
  const double s = sum_of(loss);
  if (reduction != xentkit::Reduction::mean) return s;
  return denominator == 0.0 ? kNaN : s / denominator;
}

/// The factor of the per-element gradients: grad_output, divided by the denominator for mean.
inline double grad_scale(xentkit::Reduction reduction, double grad_output, double denominator) {
  if (reduction != xentkit::Reduction::mean) return grad_output;
  return grad_output / denominator;
}

template <typename T>
double broadcast_at(const xentkit::Broadcast<T>& b, int64_t i) {
  if (b.data == nullptr) return 1.0;
  return static_cast<double>(b.data[(i / b.stride) % b.period]);
}

inline double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

/// log(1 + exp(x)), without overflow.
inline double softplus(double x) {
  if (x > 0) return x + std::log1p(std::exp(-x));
  return std::log1p(std::exp(x));
}

// ---- binary cross entropy ---------------------------------------------------------------------

/// -w * (t * max(log p, -100) + (1 - t) * max(log(1 - p), -100)); gradient
/// w * (p - t) / max(p (1 - p), 1e-12f); mean divides by the element count.
template <typename T>
Result binary_cross_entropy(const std::vector<T>& p, const std::vector<T>& t,
                            xentkit::Broadcast<T> weight, xentkit::Reduction reduction,
                            double grad_output = 1.0) {
  const size_t n = p.size();
  Result r;
  r.loss.assign(n, 0.0);
  r.grad.assign(n, 0.0);
  r.denominator = double(n);
  for (size_t i = 0; i < n; ++i) {
    const double pi = p[i], ti = t[i], w = broadcast_at(weight, int64_t(i));
    const double log_p = std::max(std::log(pi), -100.0);
    const double log_q = std::max(std::log1p(-pi), -100.0);
    r.loss[i] = -w * (term(ti, log_p) + term(1.0 - ti, log_q));
  }
  r.reduced = reduce(r.loss, reduction, r.denominator);
  const double scale = grad_scale(reduction, grad_output, r.denominator);
  for (size_t i = 0; i < n; ++i) {
    const double pi = p[i], ti = t[i], w = broadcast_at(weight, int64_t(i));
    r.grad[i] = scale * w * (pi - ti) / std::max(pi * (1.0 - pi), kBceGradFloor);
  }
  return r;
}

/// Per element of binary_cross_entropy_with_logits: w * ((1 - t) x + L softplus(-x)) with
/// L = 1 + (pw - 1) t, written without cancellation of infinities: for x >= 0 the form above, for
/// x < 0 the equal -pw t x + L softplus(x).
inline double bce_logits_element(double x, double t, double w, double pw) {
  const double L = 1.0 + (pw - 1.0) * t;
  double l;
  if (std::isnan(x)) return kNaN;
  if (x >= 0) {
    l = term(1.0 - t, x) + term(L, softplus(-x));
  } else {
    l = term(-pw * t, x) + term(L, softplus(x));
  }
  return term(w, l);
}

inline double bce_logits_grad(double x, double t, double w, double pw) {
  const double L = 1.0 + (pw - 1.0) * t;
  return w * (L * sigmoid(x) - pw * t);
}

template <typename T>
Result binary_cross_entropy_with_logits(const std::vector<T>& x, const std::vector<T>& t,
                                        xentkit::Broadcast<T> weight,
                                        xentkit::Broadcast<T> pos_weight,
                                        xentkit::Reduction reduction, double grad_output = 1.0) {
  const size_t n = x.size();
  Result r;
  r.loss.assign(n, 0.0);
  r.grad.assign(n, 0.0);
  r.denominator = double(n);
  for (size_t i = 0; i < n; ++i) {
    r.loss[i] = bce_logits_element(x[i], t[i], broadcast_at(weight, int64_t(i)),
                                   broadcast_at(pos_weight, int64_t(i)));
  }
  r.reduced = reduce(r.loss, reduction, r.denominator);
  const double scale = grad_scale(reduction, grad_output, r.denominator);
  for (size_t i = 0; i < n; ++i) {
    r.grad[i] = scale * bce_logits_grad(x[i], t[i], broadcast_at(weight, int64_t(i)),
                                        broadcast_at(pos_weight, int64_t(i)));
  }
  return r;
}

// ---- softmax over (outer, C, inner) ------------------------------------------------------------

/// Index of element (o, c, s) of an (outer, C, inner) array.
inline size_t at(int64_t o, int64_t c, int64_t s, int64_t C, int64_t inner) {
  return size_t((o * C + c) * inner + s);
}

/// log_softmax and softmax of the position (o, s) over its C entries. A +inf maximum gives the
/// limit: the +inf entries share the mass equally.
template <typename T>
void softmax_position(const T* x, int64_t o, int64_t s, int64_t C, int64_t inner,
                      std::vector<double>& lp, std::vector<double>& p) {
  lp.assign(size_t(C), 0.0);
  p.assign(size_t(C), 0.0);
  double m = -kInf;
  bool nan = false;
  for (int64_t c = 0; c < C; ++c) {
    const double v = x[at(o, c, s, C, inner)];
    if (std::isnan(v)) nan = true;
    m = std::max(m, v);
  }
  if (nan || m == -kInf) {
    for (int64_t c = 0; c < C; ++c) lp[size_t(c)] = p[size_t(c)] = kNaN;
    return;
  }
  if (m == kInf) {
    double k = 0;
    for (int64_t c = 0; c < C; ++c) k += (double(x[at(o, c, s, C, inner)]) == kInf) ? 1 : 0;
    for (int64_t c = 0; c < C; ++c) {
      const bool top = double(x[at(o, c, s, C, inner)]) == kInf;
      lp[size_t(c)] = top ? -std::log(k) : -kInf;
      p[size_t(c)] = top ? 1.0 / k : 0.0;
    }
    return;
  }
  double z = 0.0;
  for (int64_t c = 0; c < C; ++c) z += std::exp(double(x[at(o, c, s, C, inner)]) - m);
  const double log_z = std::log(z);
  for (int64_t c = 0; c < C; ++c) {
    const double d = double(x[at(o, c, s, C, inner)]) - m;
    lp[size_t(c)] = d - log_z;
    p[size_t(c)] = std::exp(d) / z;
  }
}

template <typename T>
std::vector<double> log_softmax(const std::vector<T>& x, int64_t outer, int64_t C,
                                int64_t inner) {
  std::vector<double> out(x.size()), lp, p;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t s = 0; s < inner; ++s) {
      softmax_position(x.data(), o, s, C, inner, lp, p);
      for (int64_t c = 0; c < C; ++c) out[at(o, c, s, C, inner)] = lp[size_t(c)];
    }
  return out;
}

template <typename T>
std::vector<double> softmax(const std::vector<T>& x, int64_t outer, int64_t C, int64_t inner) {
  std::vector<double> out(x.size()), lp, p;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t s = 0; s < inner; ++s) {
      softmax_position(x.data(), o, s, C, inner, lp, p);
      for (int64_t c = 0; c < C; ++c) out[at(o, c, s, C, inner)] = p[size_t(c)];
    }
  return out;
}

/// p - onehot(y) with the labelled entry written as -(sum of the other probabilities).
inline std::vector<double> p_minus_onehot(const std::vector<double>& p, int64_t y) {
  std::vector<double> d(p);
  double others = 0.0;
  for (size_t c = 0; c < p.size(); ++c)
    if (int64_t(c) != y) others += p[c];
  d[size_t(y)] = -others;
  return d;
}

// ---- cross entropy and nll_loss with class indices ----------------------------------------------

/// Class index of a stored target, or -1 when it equals ignore_index. Out-of-range targets are
/// not expected here.
template <typename L>
int64_t class_of(L raw, int64_t ignore_index) {
  const int64_t v = static_cast<int64_t>(raw);
  if constexpr (std::is_unsigned_v<L>) {
    if (ignore_index >= 0 && static_cast<uint64_t>(raw) == static_cast<uint64_t>(ignore_index))
      return -1;
  } else {
    if (v == ignore_index) return -1;
  }
  return v;
}

/// Per position: (1 - eps) w[y] (-lp[y]) + (eps / C) sum_c w[c] (-lp[c]); mean divides by the
/// sum of w[y] over non-ignored positions. Gradient per non-ignored position:
/// scale * [(1 - eps) w[y] (p - e_y) + (eps / C) (W p - w)].
template <typename T, typename L>
Result cross_entropy(const std::vector<T>& x, const std::vector<L>& target, int64_t outer,
                     int64_t C, int64_t inner, const Weights<T>* weight,
                     const xentkit::CrossEntropyOptions& opt) {
  const double eps = std::max(opt.label_smoothing, 0.0);
  auto w = [&](int64_t c) { return weight ? double(weight[c]) : 1.0; };
  double W = 0.0;
  for (int64_t c = 0; c < C; ++c) W += w(c);
  Result r;
  r.loss.assign(size_t(outer * inner), 0.0);
  r.grad.assign(x.size(), 0.0);
  std::vector<int64_t> y(target.size());
  double den = 0.0;
  for (size_t i = 0; i < target.size(); ++i) {
    y[i] = class_of(target[i], opt.ignore_index);
    if (y[i] >= 0) den += w(y[i]);
  }
  r.denominator = den;
  const double scale = grad_scale(opt.reduction, opt.grad_output, den);
  std::vector<double> lp, p;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t s = 0; s < inner; ++s) {
      const int64_t label = y[size_t(o * inner + s)];
      if (label < 0) continue;
      softmax_position(x.data(), o, s, C, inner, lp, p);
      double smooth = 0.0;
      for (int64_t c = 0; c < C; ++c) smooth += term(w(c), -lp[size_t(c)]);
      r.loss[size_t(o * inner + s)] =
          term((1.0 - eps) * w(label), -lp[size_t(label)]) + term(eps / double(C), smooth);
      const auto d = p_minus_onehot(p, label);
      for (int64_t c = 0; c < C; ++c) {
        const double g = (1.0 - eps) * w(label) * d[size_t(c)] +
                         (eps / double(C)) * (W * p[size_t(c)] - w(c));
        r.grad[at(o, c, s, C, inner)] = scale * g;
      }
    }
  r.reduced = reduce(r.loss, opt.reduction, den);
  return r;
}

/// Probability targets: q' = (1 - eps) q + eps / C, per position -sum_c w[c] q'[c] lp[c]; mean
/// divides by outer*inner; gradient scale * ((sum_c w q') p - w q').
template <typename T>
Result cross_entropy_probabilities(const std::vector<T>& x, const std::vector<T>& q,
                                   int64_t outer, int64_t C, int64_t inner,
                                   const Weights<T>* weight,
                                   const xentkit::CrossEntropyOptions& opt) {
  const double eps = std::max(opt.label_smoothing, 0.0);
  auto w = [&](int64_t c) { return weight ? double(weight[c]) : 1.0; };
  Result r;
  r.loss.assign(size_t(outer * inner), 0.0);
  r.grad.assign(x.size(), 0.0);
  r.denominator = double(outer) * double(inner);
  const double scale = grad_scale(opt.reduction, opt.grad_output, r.denominator);
  std::vector<double> lp, p;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t s = 0; s < inner; ++s) {
      softmax_position(x.data(), o, s, C, inner, lp, p);
      std::vector<double> wq(static_cast<size_t>(C));
      double sum_wq = 0.0, l = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const double qc = (1.0 - eps) * double(q[at(o, c, s, C, inner)]) + eps / double(C);
        wq[size_t(c)] = w(c) * qc;
        sum_wq += wq[size_t(c)];
        l += term(wq[size_t(c)], -lp[size_t(c)]);
      }
      r.loss[size_t(o * inner + s)] = l;
      for (int64_t c = 0; c < C; ++c)
        r.grad[at(o, c, s, C, inner)] = scale * (sum_wq * p[size_t(c)] - wq[size_t(c)]);
    }
  r.reduced = reduce(r.loss, opt.reduction, r.denominator);
  return r;
}

/// -w[y] input[y] per non-ignored position; gradient -scale * w[y] at [y].
template <typename T, typename L>
Result nll_loss(const std::vector<T>& x, const std::vector<L>& target, int64_t outer, int64_t C,
                int64_t inner, const Weights<T>* weight, const xentkit::NllLossOptions& opt) {
  auto w = [&](int64_t c) { return weight ? double(weight[c]) : 1.0; };
  Result r;
  r.loss.assign(size_t(outer * inner), 0.0);
  r.grad.assign(x.size(), 0.0);
  std::vector<int64_t> y(target.size());
  double den = 0.0;
  for (size_t i = 0; i < target.size(); ++i) {
    y[i] = class_of(target[i], opt.ignore_index);
    if (y[i] >= 0) den += w(y[i]);
  }
  r.denominator = den;
  const double scale = grad_scale(opt.reduction, opt.grad_output, den);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t s = 0; s < inner; ++s) {
      const int64_t label = y[size_t(o * inner + s)];
      if (label < 0) continue;
      r.loss[size_t(o * inner + s)] = -w(label) * double(x[at(o, label, s, C, inner)]);
      r.grad[at(o, label, s, C, inner)] = -scale * w(label);
    }
  r.reduced = reduce(r.loss, opt.reduction, den);
  return r;
}

// ---- TensorFlow ---------------------------------------------------------------------------------

/// max(x, 0) - x z + log1p(exp(-|x|)) per element, with the limits at infinite x; gradient
/// sigmoid(x) - z.
template <typename T>
Result tf_sigmoid(const std::vector<T>& z, const std::vector<T>& x) {
  Result r;
  r.loss.assign(x.size(), 0.0);
  r.grad.assign(x.size(), 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    r.loss[i] = bce_logits_element(x[i], z[i], 1.0, 1.0);
    r.grad[i] = sigmoid(double(x[i])) - double(z[i]);
  }
  r.reduced = sum_of(r.loss);
  return r;
}

/// -sum_c z[c] lp[c] per position over (outer, C, inner); gradient rowsum(z) p - z.
template <typename T>
Result tf_softmax(const std::vector<T>& z, const std::vector<T>& x, int64_t outer, int64_t C,
                  int64_t inner) {
  Result r;
  r.loss.assign(size_t(outer * inner), 0.0);
  r.grad.assign(x.size(), 0.0);
  std::vector<double> lp, p;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t s = 0; s < inner; ++s) {
      softmax_position(x.data(), o, s, C, inner, lp, p);
      double zs = 0.0, l = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const double zc = z[at(o, c, s, C, inner)];
        zs += zc;
        l += term(zc, -lp[size_t(c)]);
      }
      r.loss[size_t(o * inner + s)] = l;
      for (int64_t c = 0; c < C; ++c)
        r.grad[at(o, c, s, C, inner)] = zs * p[size_t(c)] - double(z[at(o, c, s, C, inner)]);
    }
  r.reduced = sum_of(r.loss);
  return r;
}

/// -lp[label] per row of C logits; gradient p - onehot(label).
template <typename T, typename L>
Result tf_sparse(const std::vector<L>& labels, const std::vector<T>& x, int64_t rows, int64_t C) {
  Result r;
  r.loss.assign(size_t(rows), 0.0);
  r.grad.assign(x.size(), 0.0);
  std::vector<double> lp, p;
  for (int64_t o = 0; o < rows; ++o) {
    const int64_t y = static_cast<int64_t>(labels[size_t(o)]);
    softmax_position(x.data(), o, 0, C, 1, lp, p);
    r.loss[size_t(o)] = -lp[size_t(y)];
    const auto d = p_minus_onehot(p, y);
    for (int64_t c = 0; c < C; ++c) r.grad[at(o, c, 0, C, 1)] = d[size_t(c)];
  }
  r.reduced = sum_of(r.loss);
  return r;
}

// ---- tolerances ---------------------------------------------------------------------------------

/// Comparison of the library against the references: |got - want| <= rtol |want| + atol * scale,
/// where scale is the magnitude of the compared quantity (e.g. of the logits for a loss).
template <typename T>
struct Acc;
template <>
struct Acc<float> {
  static constexpr double rtol = 1e-5;
  static constexpr double atol = 2e-6;
};
template <>
struct Acc<double> {
  static constexpr double rtol = 1e-12;
  static constexpr double atol = 1e-14;
};

/// |got - want| <= rtol |want| + atol elementwise, where equal values (infinities included) and
/// NaN against NaN also match. Reports the first few mismatches.
template <typename T>
::testing::AssertionResult close(const std::vector<T>& got, const std::vector<double>& want,
                                 double rtol, double atol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << "size " << got.size() << ", want " << want.size();
  }
  size_t bad = 0;
  std::ostringstream os;
  os.precision(17);
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = static_cast<double>(got[i]), w = want[i];
    const bool ok = g == w || (std::isnan(g) && std::isnan(w)) ||
                    std::fabs(g - w) <= rtol * std::fabs(w) + atol;
    if (ok) continue;
    if (bad < 6) os << "\n  [" << i << "] got " << g << ", want " << w;
    ++bad;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << want.size() << " values differ"
                                       << os.str();
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double e : v)
    if (std::isfinite(e)) m = std::max(m, std::fabs(e));
  return m;
}

/// Tolerance of a reduced value given per-element errors of at most rtol |l_i| + atol * scale:
/// their sum, divided by the denominator for a mean, plus the rounding of the result.
template <typename T>
double reduced_tolerance(const Result& want, xentkit::Reduction reduction, double scale) {
  double abs_sum = 0.0;
  for (double e : want.loss) abs_sum += std::fabs(e);
  double tol = Acc<T>::rtol * abs_sum + Acc<T>::atol * scale * double(want.loss.size());
  if (reduction == xentkit::Reduction::mean) tol /= std::fabs(want.denominator);
  return tol + Acc<T>::rtol * std::fabs(want.reduced);
}

}  // namespace xkref
