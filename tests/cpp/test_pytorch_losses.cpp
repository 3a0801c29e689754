// The PyTorch-compatible functions: binary_cross_entropy, binary_cross_entropy_with_logits,
// cross_entropy (class indices and probabilities), nll_loss, log_softmax and softmax. Each is
// compared with its double-precision reference over layouts, options and reductions, with finite
// differences of its gradient, with PyTorch's reference numbers, and on its edge cases (clamps,
// infinite logits, empty means, label errors, aliasing, thread counts).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pytorch_reference.hpp"
#include "xentkit/detail/parallel.hpp"
#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::BinaryCrossEntropyOptions;
using xentkit::Broadcast;
using xentkit::CrossEntropyOptions;
using xentkit::label_error;
using xentkit::NllLossOptions;
using xentkit::Reduction;
using xentkit::value_error;
using xkref::Acc;
using xkref::Weights;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr Reduction kReductions[] = {Reduction::none, Reduction::mean, Reduction::sum};

std::string describe(Reduction r) { return xentkit::reduction_name(r); }

/// What a call returned and wrote.
template <typename T>
struct Call {
  T value;
  std::vector<T> loss;
  std::vector<T> grad;
};

/// Checks a run against the reference: the per-element losses, the returned value and the
/// gradient. loss_scale: the magnitude behind the per-element losses (e.g. max |logit| times the
/// largest weight); the gradient tolerance is relative to its largest entry.
template <typename T>
void expect_matches(const Call<T>& got, const xkref::Result& want, Reduction reduction,
                    double loss_scale) {
  const double rtol = Acc<T>::rtol, atol = Acc<T>::atol;
  EXPECT_TRUE(xkref::close(got.loss, want.loss, rtol, atol * loss_scale)) << "per-element losses";
  EXPECT_TRUE(near_rel(got.value, want.reduced, 0.0,
                       xkref::reduced_tolerance<T>(want, reduction, loss_scale)))
      << "returned value";
  EXPECT_TRUE(xkref::close(got.grad, want.grad, rtol, atol * std::max(xkref::max_abs(want.grad),
                                                                   1e-300)))
      << "gradient";
}

template <typename T>
T max_abs_of(const std::vector<T>& v) {
  T m = 0;
  for (T e : v) m = std::max<T>(m, std::fabs(e));
  return m;
}

// ================================================================================================
// binary_cross_entropy
// ================================================================================================

template <typename T>
Call<T> run_bce(const std::vector<T>& p, const std::vector<T>& t, Broadcast<T> w,
               const BinaryCrossEntropyOptions& opt) {
  Call<T> r;
  r.loss.assign(p.size(), sentinel<T>());
  r.grad.assign(p.size(), sentinel<T>());
  r.value = xentkit::binary_cross_entropy<T>(p.data(), t.data(), int64_t(p.size()), w,
                                             r.loss.data(), r.grad.data(), opt);
  return r;
}

/// Weight layouts over an (N, C, S) array: absent, a scalar, (C, 1) over the middle axis,
/// (S,) over the last axis, (N, 1, 1) over the first, and the array's own shape.
template <typename T>
struct WeightLayouts {
  static constexpr int64_t N = 3, C = 4, S = 5, count = N * C * S;
  std::vector<T> scalar, middle, last, first, full;
  explicit WeightLayouts(Rng& rng, double lo = 0.2, double hi = 2.0)
      : scalar(rng.uniform<T>(1, lo, hi)),
        middle(rng.uniform<T>(size_t(C), lo, hi)),
        last(rng.uniform<T>(size_t(S), lo, hi)),
        first(rng.uniform<T>(size_t(N), lo, hi)),
        full(rng.uniform<T>(size_t(count), lo, hi)) {}
  std::vector<std::pair<std::string, Broadcast<T>>> all() const {
    return {{"absent", Broadcast<T>{}},
            {"scalar", Broadcast<T>{scalar.data(), 1, 1}},
            {"(C,1)", Broadcast<T>{middle.data(), S, C}},
            {"(S,)", Broadcast<T>{last.data(), 1, S}},
            {"(N,1,1)", Broadcast<T>{first.data(), C * S, N}},
            {"full", Broadcast<T>{full.data(), 1, count}}};
  }
};

template <typename T>
class Bce : public ::testing::Test {
 protected:
  Rng rng_{2024};
};
TYPED_TEST_SUITE(Bce, FloatTypes);

TYPED_TEST(Bce, MatchesReferenceForEveryWeightLayoutAndReduction) {
  using T = TypeParam;
  const WeightLayouts<T> layouts(this->rng_);
  const int64_t n = WeightLayouts<T>::count;
  const auto p = this->rng_.template uniform<T>(size_t(n), 0.02, 0.98);
  auto t = this->rng_.template uniform<T>(size_t(n));
  for (size_t i = 0; i < t.size(); i += 3) t[i] = T(i % 2);  // some hard 0/1 targets
  int k = 0;
  for (const auto& [name, w] : layouts.all()) {
    for (const Reduction red : kReductions) {
      SCOPED_TRACE(name + " " + describe(red));
      BinaryCrossEntropyOptions opt;
      opt.reduction = red;
      opt.grad_output = (k++ % 2) ? 1.0 : -0.75;
      const auto got = run_bce(p, t, w, opt);
      const auto want = xkref::binary_cross_entropy(p, t, w, red, opt.grad_output);
      expect_matches(got, want, red, 2.0 * 4.0);
      if (red == Reduction::mean) {
        EXPECT_EQ(want.denominator, double(n));
      }
    }
  }
}

TYPED_TEST(Bce, ReferenceNumbers) {
  // p = [[0.6, 0.1], [0.3, 0.8]], y = [[0, 1], [1, 0]] (PyTorch 2.13, float64).
  using T = TypeParam;
  const std::vector<T> p = {T(0.6), T(0.1), T(0.3), T(0.8)};
  const std::vector<T> y = {0, 1, 1, 0};
  const double rtol = std::is_same_v<T, float> ? 2e-6 : 1e-12;
  BinaryCrossEntropyOptions opt;
  auto mean = run_bce(p, y, {}, opt);
  EXPECT_TRUE(near_rel(mean.value, 1.5080716354070594, rtol, 0.0));
  EXPECT_TRUE(xkref::close(mean.loss,
                        {0.916290731874155, 2.3025850929940455, 1.2039728043259361,
                         1.6094379124341005},
                        rtol, 0.0));
  EXPECT_TRUE(xkref::close(mean.grad,
                        {0.625, -2.4999999999999996, -0.8333333333333333, 1.2500000000000002},
                        rtol, 0.0));
  opt.reduction = Reduction::sum;
  EXPECT_TRUE(near_rel(run_bce(p, y, {}, opt).value, 6.032286541628237, rtol, 0.0));
  // weight [1, 2] scales the columns; the mean still divides by 4. PyTorch's float32 result
  // 2.4860773087 is the float nearest to sum(w l) / 4 of the float64 losses above.
  const std::vector<T> w = {1, 2};
  opt.reduction = Reduction::mean;
  const double weighted = (0.916290731874155 + 2 * 2.3025850929940455 + 1.2039728043259361 +
                           2 * 1.6094379124341005) / 4;
  const T got = run_bce(p, y, {w.data(), 1, 2}, opt).value;
  EXPECT_TRUE(near_rel(got, weighted, rtol, 0.0));
  EXPECT_TRUE(near_rel(got, 2.4860773087, 1e-7, 0.0));
}

TYPED_TEST(Bce, LogsAreClampedAtMinus100) {
  using T = TypeParam;
  // A p whose log lies below -100 in T, and (float only) a tiny p whose log is above it.
  const T below = std::is_same_v<T, float> ? T(0) : T(1e-50);
  const std::vector<T> p = {0, 1, 0, 1, 0, 1, below, T(1) - below};
  const std::vector<T> t = {1, 0, 0, 1, T(0.25), T(0.25), 1, 0};
  const std::vector<double> want = {100, 100, 0, 0, 25, 75, 100, 100};
  BinaryCrossEntropyOptions opt;
  opt.reduction = Reduction::none;
  const auto got = run_bce(p, t, {}, opt);
  EXPECT_TRUE(xkref::close(got.loss, want, 1e-15, 0.0));
  EXPECT_EQ(got.value, T(500));
  for (T v : got.loss) EXPECT_FALSE(std::isnan(v));
  if constexpr (std::is_same_v<T, float>) {
    // 1e-40f is subnormal; its log (-92.1...) is above the clamp.
    const std::vector<T> tiny = {T(1e-40)}, one = {1};
    const auto r = run_bce(tiny, one, {}, opt);
    EXPECT_TRUE(near_rel(r.value, -std::log(double(T(1e-40))), 2e-6, 0.0));
    EXPECT_LT(r.value, T(100));
  }
}

TYPED_TEST(Bce, GradientDenominatorIsFloored) {
  using T = TypeParam;
  // p (1 - p) is floored at 1e-12 held as a float32 constant: at p = 0, y = 1 the gradient is
  // -1/9.999999960041972e-13 = -1000000003995.8029, not -inf; saturated correct predictions
  // get exactly 0.
  const std::vector<T> p = {0, 1, 0, 1, 0};
  const std::vector<T> t = {1, 0, 0, 1, T(0.5)};
  BinaryCrossEntropyOptions opt;
  opt.reduction = Reduction::sum;
  opt.grad_output = 2.0;
  const auto got = run_bce(p, t, {}, opt);
  const double g = 1.0 / xkref::kBceGradFloor;
  EXPECT_TRUE(xkref::close(got.grad, {-2.0 * g, 2.0 * g, 0.0, 0.0, -1.0 * g}, 2e-7, 0.0));
  // PyTorch's float64 value; float holds the nearest float of each step.
  EXPECT_TRUE(near_rel(got.grad[0], -2 * 1000000003995.8029,
                       std::is_same_v<T, double> ? 1e-14 : 2e-7, 0.0));
  EXPECT_EQ(got.grad[2], T(0));
  EXPECT_EQ(got.grad[3], T(0));
  // The mean divides by the count.
  opt.reduction = Reduction::mean;
  opt.grad_output = 1.0;
  const auto mean = run_bce(p, t, {}, opt);
  EXPECT_TRUE(near_rel(mean.grad[0], -g / 5.0, 2e-7, 0.0));
}

TYPED_TEST(Bce, ValuesOutsideTheUnitIntervalThrowAndWriteNothing) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  const T above = std::nextafter(T(1), T(2));
  const T below = -std::numeric_limits<T>::denorm_min();
  const size_t n = 1000;
  const auto p0 = this->rng_.template uniform<T>(n, 0.1, 0.9);
  const auto t0 = this->rng_.template uniform<T>(n);
  for (const bool in_target : {false, true}) {
    for (const T bad : {above, below, nan, inf, -inf, T(1.5), T(-0.25)}) {
      for (const size_t where : {size_t(0), n / 2, n - 1}) {
        for (const Reduction red : kReductions) {
          SCOPED_TRACE(std::string(in_target ? "target " : "input ") + std::to_string(bad) +
                       " at " + std::to_string(where) + " " + describe(red));
          auto p = p0;
          auto t = t0;
          (in_target ? t : p)[where] = bad;
          std::vector<T> loss(n, sentinel<T>()), grad(n, sentinel<T>());
          BinaryCrossEntropyOptions opt;
          opt.reduction = red;
          EXPECT_THROW(xentkit::binary_cross_entropy<T>(p.data(), t.data(), int64_t(n), {},
                                                        loss.data(), grad.data(), opt),
                       value_error);
          EXPECT_TRUE(untouched(loss));
          EXPECT_TRUE(untouched(grad));
        }
      }
    }
  }
  // The bounds themselves (and -0) are valid.
  const std::vector<T> p = {0, 1, T(-0.0), T(0.5)};
  const std::vector<T> t = {0, 1, T(-0.0), 1};
  EXPECT_NO_THROW(run_bce(p, t, {}, {}));
}

