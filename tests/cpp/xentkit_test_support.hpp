#pragma once
// Shared helpers of the C++ tests: random inputs, double-precision references written from the
// formulas of the contract, a finite-difference gradient checker and comparison helpers.

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "xentkit/xentkit.hpp"

namespace xktest {

using FloatTypes = ::testing::Types<float, double>;

/// Tolerances per value type.
///   h, threshold: the finite-difference step and the gradient checker's threshold;
///   rtol, atol: comparisons of the library against the double references (atol is relative to
///               the scale of the compared quantity, e.g. loss_weight / normalizer for diffs).
template <typename T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double h = 1e-2;
  static constexpr double threshold = 1e-2;
  static constexpr double rtol = 2e-6;
  static constexpr double atol = 1e-6;
};
template <>
struct Tol<double> {
  static constexpr double h = 1e-6;
  static constexpr double threshold = 1e-6;
  static constexpr double rtol = 1e-12;
  static constexpr double atol = 1e-14;
};

/// -log(FLT_MIN), the cap of a softmax position's loss (87.3365...).
inline double flt_min_cap() { return -std::log(static_cast<double>(FLT_MIN)); }

inline constexpr xentkit::Normalization kAllModes[] = {
    xentkit::Normalization::full, xentkit::Normalization::valid,
    xentkit::Normalization::batch_size, xentkit::Normalization::none};

// ---- random inputs -------------------------------------------------------------------------

class Rng {
 public:
  explicit Rng(uint64_t seed = 1701) : gen_(seed) {}

  template <typename T>
  std::vector<T> normal(size_t n, double mean = 0.0, double stddev = 1.0) {
    std::normal_distribution<double> d(mean, stddev);
    std::vector<T> v(n);
    for (auto& e : v) e = static_cast<T>(d(gen_));
    return v;
  }

  template <typename T>
  std::vector<T> uniform(size_t n, double lo = 0.0, double hi = 1.0) {
    std::uniform_real_distribution<double> d(lo, hi);
    std::vector<T> v(n);
    for (auto& e : v) e = static_cast<T>(d(gen_));
    return v;
  }

  /// Integers in [0, modulus), stored as L.
  template <typename L>
  std::vector<L> classes(size_t n, int64_t modulus) {
    std::uniform_int_distribution<int64_t> d(0, modulus - 1);
    std::vector<L> v(n);
    for (auto& e : v) e = static_cast<L>(d(gen_));
    return v;
  }

  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// ---- references ----------------------------------------------------------------------------

/// max(1, Z): Z = outer*inner (full), valid (valid), outer (batch_size), 1 (none).
inline double reference_normalizer(xentkit::Normalization mode, int64_t outer, int64_t inner,
                                   int64_t valid) {
  double z = 1.0;
  if (mode == xentkit::Normalization::full) z = double(outer) * double(inner);
  if (mode == xentkit::Normalization::valid) z = double(valid);
  if (mode == xentkit::Normalization::batch_size) z = double(outer);
  return z < 1.0 ? 1.0 : z;
}

/// A stored label truncated toward zero (only called on labels that have an int64 value).
template <typename L>
int64_t truncated(L raw) {
  if constexpr (std::is_floating_point_v<L>) {
    return static_cast<int64_t>(std::trunc(static_cast<double>(raw)));
  } else {
    return static_cast<int64_t>(raw);
  }
}

struct Reference {
  double loss = 0.0;
  std::vector<double> diff;
  std::vector<double> prob;
  int64_t valid = 0;
  double normalizer = 1.0;
};

/// Caffe's SigmoidCrossEntropyLoss in double: l = max(x,0) - x*t + log1p(exp(-|x|)),
/// diff = loss_weight * (sigmoid(x) - t) / max(1, Z), 0 where trunc(t) == ignore_label.
template <typename T>
Reference sigmoid_reference(const std::vector<T>& x, const std::vector<T>& t, int64_t outer,
                            const xentkit::SigmoidCrossEntropyLossOptions& opt) {
  const size_t n = x.size();
  const int64_t inner = outer == 0 ? 0 : int64_t(n) / outer;
  std::vector<bool> ignored(n, false);
  Reference r;
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double xi = x[i], ti = t[i];
    ignored[i] = opt.ignore_label.has_value() && truncated(ti) == *opt.ignore_label;
    if (ignored[i]) continue;
    sum += std::max(xi, 0.0) - xi * ti + std::log1p(std::exp(-std::fabs(xi)));
    ++r.valid;
  }
  r.normalizer = reference_normalizer(opt.normalization, outer, inner, r.valid);
  r.loss = sum / r.normalizer;
  r.diff.assign(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    if (ignored[i]) continue;
    const double sig = 1.0 / (1.0 + std::exp(-double(x[i])));
    r.diff[i] = opt.loss_weight * (sig - double(t[i])) / r.normalizer;
  }
  return r;
}