TYPED_TEST(Bce, MeanOverNothingIsNaN) {
  using T = TypeParam;
  const std::vector<T> none;
  BinaryCrossEntropyOptions opt;
  EXPECT_TRUE(std::isnan(xentkit::binary_cross_entropy<T>(none.data(), none.data(), 0, {},
                                                          nullptr, nullptr, opt)));
  opt.reduction = Reduction::sum;
  EXPECT_EQ(xentkit::binary_cross_entropy<T>(none.data(), none.data(), 0, {}, nullptr, nullptr,
                                             opt),
            T(0));
  opt.reduction = Reduction::none;
  EXPECT_EQ(xentkit::binary_cross_entropy<T>(none.data(), none.data(), 0, {}, nullptr, nullptr,
                                             opt),
            T(0));
}

TYPED_TEST(Bce, OutputsAreOptionalAndGradMayAliasInput) {
  using T = TypeParam;
  const auto p = this->rng_.template uniform<T>(50, 0.05, 0.95);
  const auto t = this->rng_.template uniform<T>(50);
  const auto w = this->rng_.template uniform<T>(5, 0.5, 1.5);
  BinaryCrossEntropyOptions opt;
  opt.grad_output = 3.0;
  const auto full = run_bce(p, t, {w.data(), 1, 5}, opt);
  const T bare = xentkit::binary_cross_entropy<T>(p.data(), t.data(), 50, {w.data(), 1, 5},
                                                  nullptr, nullptr, opt);
  EXPECT_TRUE(same_bits(bare, full.value));
  auto inplace = p;
  const T v = xentkit::binary_cross_entropy<T>(inplace.data(), t.data(), 50, {w.data(), 1, 5},
                                               nullptr, inplace.data(), opt);
  EXPECT_TRUE(same_bits(v, full.value));
  EXPECT_TRUE(same_bytes(inplace, full.grad));
}

TEST(BceGradient, FiniteDifferences) {
  Rng rng(77);
  const WeightLayouts<double> layouts(rng);
  const int64_t n = WeightLayouts<double>::count;
  const auto p = rng.uniform<double>(size_t(n), 0.05, 0.95);
  const auto t = rng.uniform<double>(size_t(n));
  for (const auto& layout : layouts.all()) {
    const Broadcast<double> w = layout.second;
    for (const Reduction red : kReductions) {
      SCOPED_TRACE(layout.first + " " + describe(red));
      BinaryCrossEntropyOptions opt;
      opt.reduction = red;
      opt.grad_output = 1.5;
      const auto got = run_bce(p, t, w, opt);
      BinaryCrossEntropyOptions unit = opt;
      unit.grad_output = 1.0;
      EXPECT_TRUE(check_gradient(
          p, got.grad, 1.5,
          [&](const std::vector<double>& ps) {
            return xentkit::binary_cross_entropy<double>(ps.data(), t.data(), n, w, nullptr,
                                                         nullptr, unit);
          },
          Tol<double>::h, Tol<double>::threshold));
    }
  }
}

// ================================================================================================
// binary_cross_entropy_with_logits
// ================================================================================================

template <typename T>
Call<T> run_bce_logits(const std::vector<T>& x, const std::vector<T>& t, Broadcast<T> w,
                      Broadcast<T> pw, const BinaryCrossEntropyOptions& opt) {
  Call<T> r;
  r.loss.assign(x.size(), sentinel<T>());
  r.grad.assign(x.size(), sentinel<T>());
  r.value = xentkit::binary_cross_entropy_with_logits<T>(
      x.data(), t.data(), int64_t(x.size()), w, pw, r.loss.data(), r.grad.data(), opt);
  return r;
}

template <typename T>
class BceLogits : public ::testing::Test {
 protected:
  Rng rng_{31337};
};
TYPED_TEST_SUITE(BceLogits, FloatTypes);

TYPED_TEST(BceLogits, MatchesReferenceForWeightAndPosWeightLayouts) {
  using T = TypeParam;
  const WeightLayouts<T> weights(this->rng_);
  const WeightLayouts<T> pos_weights(this->rng_, 0.5, 3.0);
  const int64_t n = WeightLayouts<T>::count;
  const auto x = this->rng_.template normal<T>(size_t(n), 0.0, 3.0);
  auto t = this->rng_.template uniform<T>(size_t(n));
  for (size_t i = 0; i < t.size(); i += 4) t[i] = T(i % 3 == 0);
  const double scale = (1.0 + double(max_abs_of(x))) * 2.0 * 3.0;
  const auto ws = weights.all();
  const auto pws = pos_weights.all();
  int k = 0;
  for (size_t a = 0; a < ws.size(); ++a) {
    for (size_t b = 0; b < pws.size(); ++b) {
      if (a != 0 && b != 0 && (a + b) % 2 == 1) continue;  // a sample of the pairs
      for (const Reduction red : kReductions) {
        SCOPED_TRACE("weight " + ws[a].first + ", pos_weight " + pws[b].first + ", " +
                     describe(red));
        BinaryCrossEntropyOptions opt;
        opt.reduction = red;
        opt.grad_output = (k++ % 3 == 0) ? 0.5 : 1.0;
        const auto got = run_bce_logits(x, t, ws[a].second, pws[b].second, opt);
        const auto want = xkref::binary_cross_entropy_with_logits(x, t, ws[a].second,
                                                                  pws[b].second, red,
                                                                  opt.grad_output);
        expect_matches(got, want, red, scale);
      }
    }
  }
}

TYPED_TEST(BceLogits, ReferenceNumbers) {
  // The BCE tensors read as logits and targets (PyTorch 2.13, float64).
  using T = TypeParam;
  const std::vector<T> x = {T(0.6), T(0.1), T(0.3), T(0.8)};
  const std::vector<T> y = {0, 1, 1, 0};
  const double rtol = std::is_same_v<T, float> ? 2e-6 : 1e-12;
  BinaryCrossEntropyOptions opt;
  const auto mean = run_bce_logits(x, y, {}, {}, opt);
  EXPECT_TRUE(near_rel(mean.value, 0.8518351302439404, rtol, 0.0));
  EXPECT_TRUE(xkref::close(mean.loss,
                        {1.0374879504858856, 0.6443966600735709, 0.5543552444685271,
                         1.1711006659477778},
                        rtol, 0.0));
  EXPECT_TRUE(xkref::close(mean.grad,
                        {0.16141407655644885, -0.118755203130265, -0.10638937079708524,
                         0.17249362028190313},
                        rtol, 0.0));
  opt.reduction = Reduction::sum;
  EXPECT_TRUE(near_rel(run_bce_logits(x, y, {}, {}, opt).value, 3.4073405209757617, rtol, 0.0));
  opt.reduction = Reduction::mean;
  const std::vector<T> pw = {1, 3};
  EXPECT_TRUE(near_rel(run_bce_logits(x, y, {}, {pw.data(), 1, 2}, opt).value,
                       1.1740334602807259, rtol, 0.0));
}

TYPED_TEST(BceLogits, InfiniteLogitsGiveTheLimits) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  const std::vector<T> x = {inf, -inf, inf, -inf, inf, -inf};
  const std::vector<T> t = {1, 0, 0, 1, T(0.5), T(0.5)};
  const std::vector<T> w = {2}, pw = {3};
  BinaryCrossEntropyOptions opt;
  opt.reduction = Reduction::none;
  {
    const auto r = run_bce_logits(x, t, {}, {}, opt);
    EXPECT_TRUE(xkref::close(r.loss, {0, 0, kInf, kInf, kInf, kInf}, 0.0, 0.0));
    EXPECT_TRUE(xkref::close(r.grad, {0, 0, 1, -1, 0.5, -0.5}, 0.0, 0.0));
    EXPECT_EQ(r.value, inf);
  }
  {
    // grad = w ((1 + (pw - 1) t) sigmoid(x) - pw t)
    const auto r = run_bce_logits(x, t, {w.data(), 1, 1}, {pw.data(), 1, 1}, opt);
    EXPECT_TRUE(xkref::close(r.loss, {0, 0, kInf, kInf, kInf, kInf}, 0.0, 0.0));
    EXPECT_TRUE(xkref::close(r.grad, {0, 0, 2, -6, 1, -3}, 0.0, 0.0));
  }
  {
    // Only the zero-loss limits: the mean is finite.
    const std::vector<T> xs = {inf, -inf}, ts = {1, 0};
    opt.reduction = Reduction::mean;
    const auto r = run_bce_logits(xs, ts, {}, {}, opt);
    EXPECT_EQ(r.value, T(0));
    EXPECT_TRUE(xkref::close(r.grad, {0, 0}, 0.0, 0.0));
  }
  {
    // Large finite logits: the loss grows linearly, the gradient saturates.
    const std::vector<T> xs = {T(1e4), T(-1e4), T(-1e4)}, ts = {0, 1, 1};
    const std::vector<T> pws = {1, 1, 2};
    opt.reduction = Reduction::none;
    const auto r = run_bce_logits(xs, ts, {}, {pws.data(), 1, 3}, opt);
    EXPECT_TRUE(xkref::close(r.loss, {1e4, 1e4, 2e4}, 1e-12, 0.0));
    EXPECT_TRUE(xkref::close(r.grad, {1, -1, -2}, 1e-12, 0.0));
  }
}

TYPED_TEST(BceLogits, NaNPropagates) {
  using T = TypeParam;
  const std::vector<T> x = {T(0.5), std::numeric_limits<T>::quiet_NaN(), T(-1)};
  const std::vector<T> t = {1, 0, T(0.5)};
  BinaryCrossEntropyOptions opt;
  const auto r = run_bce_logits(x, t, {}, {}, opt);
  EXPECT_TRUE(std::isnan(r.value));
  EXPECT_TRUE(std::isnan(r.loss[1]));
  EXPECT_TRUE(std::isnan(r.grad[1]));
  EXPECT_FALSE(std::isnan(r.loss[0]));
  EXPECT_FALSE(std::isnan(r.grad[2]));
}

TYPED_TEST(BceLogits, TargetsAreNotRangeChecked) {
  using T = TypeParam;
  // x = 0.5, y = 2: (1 - 2) 0.5 + softplus(-0.5) = -0.0259..., as PyTorch.
  const std::vector<T> x = {T(0.5), T(-2)}, t = {2, T(-0.5)};
  BinaryCrossEntropyOptions opt;
  opt.reduction = Reduction::none;
  const auto r = run_bce_logits(x, t, {}, {}, opt);
  const auto want = xkref::binary_cross_entropy_with_logits(x, t, {}, {}, Reduction::none);
  EXPECT_TRUE(near_rel(want.loss[0], -0.5 + std::log1p(std::exp(-0.5)), 1e-15, 0.0));
  EXPECT_LT(r.loss[0], T(0));
  expect_matches(r, want, Reduction::none, 4.0);
}

TYPED_TEST(BceLogits, WeightsDoNotChangeTheMeanDivisor) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(12);
  const auto t = this->rng_.template uniform<T>(12);
  const std::vector<T> w = {5};
  BinaryCrossEntropyOptions opt;
  const T plain = run_bce_logits(x, t, {}, {}, opt).value;
  const T weighted = run_bce_logits(x, t, {w.data(), 1, 1}, {}, opt).value;
  EXPECT_TRUE(near_rel(weighted, 5.0 * plain, Acc<T>::rtol, 0.0));
  std::vector<T> none;
  EXPECT_TRUE(std::isnan(xentkit::binary_cross_entropy_with_logits<T>(
      none.data(), none.data(), 0, {}, {}, nullptr, nullptr, opt)));
  opt.reduction = Reduction::sum;
  EXPECT_EQ(xentkit::binary_cross_entropy_with_logits<T>(none.data(), none.data(), 0, {}, {},
                                                         nullptr, nullptr, opt),
            T(0));
}

TYPED_TEST(BceLogits, GradMayAliasInput) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(40);
  const auto t = this->rng_.template uniform<T>(40);
  const auto pw = this->rng_.template uniform<T>(8, 0.5, 2.0);
  BinaryCrossEntropyOptions opt;
  opt.reduction = Reduction::sum;
  const auto ref = run_bce_logits(x, t, {}, {pw.data(), 1, 8}, opt);
  auto inplace = x;
  const T v = xentkit::binary_cross_entropy_with_logits<T>(
      inplace.data(), t.data(), 40, {}, {pw.data(), 1, 8}, nullptr, inplace.data(), opt);
  EXPECT_TRUE(same_bits(v, ref.value));
  EXPECT_TRUE(same_bytes(inplace, ref.grad));
}

TEST(BceLogitsGradient, FiniteDifferences) {
  Rng rng(99);
  const WeightLayouts<double> weights(rng);
  const WeightLayouts<double> pos_weights(rng, 0.5, 3.0);
  const int64_t n = WeightLayouts<double>::count;
  const auto x = rng.normal<double>(size_t(n), 0.0, 2.0);
  const auto t = rng.uniform<double>(size_t(n));
  const auto ws = weights.all();
  const auto pws = pos_weights.all();
  for (size_t k = 0; k < ws.size(); ++k) {
    const auto& w = ws[k].second;
    const auto& pw = pws[(k + 2) % pws.size()].second;
    for (const Reduction red : kReductions) {
      SCOPED_TRACE(ws[k].first + " " + describe(red));
      BinaryCrossEntropyOptions opt;
      opt.reduction = red;
      const auto got = run_bce_logits(x, t, w, pw, opt);
      EXPECT_TRUE(check_gradient(
          x, got.grad, 1.0,
          [&](const std::vector<double>& xs) {
            return xentkit::binary_cross_entropy_with_logits<double>(xs.data(), t.data(), n, w,
                                                                     pw, nullptr, nullptr, opt);
          },
          Tol<double>::h, Tol<double>::threshold));
    }
  }
}

// ================================================================================================
// cross_entropy with class indices
// ================================================================================================

template <typename T_, typename L_>
struct ValueAndLabel {
  using T = T_;
  using L = L_;
};
using IndexTypes =
    ::testing::Types<ValueAndLabel<float, int64_t>, ValueAndLabel<double, int64_t>,
                     ValueAndLabel<float, int32_t>, ValueAndLabel<double, int32_t>,
                     ValueAndLabel<double, int8_t>, ValueAndLabel<float, uint8_t>,
                     ValueAndLabel<double, int16_t>, ValueAndLabel<double, uint16_t>,
                     ValueAndLabel<float, uint32_t>, ValueAndLabel<double, uint64_t>>;

struct Layout {
  int64_t outer, C, inner;
};
// (C) unbatched, (N, C), (N, C, d1), (N, C, d1, d2) flattened, a single class.
constexpr Layout kLayouts[] = {{1, 5, 1}, {6, 4, 1}, {3, 5, 7}, {2, 3, 6}, {4, 1, 2}};

template <typename T, typename L>
Call<T> run_ce(const std::vector<T>& x, const std::vector<L>& y, const Layout& s,
              const Weights<T>* weight,
              const CrossEntropyOptions& opt) {
  Call<T> r;
  r.loss.assign(size_t(s.outer * s.inner), sentinel<T>());
  r.grad.assign(x.size(), sentinel<T>());
  r.value = xentkit::cross_entropy<T, L>(x.data(), y.data(), s.outer, s.C, s.inner, weight,
                                         r.loss.data(), r.grad.data(), opt);
  return r;
}

template <typename P>
class CrossEntropyIndex : public ::testing::Test {
 protected:
  using T = typename P::T;
  using L = typename P::L;

  /// Classes in [0, C); every fourth position holds `ignore` when it is given.
  std::vector<L> targets(const Layout& s, std::optional<int64_t> ignore) {
    auto y = rng_.template classes<L>(size_t(s.outer * s.inner), s.C);
    if (ignore)
      for (size_t i = 1; i < y.size(); i += 4) y[i] = static_cast<L>(*ignore);
    return y;
  }

  Rng rng_{4242};
};
TYPED_TEST_SUITE(CrossEntropyIndex, IndexTypes);

TYPED_TEST(CrossEntropyIndex, MatchesReferenceOverLayoutsAndOptions) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  // ignore_index: the default (-100, absent from the targets; for signed types also present),
  // a real class (1), a value outside the classes (100).
  std::vector<std::optional<int64_t>> ignores = {std::nullopt, int64_t{1}, int64_t{100}};
  if (std::is_signed_v<L>) ignores.push_back(int64_t{-100});
  int k = 0;
  for (const Layout& s : kLayouts) {
    const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 3.0);
    const auto w = this->rng_.template uniform<T>(size_t(s.C), 0.25, 2.0);
    const double scale = (1.0 + 2.0 * double(max_abs_of(x))) * 2.0;
    for (const auto& ignore : ignores) {
      if (ignore && *ignore == 1 && s.C < 2) continue;
      const auto y = this->targets(s, ignore);
      for (const bool weighted : {false, true}) {
        for (const double eps : {0.0, 0.1, 1.0}) {
          for (const Reduction red : kReductions) {
            SCOPED_TRACE("layout (" + std::to_string(s.outer) + "," + std::to_string(s.C) + "," +
                         std::to_string(s.inner) + ") ignore " +
                         (ignore ? std::to_string(*ignore) : "default") + (weighted ? " w" : "") +
                         " eps " + std::to_string(eps) + " " + describe(red));
            CrossEntropyOptions opt;
            if (ignore) opt.ignore_index = *ignore;
            opt.label_smoothing = eps;
            opt.reduction = red;
            opt.grad_output = (k++ % 2) ? 1.0 : -0.5;
            const T* wp = weighted ? w.data() : nullptr;
            const auto got = run_ce(x, y, s, wp, opt);
            const auto want = xkref::cross_entropy(x, y, s.outer, s.C, s.inner, wp, opt);
            expect_matches(got, want, red, scale);
          }
        }
      }
    }
  }
}

TYPED_TEST(CrossEntropyIndex, IgnoredPositionsScoreNothing) {
  using T = typename TypeParam::T;
  const Layout s{3, 4, 5};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  const auto y = this->targets(s, int64_t{2});  // a real class
  CrossEntropyOptions opt;
  opt.ignore_index = 2;
  opt.label_smoothing = 0.2;
  opt.reduction = Reduction::sum;
  const auto got = run_ce(x, y, s, nullptr, opt);
  int64_t ignored = 0, scored = 0;
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t i = 0; i < s.inner; ++i) {
      const size_t pos = size_t(o * s.inner + i);
      if (int64_t(y[pos]) != 2) {
        ++scored;
        EXPECT_GT(got.loss[pos], T(0));
        continue;
      }
      ++ignored;
      EXPECT_EQ(got.loss[pos], T(0)) << pos;
      for (int64_t c = 0; c < s.C; ++c) EXPECT_EQ(got.grad[xkref::at(o, c, i, s.C, s.inner)], T(0));
    }
  EXPECT_GT(ignored, 0);
  EXPECT_GT(scored, 0);
  // The ignored class still gets gradient through the softmax of scored positions.
  bool class2_grad = false;
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t i = 0; i < s.inner; ++i)
      if (int64_t(y[size_t(o * s.inner + i)]) != 2)
        class2_grad |= got.grad[xkref::at(o, 2, i, s.C, s.inner)] != T(0);
  EXPECT_TRUE(class2_grad);
}

TYPED_TEST(CrossEntropyIndex, NegativeSmoothingActsAsZero) {
  using T = typename TypeParam::T;
  const Layout s{4, 6, 3};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  const auto w = this->rng_.template uniform<T>(size_t(s.C), 0.5, 1.5);
  const auto y = this->targets(s, std::nullopt);
  CrossEntropyOptions opt;
  const auto zero = run_ce(x, y, s, w.data(), opt);
  opt.label_smoothing = -0.5;
  const auto negative = run_ce(x, y, s, w.data(), opt);
  EXPECT_TRUE(same_bits(zero.value, negative.value));
  EXPECT_TRUE(same_bytes(zero.loss, negative.loss));
  EXPECT_TRUE(same_bytes(zero.grad, negative.grad));
}

TYPED_TEST(CrossEntropyIndex, SmoothingAboveOneThrows) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  const Layout s{2, 3, 1};
  const auto x = this->rng_.template normal<T>(6);
  const auto y = this->targets(s, std::nullopt);
  for (const double eps : {1.5, std::nextafter(1.0, 2.0), kInf}) {
    CrossEntropyOptions opt;
    opt.label_smoothing = eps;
    std::vector<T> loss(2, sentinel<T>()), grad(6, sentinel<T>());
    EXPECT_THROW((xentkit::cross_entropy<T, L>(x.data(), y.data(), 2, 3, 1, nullptr, loss.data(),
                                               grad.data(), opt)),
                 value_error)
        << eps;
    EXPECT_TRUE(untouched(loss));
    EXPECT_TRUE(untouched(grad));
  }
}

TYPED_TEST(CrossEntropyIndex, OutOfRangeTargetThrowsLabelError) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  const Layout s{3, 4, 5};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  std::vector<L> bad_values = {L(4), L(100), std::numeric_limits<L>::max()};
  if (std::is_signed_v<L>) bad_values.push_back(L(-1));
  for (const L bad : bad_values) {
    for (const int64_t where : {int64_t{0}, int64_t{7}, int64_t{14}}) {
      for (const Reduction red : kReductions) {
        auto y = this->targets(s, int64_t{3});  // ignore_index 3: other targets stay checked
        y[size_t(where)] = bad;
        CrossEntropyOptions opt;
        opt.ignore_index = 3;
        opt.reduction = red;
        opt.label_smoothing = 0.1;
        std::vector<T> loss(15, sentinel<T>()), grad(x.size(), sentinel<T>());
        try {
          xentkit::cross_entropy<T, L>(x.data(), y.data(), s.outer, s.C, s.inner, nullptr,
                                       loss.data(), grad.data(), opt);
          ADD_FAILURE() << "no label_error for " << +bad << " at " << where;
        } catch (const label_error& e) {
          EXPECT_EQ(e.index(), where);
          EXPECT_EQ(e.value(), static_cast<double>(bad));
          EXPECT_NE(std::string(e.what()).find(std::to_string(where)), std::string::npos)
              << e.what();
        }
        EXPECT_TRUE(untouched(loss));
        EXPECT_TRUE(untouched(grad));
      }
    }
  }
}