/// Caffe's SoftmaxWithLoss in double over an (outer, C, inner) layout:
/// per valid position min(logsumexp(x) - x[y], -log(FLT_MIN)); diff = loss_weight * (p - onehot)
/// / max(1, Z), all channels 0 at ignored positions. The labelled entry p[y] - 1 is written as
/// -(sum of the other probabilities), which is the same number without cancellation.
template <typename T, typename L>
Reference softmax_reference(const std::vector<T>& x, const std::vector<L>& labels, int64_t outer,
                            int64_t C, int64_t inner,
                            const xentkit::SoftmaxWithLossOptions& opt) {
  Reference r;
  r.prob.assign(x.size(), 0.0);
  r.diff.assign(x.size(), 0.0);
  std::vector<int64_t> y(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    y[i] = truncated(labels[i]);
    const bool ign = opt.ignore_label.has_value() && y[i] == *opt.ignore_label;
    if (ign) y[i] = -1;
    else ++r.valid;
  }
  r.normalizer = reference_normalizer(opt.normalization, outer, inner, r.valid);
  const double scale = opt.loss_weight / r.normalizer;
  double sum_loss = 0.0;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t s = 0; s < inner; ++s) {
      auto at = [&](int64_t c) { return size_t(o * C * inner + c * inner + s); };
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < C; ++c) m = std::max(m, double(x[at(c)]));
      double z = 0.0;
      for (int64_t c = 0; c < C; ++c) z += std::exp(double(x[at(c)]) - m);
      for (int64_t c = 0; c < C; ++c) r.prob[at(c)] = std::exp(double(x[at(c)]) - m) / z;
      const int64_t label = y[size_t(o * inner + s)];
      if (label < 0) continue;
      const double l = std::log(z) - (double(x[at(label)]) - m);
      sum_loss += std::min(l, flt_min_cap());
      double others = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        if (c == label) continue;
        others += r.prob[at(c)];
        r.diff[at(c)] = scale * r.prob[at(c)];
      }
      r.diff[at(label)] = -scale * others;
    }
  }
  r.loss = sum_loss / r.normalizer;
  return r;
}

// ---- comparisons ---------------------------------------------------------------------------

/// |got - want| <= rtol*|want| + atol, elementwise; reports the first few mismatches.
template <typename T>
::testing::AssertionResult all_close(const T* got, const std::vector<double>& want, double rtol,
                                     double atol) {
  size_t bad = 0;
  std::ostringstream os;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    if (!(std::fabs(g - want[i]) <= rtol * std::fabs(want[i]) + atol)) {
      if (bad < 6) os << "\n  [" << i << "] got " << g << ", want " << want[i];
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  os.precision(17);
  return ::testing::AssertionFailure() << bad << " of " << want.size() << " values differ"
                                       << os.str();
}

template <typename T>
::testing::AssertionResult all_close(const std::vector<T>& got, const std::vector<double>& want,
                                     double rtol, double atol) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size mismatch";
  return all_close(got.data(), want, rtol, atol);
}

inline ::testing::AssertionResult near_rel(double got, double want, double rtol, double atol) {
  if (std::fabs(got - want) <= rtol * std::fabs(want) + atol) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os.precision(17);
  os << "got " << got << ", want " << want << " (|diff| " << std::fabs(got - want) << " > "
     << rtol * std::fabs(want) + atol << ")";
  return ::testing::AssertionFailure() << os.str();
}

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <typename T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  return a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <typename T>
bool all_zero(const std::vector<T>& v) {
  return std::all_of(v.begin(), v.end(), [](T e) { return e == T(0); });
}