TYPED_TEST(CrossEntropyIndex, IgnoreIndexComparesValuesNotStoredBits) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  if constexpr (std::is_unsigned_v<L>) {
    // The stored bits of -100 in an unsigned type are a large class index, not the ignored one.
    const Layout s{1, 3, 2};
    const auto x = this->rng_.template normal<T>(6);
    const std::vector<L> y = {L(1), static_cast<L>(int64_t{-100})};
    CrossEntropyOptions opt;  // ignore_index = -100
    EXPECT_THROW(run_ce(x, y, s, nullptr, opt), label_error);
    // ignore_index beyond the type's range matches no stored value: 256 + 1 is not 1 for uint8.
    if constexpr (sizeof(L) < 8) {
      opt.ignore_index = int64_t(std::numeric_limits<L>::max()) + 2;
      const std::vector<L> ok = {L(1), L(2)};
      const auto got = run_ce(x, ok, s, nullptr, opt);
      EXPECT_GT(got.loss[0], T(0));
      EXPECT_GT(got.loss[1], T(0));
    }
  } else {
    // -100 stored in a narrow signed type is the default ignore_index.
    const Layout s{2, 3, 1};
    const auto x = this->rng_.template normal<T>(6);
    const std::vector<L> y = {L(-100), L(2)};
    const auto got = run_ce(x, y, s, nullptr, CrossEntropyOptions{});
    EXPECT_EQ(got.loss[0], T(0));
    EXPECT_GT(got.loss[1], T(0));
    if constexpr (sizeof(L) < 8) {
      // A value that wraps to 2 in L must not match ignore_index 2 + 2^(bits).
      CrossEntropyOptions opt;
      opt.ignore_index = int64_t{2} + (int64_t{1} << (8 * sizeof(L)));
      const auto kept = run_ce(x, std::vector<L>{L(1), L(2)}, s, nullptr, opt);
      EXPECT_GT(kept.loss[1], T(0));
    }
  }
}

TYPED_TEST(CrossEntropyIndex, MeanOverNothingIsNaNWithZeroGradient) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  const Layout s{4, 3, 2};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  const auto w = this->rng_.template uniform<T>(3, 0.5, 2.0);
  const std::vector<L> all_ignored(8, L(7));
  for (const bool weighted : {false, true}) {
    for (const double eps : {0.0, 0.1}) {
      CrossEntropyOptions opt;
      opt.ignore_index = 7;
      opt.label_smoothing = eps;
      const T* wp = weighted ? w.data() : nullptr;
      const auto mean = run_ce(x, all_ignored, s, wp, opt);
      EXPECT_TRUE(std::isnan(mean.value));
      EXPECT_TRUE(all_zero(mean.grad));
      EXPECT_TRUE(all_zero(mean.loss));
      opt.reduction = Reduction::sum;
      const auto sum = run_ce(x, all_ignored, s, wp, opt);
      EXPECT_EQ(sum.value, T(0));
      EXPECT_TRUE(all_zero(sum.grad));
      opt.reduction = Reduction::none;
      const auto none = run_ce(x, all_ignored, s, wp, opt);
      EXPECT_EQ(none.value, T(0));
      EXPECT_TRUE(all_zero(none.loss));
      EXPECT_TRUE(all_zero(none.grad));
    }
  }
  // Empty batch and empty spatial extent.
  for (const Layout e : {Layout{0, 3, 2}, Layout{2, 3, 0}}) {
    const std::vector<T> none;
    const std::vector<L> ny;
    CrossEntropyOptions opt;
    EXPECT_TRUE(std::isnan(xentkit::cross_entropy<T, L>(none.data(), ny.data(), e.outer, e.C,
                                                        e.inner, w.data(), nullptr, nullptr,
                                                        opt)));
    opt.reduction = Reduction::sum;
    EXPECT_EQ((xentkit::cross_entropy<T, L>(none.data(), ny.data(), e.outer, e.C, e.inner,
                                            nullptr, nullptr, nullptr, opt)),
              T(0));
  }
  // Class weights summing to 0 over the present targets.
  const std::vector<T> zero_w = {0, 0, 1};
  const std::vector<L> y = {0, 1, 0, 1, 1, 0, 0, 1};
  EXPECT_TRUE(std::isnan(run_ce(x, y, s, zero_w.data(), CrossEntropyOptions{}).value));
}

TYPED_TEST(CrossEntropyIndex, GradMayAliasInput) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  const Layout s{3, 5, 4};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 2.0);
  const auto w = this->rng_.template uniform<T>(5, 0.5, 2.0);
  const auto y = this->targets(s, int64_t{100});
  CrossEntropyOptions opt;
  opt.ignore_index = 100;
  opt.label_smoothing = 0.15;
  opt.grad_output = 2.0;
  const auto ref = run_ce(x, y, s, w.data(), opt);
  auto inplace = x;
  std::vector<T> loss(ref.loss.size(), sentinel<T>());
  const T v = xentkit::cross_entropy<T, L>(inplace.data(), y.data(), s.outer, s.C, s.inner,
                                           w.data(), loss.data(), inplace.data(), opt);
  EXPECT_TRUE(same_bits(v, ref.value));
  EXPECT_TRUE(same_bytes(inplace, ref.grad));
  EXPECT_TRUE(same_bytes(loss, ref.loss));
  const T bare = xentkit::cross_entropy<T, L>(x.data(), y.data(), s.outer, s.C, s.inner,
                                              w.data(), nullptr, nullptr, opt);
  EXPECT_TRUE(same_bits(bare, ref.value));
}

TYPED_TEST(CrossEntropyIndex, ZeroClassesWithPositionsToScoreThrow) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  // With C == 0 no target is a class: a value_error as soon as one position is to be scored;
  // when every position is ignored there is nothing to score (a mean over nothing).
  const std::vector<T> x;
  const std::vector<L> y = {L(2), L(0)};
  CrossEntropyOptions opt;
  opt.ignore_index = 2;
  std::vector<T> loss(2, sentinel<T>());
  EXPECT_THROW((xentkit::cross_entropy<T, L>(x.data(), y.data(), 2, 0, 1, nullptr, loss.data(),
                                             nullptr, opt)),
               value_error);
  EXPECT_TRUE(untouched(loss));
  const std::vector<L> ignored = {L(2), L(2)};
  const T mean = xentkit::cross_entropy<T, L>(x.data(), ignored.data(), 2, 0, 1, nullptr,
                                              loss.data(), nullptr, opt);
  EXPECT_TRUE(std::isnan(mean));
  EXPECT_TRUE(all_zero(loss));
}

TYPED_TEST(CrossEntropyIndex, IgnoredPositionWithNonFiniteLogitsGetsZeroGradient) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  // Nothing is scored at an ignored position, so nothing of its logits reaches the result.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  const Layout s{3, 3, 1};
  const std::vector<T> x = {nan, 1, 0, -inf, -inf, -inf, T(0.5), T(-1), T(2)};
  const std::vector<L> y = {L(9), L(9), L(1)};
  CrossEntropyOptions opt;
  opt.ignore_index = 9;
  opt.label_smoothing = 0.1;
  const auto got = run_ce(x, y, s, nullptr, opt);
  const auto want = xkref::cross_entropy(x, y, 3, 3, 1, nullptr, opt);
  EXPECT_TRUE(std::isfinite(double(got.value)));
  EXPECT_TRUE(near_rel(got.value, want.reduced, Acc<T>::rtol, Acc<T>::atol));
  EXPECT_TRUE(xkref::close(got.grad, want.grad, Acc<T>::rtol, Acc<T>::atol));
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(got.grad[i], T(0)) << i;
}

/// Finite differences in double, for several label types.
template <typename L>
class CrossEntropyIndexGradient : public ::testing::Test {};
using GradientLabelTypes = ::testing::Types<int64_t, int32_t, uint8_t, int16_t, uint64_t>;
TYPED_TEST_SUITE(CrossEntropyIndexGradient, GradientLabelTypes);

TYPED_TEST(CrossEntropyIndexGradient, FiniteDifferences) {
  using T = double;
  using L = TypeParam;
  Rng rng(6060);
  const Layout s{3, 4, 3};
  const auto x = rng.normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 2.0);
  const auto w = rng.uniform<T>(size_t(s.C), 0.25, 2.0);
  auto y = rng.classes<L>(size_t(s.outer * s.inner), s.C);
  for (size_t i = 1; i < y.size(); i += 4) y[i] = L(1);  // ignore_index 1, a real class
  for (const bool weighted : {false, true}) {
    for (const double eps : {0.0, 0.3}) {
      for (const Reduction red : kReductions) {
        SCOPED_TRACE(std::string(weighted ? "w " : "") + "eps " + std::to_string(eps) + " " +
                     describe(red));
        CrossEntropyOptions opt;
        opt.ignore_index = 1;
        opt.label_smoothing = eps;
        opt.reduction = red;
        opt.grad_output = 0.7;
        const T* wp = weighted ? w.data() : nullptr;
        const auto got = run_ce(x, y, s, wp, opt);
        CrossEntropyOptions unit = opt;
        unit.grad_output = 1.0;
        EXPECT_TRUE(check_gradient(
            x, got.grad, 0.7,
            [&](const std::vector<T>& xs) {
              return xentkit::cross_entropy<T, L>(xs.data(), y.data(), s.outer, s.C, s.inner, wp,
                                                  nullptr, nullptr, unit);
            },
            Tol<T>::h, Tol<T>::threshold));
      }
    }
  }
}

// ---- argument errors ----------------------------------------------------------------------------

template <typename T>
class ArgumentErrors : public ::testing::Test {
 protected:
  Rng rng_{1111};
};
TYPED_TEST_SUITE(ArgumentErrors, FloatTypes);

TYPED_TEST(ArgumentErrors, NegativeSizesThrow) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(12);
  const auto p = this->rng_.template uniform<T>(12);
  const std::vector<int64_t> y(4, 0);
  std::vector<T> out(12, sentinel<T>());
  EXPECT_THROW(xentkit::binary_cross_entropy<T>(p.data(), p.data(), -1, {}, out.data(), nullptr),
               value_error);
  EXPECT_THROW(xentkit::binary_cross_entropy_with_logits<T>(x.data(), p.data(), -1, {}, {},
                                                            out.data(), nullptr),
               value_error);
  EXPECT_THROW((xentkit::cross_entropy<T, int64_t>(x.data(), y.data(), -1, 3, 4, nullptr,
                                                   out.data(), nullptr)),
               value_error);
  EXPECT_THROW((xentkit::cross_entropy<T>(x.data(), p.data(), 1, -3, 4, nullptr, out.data(),
                                          nullptr)),
               value_error);
  EXPECT_THROW((xentkit::nll_loss<T, int64_t>(x.data(), y.data(), 1, 3, -4, nullptr, out.data(),
                                              nullptr)),
               value_error);
  EXPECT_THROW(xentkit::log_softmax<T>(x.data(), 1, -12, 1, out.data()), value_error);
  EXPECT_THROW(xentkit::softmax<T>(x.data(), -1, 12, 1, out.data()), value_error);
  EXPECT_TRUE(untouched(out));
}

TYPED_TEST(ArgumentErrors, BadSmoothingAndReductionThrow) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(12);
  const auto q = this->rng_.template uniform<T>(12);
  const std::vector<int32_t> y = {0, 1, 2, 0};
  std::vector<T> grad(12, sentinel<T>());
  CrossEntropyOptions opt;
  opt.label_smoothing = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW((xentkit::cross_entropy<T, int32_t>(x.data(), y.data(), 4, 3, 1, nullptr, nullptr,
                                                   grad.data(), opt)),
               value_error);
  EXPECT_THROW((xentkit::cross_entropy<T>(x.data(), q.data(), 4, 3, 1, nullptr, nullptr,
                                          grad.data(), opt)),
               value_error);
  opt.label_smoothing = 0.0;
  opt.reduction = static_cast<Reduction>(3);
  EXPECT_THROW((xentkit::cross_entropy<T, int32_t>(x.data(), y.data(), 4, 3, 1, nullptr, nullptr,
                                                   grad.data(), opt)),
               value_error);
  BinaryCrossEntropyOptions bopt;
  bopt.reduction = static_cast<Reduction>(-1);
  EXPECT_THROW(xentkit::binary_cross_entropy_with_logits<T>(x.data(), q.data(), 12, {}, {},
                                                            nullptr, grad.data(), bopt),
               value_error);
  EXPECT_TRUE(untouched(grad));
  EXPECT_EQ(xentkit::parse_reduction("sum"), Reduction::sum);
  EXPECT_EQ(xentkit::parse_reduction("none"), Reduction::none);
  EXPECT_EQ(xentkit::parse_reduction("mean"), Reduction::mean);
  EXPECT_THROW(xentkit::parse_reduction("avg"), value_error);
  EXPECT_THROW(xentkit::parse_reduction("Mean"), value_error);
}

TYPED_TEST(ArgumentErrors, OutputsThatOverlapTheInputThrow) {
  using T = TypeParam;
  const auto x0 = this->rng_.template normal<T>(13);
  const std::vector<int64_t> y = {0, 1, 2, 0};
  auto x = x0;
  // grad may be the input itself, not a shifted view of it.
  EXPECT_THROW((xentkit::cross_entropy<T, int64_t>(x.data(), y.data(), 4, 3, 1, nullptr, nullptr,
                                                   x.data() + 1)),
               value_error);
  EXPECT_THROW((xentkit::binary_cross_entropy_with_logits<T>(x.data() + 1, x0.data(), 12, {}, {},
                                                             nullptr, x.data())),
               value_error);
  // log_softmax/softmax write a separate buffer.
  EXPECT_THROW(xentkit::log_softmax<T>(x.data(), 4, 3, 1, x.data()), value_error);
  EXPECT_THROW(xentkit::softmax<T>(x.data(), 4, 3, 1, x.data() + 1), value_error);
  EXPECT_TRUE(same_bytes(x, x0));
}

TYPED_TEST(ArgumentErrors, MissingBuffersThrow) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(12);
  const std::vector<int64_t> y = {0, 1, 2, 0};
  std::vector<T> grad(12, sentinel<T>());
  EXPECT_THROW((xentkit::cross_entropy<T, int64_t>(nullptr, y.data(), 4, 3, 1, nullptr, nullptr,
                                                   grad.data())),
               value_error);
  EXPECT_THROW((xentkit::cross_entropy<T, int64_t>(x.data(), nullptr, 4, 3, 1, nullptr, nullptr,
                                                   grad.data())),
               value_error);
  EXPECT_THROW(xentkit::softmax<T>(x.data(), 4, 3, 1, nullptr), value_error);
  EXPECT_TRUE(untouched(grad));
}

// ---- cross_entropy: PyTorch's reference numbers, in double -------------------------------------

class CrossEntropyNumbers : public ::testing::Test {
 protected:
  // input [[[1,2],[3,5]],[[4,7],[4,6]]] (N=2, C=2, d1=2), target [[0,0],[1,1]].
  const std::vector<double> x_ = {1, 2, 3, 5, 4, 7, 4, 6};
  const std::vector<int64_t> y_ = {0, 0, 1, 1};
  const std::vector<double> w_ = {1, 9};
  // X = [[1,2,0.5],[0.1,-1,3],[2,2,2],[0.3,0.2,-0.4]], target [0, 2, -100, 1].
  const std::vector<double> X_ = {1, 2, 0.5, 0.1, -1, 3, 2, 2, 2, 0.3, 0.2, -0.4};
  const std::vector<int64_t> Y_ = {0, 2, -100, 1};
  const std::vector<double> W_ = {1, 2, 0.5};

  Call<double> spatial(Reduction red, const double* w) {
    CrossEntropyOptions opt;
    opt.reduction = red;
    return run_ce(x_, y_, Layout{2, 2, 2}, w, opt);
  }
  Call<double> smoothed(Reduction red, const double* w, std::vector<int64_t> y = {},
                       int64_t ignore = -100, double eps = 0.1) {
    CrossEntropyOptions opt;
    opt.reduction = red;
    opt.label_smoothing = eps;
    opt.ignore_index = ignore;
    return run_ce(X_, y.empty() ? Y_ : y, Layout{4, 3, 1}, w, opt);
  }
};

constexpr double kR = 1e-12;

TEST_F(CrossEntropyNumbers, SpatialTargets) {
  const auto mean = spatial(Reduction::mean, nullptr);
  EXPECT_TRUE(near_rel(mean.value, 1.7954810576737206, kR, 0.0));
  EXPECT_TRUE(xkref::close(mean.loss,
                        {2.1269280110429727, 3.048587351573742, 0.6931471805599453,
                         1.3132616875182228},
                        kR, 0.0));
  EXPECT_TRUE(xkref::close(mean.grad,
                        {-0.2201992694944706, -0.2381435317056083, 0.22019926949447058,
                         0.2381435317056083, 0.125, 0.18276464465750122, -0.125,
                         -0.18276464465750122},
                        kR, 1e-17));
  EXPECT_TRUE(near_rel(spatial(Reduction::sum, nullptr).value, 7.181924230694882, kR, 0.0));
  const auto none = spatial(Reduction::none, nullptr);
  EXPECT_TRUE(near_rel(none.value, 7.181924230694882, kR, 0.0));
}

TEST_F(CrossEntropyNumbers, SpatialTargetsWithClassWeights) {
  const auto mean = spatial(Reduction::mean, w_.data());
  EXPECT_TRUE(near_rel(mean.value, 1.1616597587660116, kR, 0.0));  // 23.2332 / 20
  EXPECT_TRUE(xkref::close(mean.loss,
                        {2.1269280110429727, 3.048587351573742, 6.238324625039508,
                         11.819355187664005},
                        kR, 0.0));
  EXPECT_TRUE(xkref::close(mean.grad,
                        {-0.04403985389889412, -0.047628706341121665, 0.044039853898894116,
                         0.047628706341121665, 0.225, 0.3289763603835022, -0.225,
                         -0.3289763603835022},
                        kR, 1e-17));
  EXPECT_TRUE(near_rel(spatial(Reduction::sum, w_.data()).value, 23.23319517532023, kR, 0.0));
}

TEST_F(CrossEntropyNumbers, LabelSmoothingWithIgnoreIndex) {
  const auto mean = smoothed(Reduction::mean, nullptr);
  EXPECT_TRUE(near_rel(mean.value, 0.9137347885155924, kR, 0.0));
  EXPECT_TRUE(xkref::close(mean.loss,
                        {1.447702117441278, 0.30077421896049134, 0.0, 0.9927280291450074}, kR,
                        0.0));
  EXPECT_TRUE(xkref::close(mean.grad,
                        {-0.23403647857039475, 0.1983994619594764, 0.035637016610918386,
                         0.005976757458336781, -0.005423053782308642, -0.0005537036760281561, 0,
                         0, 0, 0.12769549311710343, -0.18551370173491416, 0.05781820861781075},
                        kR, 1e-17));
  EXPECT_TRUE(near_rel(smoothed(Reduction::sum, nullptr).value, 2.741204365546777, kR, 0.0));
}

TEST_F(CrossEntropyNumbers, LabelSmoothingWithIgnoreIndexAndWeight) {
  const auto mean = smoothed(Reduction::mean, W_.data());
  EXPECT_TRUE(near_rel(mean.value, 1.0603803617154786, kR, 0.0));
  EXPECT_TRUE(xkref::close(mean.loss,
                        {1.4304415971764106, 0.4034387240776118, 0.0, 1.877450944750153}, kR,
                        0.0));
  EXPECT_TRUE(xkref::close(mean.grad,
                        {-0.1995016297383282, 0.16352588034246435, 0.0359757493958638,
                         -0.0012239876472205445, -0.016284848345057844, 0.017508835992278406, 0,
                         0, 0, 0.2185156117082572, -0.32699473221529557, 0.1084791205070383},
                        kR, 1e-17));
  EXPECT_TRUE(near_rel(smoothed(Reduction::sum, W_.data()).value, 3.7113312660041755, kR, 0.0));
  const auto none = smoothed(Reduction::none, W_.data());
  EXPECT_TRUE(near_rel(none.value, 3.7113312660041755, kR, 0.0));
}

TEST_F(CrossEntropyNumbers, IgnoreIndexMayBeARealClass) {
  // target [1, 1, 0, 2] with ignore_index 1: the plain mean over rows 2 and 3.
  const auto mean = smoothed(Reduction::mean, nullptr, {1, 1, 0, 2}, 1, 0.0);
  EXPECT_TRUE(near_rel(mean.value, 1.3373368255732254, kR, 0.0));
  EXPECT_EQ(mean.loss[0], 0.0);
  EXPECT_EQ(mean.loss[1], 0.0);
}

TEST_F(CrossEntropyNumbers, AllIgnored) {
  const std::vector<int64_t> y(4, -100);
  const auto mean = smoothed(Reduction::mean, nullptr, y, -100, 0.0);
  EXPECT_TRUE(std::isnan(mean.value));
  EXPECT_TRUE(all_zero(mean.grad));
  EXPECT_EQ(smoothed(Reduction::sum, nullptr, y, -100, 0.0).value, 0.0);
  const auto none = smoothed(Reduction::none, nullptr, y, -100, 0.0);
  EXPECT_TRUE(all_zero(none.loss));
  EXPECT_TRUE(std::isnan(smoothed(Reduction::mean, W_.data(), y, -100, 0.1).value));
}

// ---- cross_entropy: numerics beyond PyTorch ----------------------------------------------------

template <typename T>
class CrossEntropyNumerics : public ::testing::Test {};
TYPED_TEST_SUITE(CrossEntropyNumerics, FloatTypes);

TYPED_TEST(CrossEntropyNumerics, ConfidentPredictionKeepsRelativePrecision) {
  using T = TypeParam;
  // logits (0, -40, -40), label 0: p[0] rounds to 1, yet p[0] - 1 = -2e^-40 / (1 + 2e^-40).
  const std::vector<T> x = {0, -40, -40};
  const std::vector<int64_t> y = {0};
  const auto got = run_ce(x, y, Layout{1, 3, 1}, nullptr,
                          CrossEntropyOptions{});
  const double e = std::exp(-40.0);
  const double rtol = std::is_same_v<T, double> ? 1e-12 : 1e-5;
  EXPECT_TRUE(near_rel(got.grad[0], -2.0 * e / (1.0 + 2.0 * e), rtol, 0.0));
  EXPECT_TRUE(near_rel(got.grad[1], e / (1.0 + 2.0 * e), rtol, 0.0));
  EXPECT_GE(got.value, T(0));
  EXPECT_LE(got.value, T(1e-16));
  EXPECT_LT(got.grad[0], T(0));
}