/// A value no kernel writes, to detect writes into buffers that must stay untouched.
template <typename T>
T sentinel() {
  return static_cast<T>(-12345.25);
}

template <typename T>
bool untouched(const std::vector<T>& v) {
  return std::all_of(v.begin(), v.end(), [](T e) { return same_bits(e, sentinel<T>()); });
}

// ---- finite-difference gradient checker -----------------------------------------------------

/// Central differences on `loss_of(x)` (evaluated in double): for every element k,
/// estimate = loss_weight * (f(x + h e_k) - f(x - h e_k)) / (x_k+ - x_k-), where x_k+- are the
/// perturbed values as stored in T. Passes when
/// |analytic - estimate| <= threshold * max(|analytic|, |estimate|, 1) for every k.
template <typename T, typename LossFn>
::testing::AssertionResult check_gradient(std::vector<T> x, const std::vector<T>& analytic,
                                          double loss_weight, LossFn&& loss_of, double h,
                                          double threshold) {
  if (analytic.size() != x.size()) {
    return ::testing::AssertionFailure() << "gradient of " << analytic.size()
                                         << " values for " << x.size() << " inputs";
  }
  size_t bad = 0;
  std::ostringstream os;
  os.precision(12);
  for (size_t k = 0; k < x.size(); ++k) {
    const T x0 = x[k];
    const T xp = static_cast<T>(static_cast<double>(x0) + h);
    const T xm = static_cast<T>(static_cast<double>(x0) - h);
    x[k] = xp;
    const double fp = static_cast<double>(loss_of(x));
    x[k] = xm;
    const double fm = static_cast<double>(loss_of(x));
    x[k] = x0;
    const double estimate =
        loss_weight * (fp - fm) / (static_cast<double>(xp) - static_cast<double>(xm));
    const double a = static_cast<double>(analytic[k]);
    const double scale = std::max({std::fabs(a), std::fabs(estimate), 1.0});
    if (!(std::fabs(a - estimate) <= threshold * scale)) {
      if (bad < 6) os << "\n  [" << k << "] analytic " << a << ", estimate " << estimate;
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess() << x.size() << " values checked";
  return ::testing::AssertionFailure() << bad << " of " << x.size()
                                       << " gradient values disagree with the estimate"
                                       << os.str();
}

// ---- thin wrappers over the library -----------------------------------------------------------

template <typename T>
struct SigmoidRun {
  T loss;
  std::vector<T> diff;
};

template <typename T>
SigmoidRun<T> run_sigmoid(const std::vector<T>& x, const std::vector<T>& t, int64_t outer,
                          const xentkit::SigmoidCrossEntropyLossOptions& opt) {
  SigmoidRun<T> r;
  r.diff.assign(x.size(), sentinel<T>());
  r.loss = xentkit::sigmoid_cross_entropy_loss<T>(x.data(), t.data(), outer,
                                                  static_cast<int64_t>(x.size()), r.diff.data(),
                                                  opt);
  return r;
}

template <typename T>
struct SoftmaxRun {
  T loss;
  std::vector<T> diff;
  std::vector<T> prob;
};

template <typename T, typename L>
SoftmaxRun<T> run_softmax(const std::vector<T>& x, const std::vector<L>& labels, int64_t outer,
                          int64_t C, int64_t inner, const xentkit::SoftmaxWithLossOptions& opt) {
  SoftmaxRun<T> r;
  r.diff.assign(x.size(), sentinel<T>());
  r.prob.assign(x.size(), sentinel<T>());
  r.loss = xentkit::softmax_with_loss<T, L>(x.data(), labels.data(), outer, C, inner,
                                            r.diff.data(), r.prob.data(), opt);
  return r;
}

/// Restores the library's thread count at the end of a test.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(xentkit::get_num_threads()) {}
  ~ThreadCountGuard() { xentkit::set_num_threads(saved_); }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  int saved_;
};

}  // namespace xktest