TYPED_TEST(CrossEntropyNumerics, LossIsNotCappedLikeCaffes) {
  using T = TypeParam;
  // Caffe caps a position's loss at -log(FLT_MIN) = 87.3; PyTorch's cross_entropy does not.
  const std::vector<T> x = {0, 200, T(-150), 0};
  const std::vector<int64_t> y = {0, 0};
  CrossEntropyOptions opt;
  opt.reduction = Reduction::none;
  const auto got = run_ce(x, y, Layout{2, 2, 1}, nullptr, opt);
  EXPECT_TRUE(near_rel(got.loss[0], 200.0, Acc<T>::rtol, 0.0));
  EXPECT_TRUE(near_rel(got.loss[1], 150.0, Acc<T>::rtol, 0.0));
  EXPECT_TRUE(xkref::close(got.grad, {-1, 1, -1, 1}, Acc<T>::rtol, 0.0));
}

TYPED_TEST(CrossEntropyNumerics, LabelFarBelowTheMaxBeyondExpRange) {
  using T = TypeParam;
  // A label logit more than ~709 below the row's max: exp(max - x_y) overflows, the loss does
  // not. Rows: (710, 0) label 1 -> 710 + log1p(e^-710); (2000, 0, -5) label 2 -> 2005 + tiny;
  // (1e30, 0) label 1 -> 1e30.
  const std::vector<T> x = {710, 0, 2000, 0, -5, T(1e30), 0};
  CrossEntropyOptions opt;
  opt.reduction = Reduction::none;
  const auto a = run_ce(std::vector<T>{x[0], x[1]}, std::vector<int64_t>{1}, Layout{1, 2, 1},
                        nullptr, opt);
  EXPECT_TRUE(near_rel(a.loss[0], 710.0, Acc<T>::rtol, 0.0));
  const auto b = run_ce(std::vector<T>{x[2], x[3], x[4]}, std::vector<int64_t>{2},
                        Layout{1, 3, 1}, nullptr, opt);
  EXPECT_TRUE(near_rel(b.loss[0], 2005.0, Acc<T>::rtol, 0.0));
  EXPECT_TRUE(xkref::close(b.grad, {1, 0, -1}, Acc<T>::rtol, 0.0));
  const auto c = run_ce(std::vector<T>{x[5], x[6]}, std::vector<int64_t>{1}, Layout{1, 2, 1},
                        nullptr, opt);
  EXPECT_TRUE(near_rel(c.loss[0], static_cast<double>(T(1e30)), Acc<T>::rtol, 0.0));
}

TYPED_TEST(CrossEntropyNumerics, InfiniteLogits) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  const Layout row{1, 3, 1};
  const T* nw = nullptr;
  auto run = [&](std::vector<T> x, int64_t label, double eps = 0.0, const T* w = nullptr) {
    CrossEntropyOptions opt;
    opt.label_smoothing = eps;
    return run_ce(x, std::vector<int64_t>{label}, row, w, opt);
  };
  {
    // A +inf logit takes all the mass: loss 0, gradient 0 for its own label.
    const auto r = run({inf, 0, 0}, 0);
    EXPECT_EQ(r.value, T(0));
    EXPECT_TRUE(xkref::close(r.grad, {0, 0, 0}, 0.0, 0.0));
    EXPECT_EQ(run({inf, 0, 0}, 1, 0.0, nw).value, inf);
  }
  {
    // Two +inf logits share it.
    const auto r = run({inf, inf, 0}, 0);
    EXPECT_TRUE(near_rel(r.value, std::log(2.0), Acc<T>::rtol, 0.0));
    EXPECT_TRUE(xkref::close(r.grad, {-0.5, 0.5, 0}, Acc<T>::rtol, 0.0));
  }
  {
    // A -inf logit on another class: finite loss, gradient 0 there.
    const auto r = run({1, -inf, 0}, 0);
    EXPECT_TRUE(near_rel(r.value, std::log1p(std::exp(-1.0)), Acc<T>::rtol, 0.0));
    EXPECT_EQ(r.grad[1], T(0));
    EXPECT_TRUE(std::isfinite(double(r.grad[0])));
    // ... on the target: inf.
    EXPECT_EQ(run({1, -inf, 0}, 1).value, inf);
    // With smoothing every class is scored: inf ...
    EXPECT_EQ(run({1, -inf, 0}, 0, 0.1).value, inf);
    // ... unless that class weighs exactly 0.
    const std::vector<T> w = {1, 0, 2};
    const auto r2 = run({1, -inf, 0}, 0, 0.1, w.data());
    const auto want = xkref::cross_entropy(std::vector<T>{1, -inf, 0}, std::vector<int64_t>{0}, 1,
                                           3, 1, w.data(), [] {
                                             CrossEntropyOptions o;
                                             o.label_smoothing = 0.1;
                                             return o;
                                           }());
    EXPECT_TRUE(std::isfinite(double(r2.value)));
    EXPECT_TRUE(near_rel(r2.value, want.reduced, Acc<T>::rtol, 0.0));
    EXPECT_TRUE(xkref::close(r2.grad, want.grad, Acc<T>::rtol, Acc<T>::atol));
  }
  {
    // NaN in gives NaN out.
    const auto r = run({1, std::numeric_limits<T>::quiet_NaN(), 0}, 0);
    EXPECT_TRUE(std::isnan(r.value));
  }
}

// ================================================================================================
// cross_entropy with probability targets
// ================================================================================================

template <typename T>
Call<T> run_ce_prob(const std::vector<T>& x, const std::vector<T>& q, const Layout& s,
                   const Weights<T>* weight, const CrossEntropyOptions& opt) {
  Call<T> r;
  r.loss.assign(size_t(s.outer * s.inner), sentinel<T>());
  r.grad.assign(x.size(), sentinel<T>());
  r.value = xentkit::cross_entropy<T>(x.data(), q.data(), s.outer, s.C, s.inner, weight,
                                      r.loss.data(), r.grad.data(), opt);
  return r;
}

template <typename T>
class CrossEntropyProbabilities : public ::testing::Test {
 protected:
  /// Rows that sum to 1 (a softmax of random numbers), rows that do not, and rows with
  /// negative entries.
  std::vector<std::pair<std::string, std::vector<T>>> targets(const Layout& s) {
    const size_t n = size_t(s.outer * s.C * s.inner);
    const auto z = rng_.template normal<T>(n);
    const auto p = xkref::softmax(z, s.outer, s.C, s.inner);
    std::vector<T> normalised(n);
    for (size_t i = 0; i < n; ++i) normalised[i] = static_cast<T>(p[i]);
    return {{"normalised", normalised},
            {"unnormalised", rng_.template uniform<T>(n, 0.0, 1.5)},
            {"signed", rng_.template uniform<T>(n, -0.5, 1.0)}};
  }
  Rng rng_{555};
};
TYPED_TEST_SUITE(CrossEntropyProbabilities, FloatTypes);

TYPED_TEST(CrossEntropyProbabilities, MatchesReference) {
  using T = TypeParam;
  int k = 0;
  for (const Layout& s : kLayouts) {
    const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 3.0);
    const auto w = this->rng_.template uniform<T>(size_t(s.C), 0.25, 2.0);
    const double scale = (1.0 + 2.0 * double(max_abs_of(x))) * 2.0 * 1.5 * double(s.C);
    for (const auto& [name, q] : this->targets(s)) {
      for (const bool weighted : {false, true}) {
        for (const double eps : {0.0, 0.2}) {
          for (const Reduction red : kReductions) {
            SCOPED_TRACE(name + " C " + std::to_string(s.C) + (weighted ? " w" : "") + " eps " +
                         std::to_string(eps) + " " + describe(red));
            CrossEntropyOptions opt;
            opt.label_smoothing = eps;
            opt.reduction = red;
            opt.grad_output = (k++ % 2) ? 1.0 : 2.5;
            const T* wp = weighted ? w.data() : nullptr;
            const auto got = run_ce_prob(x, q, s, wp, opt);
            const auto want =
                xkref::cross_entropy_probabilities(x, q, s.outer, s.C, s.inner, wp, opt);
            expect_matches(got, want, red, scale);
            if (red == Reduction::mean) {
              EXPECT_EQ(want.denominator, double(s.outer * s.inner));
            }
          }
        }
      }
    }
  }
}

TEST(CrossEntropyProbabilityNumbers, ReferenceNumbers) {
  const std::vector<double> X = {1, 2, 0.5, 0.1, -1, 3, 2, 2, 2, 0.3, 0.2, -0.4};
  const std::vector<double> q = {.2, .3, .5, 1, 0, 0, 0, 0, 1, .5, .5, 0};
  const std::vector<double> w = {1, 2, .5};
  const Layout s{4, 3, 1};
  CrossEntropyOptions opt;
  EXPECT_TRUE(near_rel(run_ce_prob(X, q, s, nullptr, opt).value, 1.6024541636, 0.0, 6e-11));
  EXPECT_TRUE(near_rel(run_ce_prob(X, q, s, w.data(), opt).value, 1.4991899076, 0.0, 6e-11));
  opt.label_smoothing = 0.1;
  EXPECT_TRUE(near_rel(run_ce_prob(X, q, s, nullptr, opt).value, 1.5899541636, 0.0, 6e-11));
}

TYPED_TEST(CrossEntropyProbabilities, OneHotTargetsAgreeWithClassIndicesExceptTheWeightedMean) {
  using T = TypeParam;
  const Layout s{5, 4, 3};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 2.0);
  const auto w = this->rng_.template uniform<T>(size_t(s.C), 0.25, 2.0);
  const auto y = this->rng_.template classes<int32_t>(size_t(s.outer * s.inner), s.C);
  std::vector<T> q(x.size(), T(0));
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t i = 0; i < s.inner; ++i)
      q[xkref::at(o, y[size_t(o * s.inner + i)], i, s.C, s.inner)] = T(1);
  double weight_sum = 0.0;
  for (int32_t c : y) weight_sum += double(w[size_t(c)]);
  for (const Reduction red : kReductions) {
    CrossEntropyOptions opt;
    opt.reduction = red;
    opt.label_smoothing = 0.1;
    const auto soft = run_ce_prob(x, q, s, w.data(), opt);
    const auto hard = run_ce(x, y, s, w.data(), opt);
    const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
    if (red == Reduction::mean) {
      // The probability form divides by the number of positions, the index form by sum w[y].
      EXPECT_TRUE(near_rel(double(soft.value) * 15.0, double(hard.value) * weight_sum, tol, 0.0));
    } else {
      // Per position both are (1-eps) w[y] (-lp[y]) + eps/C sum_c w[c] (-lp[c]).
      EXPECT_TRUE(near_rel(soft.value, hard.value, tol, 0.0)) << describe(red);
      std::vector<double> hard_grad(hard.grad.begin(), hard.grad.end());
      EXPECT_TRUE(xkref::close(soft.grad, hard_grad, tol, tol));
    }
  }
}

TYPED_TEST(CrossEntropyProbabilities, GradientIsTheTrueDerivativeForUnnormalisedRows) {
  using T = TypeParam;
  const Layout s{3, 4, 2};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  // Rows summing to 2 double the loss and give 2 p - q, not p - q.
  const auto q1 = this->targets(s)[0].second;
  std::vector<T> q2(q1);
  for (auto& v : q2) v *= T(2);
  CrossEntropyOptions opt;
  opt.reduction = Reduction::sum;
  const auto a = run_ce_prob(x, q1, s, static_cast<const T*>(nullptr), opt);
  const auto b = run_ce_prob(x, q2, s, static_cast<const T*>(nullptr), opt);
  EXPECT_TRUE(near_rel(b.value, 2.0 * double(a.value), Acc<T>::rtol, 0.0));
  const auto p = xkref::softmax(x, s.outer, s.C, s.inner);
  std::vector<double> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = 2.0 * p[i] - 2.0 * double(q1[i]);
  EXPECT_TRUE(xkref::close(b.grad, want, Acc<T>::rtol, 10 * Acc<T>::atol));
  if constexpr (std::is_same_v<T, double>) {
    const auto w = this->rng_.template uniform<T>(size_t(s.C), 0.25, 2.0);
    for (const auto& target : this->targets(s)) {
      const std::vector<T>& q = target.second;
      for (const Reduction red : kReductions) {
        SCOPED_TRACE(target.first + " " + describe(red));
        CrossEntropyOptions o;
        o.reduction = red;
        o.label_smoothing = 0.25;
        const auto got = run_ce_prob(x, q, s, w.data(), o);
        EXPECT_TRUE(check_gradient(
            x, got.grad, 1.0,
            [&](const std::vector<T>& xs) {
              return xentkit::cross_entropy<T>(xs.data(), q.data(), s.outer, s.C, s.inner,
                                               w.data(), nullptr, nullptr, o);
            },
            Tol<T>::h, Tol<T>::threshold));
      }
    }
  }
}

TYPED_TEST(CrossEntropyProbabilities, ZeroTargetAtMinusInfLogitAddsNothing) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  const std::vector<T> x = {0, -inf, 1};
  const std::vector<T> q = {T(0.5), 0, T(0.5)};
  const Layout row{1, 3, 1};
  CrossEntropyOptions opt;
  const auto r = run_ce_prob(x, q, row, static_cast<const T*>(nullptr), opt);
  const auto want =
      xkref::cross_entropy_probabilities(x, q, 1, 3, 1, static_cast<const T*>(nullptr), opt);
  EXPECT_TRUE(std::isfinite(double(r.value)));
  EXPECT_TRUE(near_rel(r.value, want.reduced, Acc<T>::rtol, 0.0));
  EXPECT_TRUE(xkref::close(r.grad, want.grad, Acc<T>::rtol, Acc<T>::atol));
  EXPECT_EQ(r.grad[1], T(0));
  // Smoothing gives that class a share: inf.
  opt.label_smoothing = 0.1;
  EXPECT_EQ(run_ce_prob(x, q, row, static_cast<const T*>(nullptr), opt).value, inf);
  // ... unless its weight is 0.
  const std::vector<T> w = {1, 0, 1};
  EXPECT_TRUE(std::isfinite(double(run_ce_prob(x, q, row, w.data(), opt).value)));
}

TYPED_TEST(CrossEntropyProbabilities, EmptyMeanIsNaNAndSmoothingAboveOneThrows) {
  using T = TypeParam;
  const std::vector<T> none;
  CrossEntropyOptions opt;
  EXPECT_TRUE(std::isnan(xentkit::cross_entropy<T>(none.data(), none.data(), 0, 3, 4, nullptr,
                                                   nullptr, nullptr, opt)));
  opt.reduction = Reduction::sum;
  EXPECT_EQ(xentkit::cross_entropy<T>(none.data(), none.data(), 0, 3, 4, nullptr, nullptr,
                                      nullptr, opt),
            T(0));
  const auto x = this->rng_.template normal<T>(6);
  const auto q = this->rng_.template uniform<T>(6);
  opt.label_smoothing = 1.25;
  std::vector<T> loss(2, sentinel<T>()), grad(6, sentinel<T>());
  EXPECT_THROW(xentkit::cross_entropy<T>(x.data(), q.data(), 2, 3, 1, nullptr, loss.data(),
                                         grad.data(), opt),
               value_error);
  EXPECT_TRUE(untouched(loss));
  EXPECT_TRUE(untouched(grad));
  // Negative smoothing acts as 0.
  opt.label_smoothing = -1.0;
  const auto neg = run_ce_prob(x, q, Layout{2, 3, 1}, static_cast<const T*>(nullptr), opt);
  opt.label_smoothing = 0.0;
  const auto zero = run_ce_prob(x, q, Layout{2, 3, 1}, static_cast<const T*>(nullptr), opt);
  EXPECT_TRUE(same_bits(neg.value, zero.value));
  EXPECT_TRUE(same_bytes(neg.grad, zero.grad));
}

TYPED_TEST(CrossEntropyProbabilities, GradMayAliasInput) {
  using T = TypeParam;
  const Layout s{3, 4, 5};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  const auto q = this->targets(s)[1].second;
  const auto w = this->rng_.template uniform<T>(4, 0.5, 1.5);
  CrossEntropyOptions opt;
  opt.label_smoothing = 0.05;
  const auto ref = run_ce_prob(x, q, s, w.data(), opt);
  auto inplace = x;
  const T v = xentkit::cross_entropy<T>(inplace.data(), q.data(), s.outer, s.C, s.inner,
                                        w.data(), nullptr, inplace.data(), opt);
  EXPECT_TRUE(same_bits(v, ref.value));
  EXPECT_TRUE(same_bytes(inplace, ref.grad));
}

// ================================================================================================
// nll_loss
// ================================================================================================

template <typename T, typename L>
Call<T> run_nll(const std::vector<T>& x, const std::vector<L>& y, const Layout& s,
               const Weights<T>* weight, const NllLossOptions& opt) {
  Call<T> r;
  r.loss.assign(size_t(s.outer * s.inner), sentinel<T>());
  r.grad.assign(x.size(), sentinel<T>());
  r.value = xentkit::nll_loss<T, L>(x.data(), y.data(), s.outer, s.C, s.inner, weight,
                                    r.loss.data(), r.grad.data(), opt);
  return r;
}

template <typename P>
class NllLoss : public ::testing::Test {
 protected:
  Rng rng_{8080};
};
using NllTypes =
    ::testing::Types<ValueAndLabel<float, int64_t>, ValueAndLabel<double, int64_t>,
                     ValueAndLabel<double, uint8_t>, ValueAndLabel<float, int16_t>,
                     ValueAndLabel<double, uint32_t>>;
TYPED_TEST_SUITE(NllLoss, NllTypes);

TYPED_TEST(NllLoss, ReferenceNumbers) {
  // Raw inputs (not log-probabilities): nll_loss only gathers and negates.
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  const std::vector<T> a = {2, 3, 1, 3, 7, 9};
  const std::vector<L> ya = {1, 2};
  const std::vector<T> b = {2, 3, 1, 5, 3, 7, 1, 9};
  const std::vector<L> yb = {1, 1, 0, 0};
  const T* nw = nullptr;
  NllLossOptions opt;
  const auto ma = run_nll(a, ya, Layout{2, 3, 1}, nw, opt);
  EXPECT_EQ(ma.value, T(-6));
  EXPECT_TRUE(xkref::close(ma.loss, {-3, -9}, 0.0, 0.0));
  EXPECT_TRUE(xkref::close(ma.grad, {0, -0.5, 0, 0, 0, -0.5}, 0.0, 0.0));
  const auto mb = run_nll(b, yb, Layout{2, 2, 2}, nw, opt);
  EXPECT_EQ(mb.value, T(-4));
  EXPECT_TRUE(xkref::close(mb.loss, {-1, -5, -3, -7}, 0.0, 0.0));
  opt.reduction = Reduction::sum;
  EXPECT_EQ(run_nll(a, ya, Layout{2, 3, 1}, nw, opt).value, T(-12));
  EXPECT_EQ(run_nll(b, yb, Layout{2, 2, 2}, nw, opt).value, T(-16));
  opt.reduction = Reduction::none;
  const auto nb = run_nll(b, yb, Layout{2, 2, 2}, nw, opt);
  EXPECT_EQ(nb.value, T(-16));
  EXPECT_TRUE(xkref::close(nb.grad, {0, 0, -1, -1, -1, -1, 0, 0}, 0.0, 0.0));
}

TYPED_TEST(NllLoss, MatchesReference) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  int k = 0;
  for (const Layout& s : kLayouts) {
    const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), -2.0, 1.0);
    const auto w = this->rng_.template uniform<T>(size_t(s.C), 0.25, 2.0);
    auto y = this->rng_.template classes<L>(size_t(s.outer * s.inner), s.C);
    for (size_t i = 2; i < y.size(); i += 3) y[i] = L(100);
    for (const int64_t ignore : {int64_t{-100}, int64_t{100}, int64_t{0}}) {
      for (const bool weighted : {false, true}) {
        for (const Reduction red : kReductions) {
          SCOPED_TRACE("C " + std::to_string(s.C) + " ignore " + std::to_string(ignore) +
                       (weighted ? " w " : " ") + describe(red));
          NllLossOptions opt;
          opt.ignore_index = ignore;
          opt.reduction = red;
          opt.grad_output = (k++ % 2) ? 1.0 : 3.0;
          const T* wp = weighted ? w.data() : nullptr;
          if (ignore != 100 && y.size() > 2) {
            // 100 is out of range unless ignored.
            EXPECT_THROW(run_nll(x, y, s, wp, opt), label_error);
            continue;
          }
          const auto got = run_nll(x, y, s, wp, opt);
          const auto want = xkref::nll_loss(x, y, s.outer, s.C, s.inner, wp, opt);
          expect_matches(got, want, red, 4.0 * 2.0);
        }
      }
    }
  }
}

TYPED_TEST(NllLoss, LabelErrorsEmptyMeansAndAliasing) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  const Layout s{2, 3, 4};
  const auto x = this->rng_.template normal<T>(24);
  std::vector<L> y = {0, 1, 2, 0, 1, 2, 0, 1};
  y[5] = L(3);
  std::vector<T> loss(8, sentinel<T>()), grad(24, sentinel<T>());
  try {
    xentkit::nll_loss<T, L>(x.data(), y.data(), 2, 3, 4, nullptr, loss.data(), grad.data(), {});
    ADD_FAILURE() << "no label_error";
  } catch (const label_error& e) {
    EXPECT_EQ(e.index(), 5);
    EXPECT_EQ(e.value(), 3.0);
  }
  EXPECT_TRUE(untouched(loss));
  EXPECT_TRUE(untouched(grad));
  // All ignored: NaN mean, zero gradient.
  const std::vector<L> ignored(8, L(9));
  NllLossOptions opt;
  opt.ignore_index = 9;
  const auto r = run_nll(x, ignored, s, static_cast<const T*>(nullptr), opt);
  EXPECT_TRUE(std::isnan(r.value));
  EXPECT_TRUE(all_zero(r.grad));
  EXPECT_TRUE(all_zero(r.loss));
  // In place.
  y[5] = L(2);
  const auto ref = run_nll(x, y, s, static_cast<const T*>(nullptr), NllLossOptions{});
  auto inplace = x;
  const T v = xentkit::nll_loss<T, L>(inplace.data(), y.data(), 2, 3, 4, nullptr, nullptr,
                                      inplace.data(), {});
  EXPECT_TRUE(same_bits(v, ref.value));
  EXPECT_TRUE(same_bytes(inplace, ref.grad));
  // nll_loss of log_softmax is cross_entropy.
  std::vector<T> lp(24);
  xentkit::log_softmax<T>(x.data(), 2, 3, 4, lp.data());
  const auto ce = run_ce(x, y, s, static_cast<const T*>(nullptr), CrossEntropyOptions{});
  const auto nll = run_nll(lp, y, s, static_cast<const T*>(nullptr), NllLossOptions{});
  EXPECT_TRUE(near_rel(nll.value, ce.value, Acc<T>::rtol, Acc<T>::atol * 4));
  EXPECT_TRUE(xkref::close(nll.loss, std::vector<double>(ce.loss.begin(), ce.loss.end()),
                        Acc<T>::rtol, Acc<T>::atol * 4));
}

// ================================================================================================
// log_softmax and softmax
// ================================================================================================

template <typename T>
class Softmax : public ::testing::Test {
 protected:
  Rng rng_{1234};
};
TYPED_TEST_SUITE(Softmax, FloatTypes);

TYPED_TEST(Softmax, MatchesReferenceOverLayouts) {
  using T = TypeParam;
  const Layout layouts[] = {{1, 7, 1}, {5, 4, 1}, {3, 6, 5}, {2, 1, 3}, {1, 3, 17}, {4, 100, 2}};
  for (const Layout& s : layouts) {
    for (const double sd : {1.0, 30.0}) {
      SCOPED_TRACE("(" + std::to_string(s.outer) + "," + std::to_string(s.C) + "," +
                   std::to_string(s.inner) + ") sd " + std::to_string(sd));
      const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, sd);
      std::vector<T> lp(x.size(), sentinel<T>()), p(x.size(), sentinel<T>());
      xentkit::log_softmax<T>(x.data(), s.outer, s.C, s.inner, lp.data());
      xentkit::softmax<T>(x.data(), s.outer, s.C, s.inner, p.data());
      const double scale = 1.0 + 2.0 * double(max_abs_of(x));
      EXPECT_TRUE(xkref::close(lp, xkref::log_softmax(x, s.outer, s.C, s.inner), Acc<T>::rtol,
                            Acc<T>::atol * scale));
      EXPECT_TRUE(
          xkref::close(p, xkref::softmax(x, s.outer, s.C, s.inner), Acc<T>::rtol, Acc<T>::atol));
      for (int64_t o = 0; o < s.outer; ++o)
        for (int64_t i = 0; i < s.inner; ++i) {
          double sum = 0.0;
          for (int64_t c = 0; c < s.C; ++c) sum += double(p[xkref::at(o, c, i, s.C, s.inner)]);
          EXPECT_TRUE(near_rel(sum, 1.0, 0.0, 10 * Acc<T>::atol));
        }
    }
  }
}

TYPED_TEST(Softmax, SingleClassAndInfiniteEntries) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  {
    const std::vector<T> x = {T(-3), T(50)};  // C = 1, two positions along inner
    std::vector<T> lp(2), p(2);
    xentkit::log_softmax<T>(x.data(), 1, 1, 2, lp.data());
    xentkit::softmax<T>(x.data(), 1, 1, 2, p.data());
    EXPECT_TRUE(xkref::close(lp, {0, 0}, 0.0, 0.0));
    EXPECT_TRUE(xkref::close(p, {1, 1}, 0.0, 0.0));
  }
  {
    // +inf entries share the mass; a -inf entry gets log 0.
    const std::vector<T> x = {inf, 0, inf, -inf};
    std::vector<T> lp(4), p(4);
    xentkit::log_softmax<T>(x.data(), 1, 4, 1, lp.data());
    xentkit::softmax<T>(x.data(), 1, 4, 1, p.data());
    EXPECT_TRUE(xkref::close(p, {0.5, 0, 0.5, 0}, Acc<T>::rtol, 0.0));
    EXPECT_TRUE(near_rel(lp[0], -std::log(2.0), Acc<T>::rtol, 0.0));
    EXPECT_TRUE(near_rel(lp[2], -std::log(2.0), Acc<T>::rtol, 0.0));
    EXPECT_EQ(lp[1], -inf);
    EXPECT_EQ(lp[3], -inf);
  }
  {
    // A single -inf among finite logits.
    const std::vector<T> x = {1, -inf, 1};
    std::vector<T> lp(3), p(3);
    xentkit::log_softmax<T>(x.data(), 1, 3, 1, lp.data());
    xentkit::softmax<T>(x.data(), 1, 3, 1, p.data());
    EXPECT_TRUE(xkref::close(p, {0.5, 0, 0.5}, Acc<T>::rtol, 0.0));
    EXPECT_EQ(lp[1], -inf);
    EXPECT_TRUE(near_rel(lp[0], -std::log(2.0), Acc<T>::rtol, 0.0));
  }
  {
    // Huge logits stay finite: (1000, 0) in the class axis, strided by inner = 2.
    const std::vector<T> x = {T(1000), T(0), T(0), T(1000)};
    std::vector<T> lp(4), p(4);
    xentkit::log_softmax<T>(x.data(), 1, 2, 2, lp.data());
    xentkit::softmax<T>(x.data(), 1, 2, 2, p.data());
    EXPECT_TRUE(xkref::close(lp, {0, -1000, -1000, 0}, Acc<T>::rtol, 0.0));
    EXPECT_TRUE(xkref::close(p, {1, 0, 0, 1}, 0.0, 0.0));
  }
}

// ================================================================================================
// Thread counts: bit-identical results
// ================================================================================================

template <typename T>
class PyTorchDeterministic : public ::testing::Test {
 protected:
  /// Runs `fn` with 1 and 3 threads and checks that every output is the same, bit for bit.
  template <typename Fn>
  Call<T> same_for_thread_counts(Fn&& fn) {
    xentkit::set_num_threads(1);
    const Call<T> one = fn();
    xentkit::set_num_threads(3);
    const Call<T> three = fn();
    EXPECT_TRUE(same_bits(one.value, three.value));
    EXPECT_TRUE(same_bytes(one.loss, three.loss));
    EXPECT_TRUE(same_bytes(one.grad, three.grad));
    return three;
  }
  ThreadCountGuard guard_;
  Rng rng_{2718};
};
TYPED_TEST_SUITE(PyTorchDeterministic, FloatTypes);

static_assert(600 * 500 >= xentkit::detail::kParallelThreshold);

TYPED_TEST(PyTorchDeterministic, CrossEntropyIndices) {
  using T = TypeParam;
  for (const Layout s : {Layout{600, 500, 1}, Layout{4, 10, 8000}}) {
    const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 4.0);
    const auto w = this->rng_.template uniform<T>(size_t(s.C), 0.25, 2.0);
    auto y = this->rng_.template classes<int32_t>(size_t(s.outer * s.inner), s.C);
    for (size_t i = 0; i < y.size(); i += 7) y[i] = -100;
    for (const Reduction red : {Reduction::mean, Reduction::none}) {
      CrossEntropyOptions opt;
      opt.label_smoothing = 0.1;
      opt.reduction = red;
      const auto got = this->same_for_thread_counts(
          [&] { return run_ce(x, y, s, w.data(), opt); });
      const auto want = xkref::cross_entropy(x, y, s.outer, s.C, s.inner, w.data(), opt);
      // Sums are accumulated in double: even in float the result is within 2e-6 of the
      // double-precision reference on the same inputs.
      EXPECT_TRUE(near_rel(got.value, want.reduced, std::is_same_v<T, float> ? 2e-6 : 1e-12,
                           0.0));
    }
  }
}

TYPED_TEST(PyTorchDeterministic, CrossEntropyProbabilitiesAndNll) {
  using T = TypeParam;
  const Layout s{600, 500, 1};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  const auto q = this->rng_.template uniform<T>(x.size(), 0.0, 0.01);
  const auto w = this->rng_.template uniform<T>(size_t(s.C), 0.25, 2.0);
  CrossEntropyOptions opt;
  opt.label_smoothing = 0.2;
  const auto got =
      this->same_for_thread_counts([&] { return run_ce_prob(x, q, s, w.data(), opt); });
  const auto want = xkref::cross_entropy_probabilities(x, q, s.outer, s.C, s.inner, w.data(), opt);
  EXPECT_TRUE(near_rel(got.value, want.reduced, 0.0,
                       xkref::reduced_tolerance<T>(want, Reduction::mean, 100.0)));
  const auto y = this->rng_.template classes<int64_t>(size_t(s.outer), s.C);
  const auto nll = this->same_for_thread_counts(
      [&] { return run_nll(x, y, s, w.data(), NllLossOptions{}); });
  const auto nll_want = xkref::nll_loss(x, y, s.outer, s.C, s.inner, w.data(), NllLossOptions{});
  EXPECT_TRUE(near_rel(nll.value, nll_want.reduced, 0.0,
                       xkref::reduced_tolerance<T>(nll_want, Reduction::mean, 10.0)));
}

TYPED_TEST(PyTorchDeterministic, BinaryCrossEntropies) {
  using T = TypeParam;
  const int64_t n = 300000;
  const auto p = this->rng_.template uniform<T>(size_t(n), 0.01, 0.99);
  const auto x = this->rng_.template normal<T>(size_t(n), 0.0, 3.0);
  const auto t = this->rng_.template uniform<T>(size_t(n));
  const auto w = this->rng_.template uniform<T>(1000, 0.5, 1.5);
  const auto pw = this->rng_.template uniform<T>(300, 0.5, 3.0);
  BinaryCrossEntropyOptions opt;
  const auto bce = this->same_for_thread_counts(
      [&] { return run_bce(p, t, Broadcast<T>{w.data(), 1, 1000}, opt); });
  const auto bce_want = xkref::binary_cross_entropy(p, t, Broadcast<T>{w.data(), 1, 1000},
                                                    Reduction::mean);
  EXPECT_TRUE(near_rel(bce.value, bce_want.reduced, 0.0,
                       xkref::reduced_tolerance<T>(bce_want, Reduction::mean, 10.0)));
  opt.reduction = Reduction::sum;
  const auto logits = this->same_for_thread_counts([&] {
    return run_bce_logits(x, t, Broadcast<T>{w.data(), 1, 1000},
                          Broadcast<T>{pw.data(), 1000, 300}, opt);
  });
  const auto logits_want = xkref::binary_cross_entropy_with_logits(
      x, t, Broadcast<T>{w.data(), 1, 1000}, Broadcast<T>{pw.data(), 1000, 300}, Reduction::sum);
  EXPECT_TRUE(near_rel(logits.value, logits_want.reduced, 0.0,
                       xkref::reduced_tolerance<T>(logits_want, Reduction::sum, 50.0)));
}

TYPED_TEST(PyTorchDeterministic, FirstBadTargetIsReported) {
  using T = TypeParam;
  const Layout s{600, 500, 1};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  auto y = this->rng_.template classes<int32_t>(size_t(s.outer), s.C);
  y[450] = 500;
  y[77] = -5;
  for (const int threads : {1, 3}) {
    xentkit::set_num_threads(threads);
    std::vector<T> grad(x.size(), sentinel<T>());
    try {
      xentkit::cross_entropy<T, int32_t>(x.data(), y.data(), s.outer, s.C, s.inner, nullptr,
                                         nullptr, grad.data());
      ADD_FAILURE() << "no label_error";
    } catch (const label_error& e) {
      EXPECT_EQ(e.index(), 77) << threads;
      EXPECT_EQ(e.value(), -5.0) << threads;
    }
    EXPECT_TRUE(untouched(grad));
  }
}

TYPED_TEST(PyTorchDeterministic, LogSoftmaxAndSoftmax) {
  using T = TypeParam;
  for (const Layout s : {Layout{600, 500, 1}, Layout{4, 10, 8000}}) {
    const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 4.0);
    for (const bool log : {false, true}) {
      this->same_for_thread_counts([&] {
        Call<T> r{T(0), std::vector<T>(x.size()), {}};
        if (log)
          xentkit::log_softmax<T>(x.data(), s.outer, s.C, s.inner, r.loss.data());
        else
          xentkit::softmax<T>(x.data(), s.outer, s.C, s.inner, r.loss.data());
        return r;
      });
    }
  }
}

}  // namespace
