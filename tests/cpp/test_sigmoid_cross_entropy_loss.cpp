// xentkit::sigmoid_cross_entropy_loss: Caffe's unit tests re-created, then the normalization
// modes, ignore rules, extreme values, aliasing and empty inputs.

#include <cmath>
#include <limits>
#include <vector>

#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::Normalization;
using xentkit::SigmoidCrossEntropyLossOptions;

template <typename T>
class SigmoidLoss : public ::testing::Test {
 protected:
  // Caffe's fixture: scores (10, 5, 1, 1) ~ N(0, 1), targets ~ U[0, 1].
  static constexpr int64_t kOuter = 10;
  static constexpr int64_t kCount = 50;

  T loss_of(const std::vector<T>& x, const std::vector<T>& t, int64_t outer,
            const SigmoidCrossEntropyLossOptions& opt) {
    return xentkit::sigmoid_cross_entropy_loss<T>(x.data(), t.data(), outer,
                                                  int64_t(x.size()), nullptr, opt);
  }

  Rng rng_{1701};
};
TYPED_TEST_SUITE(SigmoidLoss, FloatTypes);

/// Caffe's naive reference: -t log(p + [t == 0]) - (1 - t) log(1 - p + [t == 1]), summed, / num.
double caffe_naive_reference(const std::vector<double>& x, const std::vector<double>& t,
                             int64_t num) {
  double loss = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double p = 1.0 / (1.0 + std::exp(-x[i]));
    loss -= t[i] * std::log(p + (t[i] == 0.0 ? 1.0 : 0.0));
    loss -= (1.0 - t[i]) * std::log(1.0 - p + (t[i] == 1.0 ? 1.0 : 0.0));
  }
  return loss / double(num);
}

TYPED_TEST(SigmoidLoss, CaffeLossMatchesNaiveReferenceOverRandomTrials) {
  using T = TypeParam;
  SigmoidCrossEntropyLossOptions weighted;
  weighted.loss_weight = 3.7;
  for (int trial = 0; trial < 100; ++trial) {
    SCOPED_TRACE(trial);
    const auto x = this->rng_.template normal<T>(this->kCount);
    const auto t = this->rng_.template uniform<T>(this->kCount);
    const std::vector<double> xd(x.begin(), x.end()), td(t.begin(), t.end());
    const double want = caffe_naive_reference(xd, td, this->kOuter);

    const auto r = run_sigmoid(x, t, this->kOuter, weighted);
    // The returned loss is the layer's top: unweighted, normalized by the batch size.
    ASSERT_TRUE(near_rel(r.loss, want, std::is_same_v<T, float> ? 2e-6 : 1e-10, 0.0));
    // loss_weight leaves the loss alone (bit for bit) and scales the diff.
    const auto unit = run_sigmoid(x, t, this->kOuter, SigmoidCrossEntropyLossOptions{});
    ASSERT_TRUE(same_bits(r.loss, unit.loss));
    std::vector<double> scaled(unit.diff.begin(), unit.diff.end());
    for (auto& v : scaled) v *= 3.7;
    ASSERT_TRUE(all_close(r.diff, scaled, Tol<T>::rtol, 0.0));
  }
}

TYPED_TEST(SigmoidLoss, CaffeGradient) {
  using T = TypeParam;
  SigmoidCrossEntropyLossOptions opt;
  opt.loss_weight = 3.7;
  const auto x = this->rng_.template normal<T>(this->kCount);
  const auto t = this->rng_.template uniform<T>(this->kCount);
  const auto r = run_sigmoid(x, t, this->kOuter, opt);
  // Caffe's expected gradient for this fixture: loss_weight * (sigmoid(x) - t) / 10.
  std::vector<double> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    want[i] = 3.7 * (1.0 / (1.0 + std::exp(-double(x[i]))) - double(t[i])) / 10.0;
  }
  EXPECT_TRUE(all_close(r.diff, want, Tol<T>::rtol, Tol<T>::atol));
  EXPECT_TRUE(check_gradient(
      x, r.diff, opt.loss_weight,
      [&](const std::vector<T>& xs) { return this->loss_of(xs, t, this->kOuter, opt); },
      Tol<T>::h, Tol<T>::threshold));
}

TYPED_TEST(SigmoidLoss, CaffeIgnoreGradient) {
  using T = TypeParam;
  SigmoidCrossEntropyLossOptions opt;
  opt.ignore_label = -1;
  const auto x = this->rng_.template normal<T>(this->kCount);
  auto t = this->rng_.template uniform<T>(this->kCount);
  const int64_t half = this->kCount / 2;
  for (int64_t i = 0; i < half; ++i) t[size_t(i)] = T(-1);
  const auto r = run_sigmoid(x, t, this->kOuter, opt);
  for (int64_t i = 0; i < half; ++i) {
    EXPECT_EQ(r.diff[size_t(i)], T(0)) << i;
    EXPECT_NE(r.diff[size_t(i + half)], T(0)) << i + half;
  }
  // The loss is the sum over the non-ignored half, still divided by the batch size (default).
  const auto ref = sigmoid_reference(x, t, this->kOuter, opt);
  EXPECT_EQ(ref.valid, half);
  EXPECT_EQ(ref.normalizer, 10.0);
  EXPECT_TRUE(near_rel(r.loss, ref.loss, Tol<T>::rtol, 0.0));
  EXPECT_TRUE(check_gradient(
      x, r.diff, opt.loss_weight,
      [&](const std::vector<T>& xs) { return this->loss_of(xs, t, this->kOuter, opt); },
      Tol<T>::h, Tol<T>::threshold));
}

TYPED_TEST(SigmoidLoss, DefaultOptionsAreCaffes) {
  using T = TypeParam;
  const SigmoidCrossEntropyLossOptions defaults;
  EXPECT_EQ(defaults.normalization, Normalization::batch_size);
  EXPECT_FALSE(defaults.ignore_label.has_value());
  EXPECT_EQ(defaults.loss_weight, 1.0);
  // Calling without options is the same as calling with explicit batch_size normalization.
  const auto x = this->rng_.template normal<T>(24);
  const auto t = this->rng_.template uniform<T>(24);
  const T implicit = xentkit::sigmoid_cross_entropy_loss<T>(x.data(), t.data(), 4, 24, nullptr);
  SigmoidCrossEntropyLossOptions explicit_opt;
  explicit_opt.normalization = Normalization::batch_size;
  EXPECT_TRUE(same_bits(implicit, this->loss_of(x, t, 4, explicit_opt)));
  EXPECT_TRUE(near_rel(implicit, sigmoid_reference(x, t, 4, explicit_opt).loss, Tol<T>::rtol, 0));
}

TYPED_TEST(SigmoidLoss, EveryNormalizationWithAndWithoutIgnore) {
  using T = TypeParam;
  // Scores of shape (6, 4, 3): outer 6, inner 12. A third of the targets are ignored (-1 and
  // fractional values that truncate to -1).
  const int64_t outer = 6, count = 72;
  const auto x = this->rng_.template normal<T>(size_t(count), 0.0, 2.0);
  auto t = this->rng_.template uniform<T>(size_t(count));
  for (size_t i = 0; i < t.size(); i += 3) t[i] = (i % 2) ? T(-1) : T(-1.75);
  for (const auto mode : kAllModes) {
    for (const bool with_ignore : {false, true}) {
      SCOPED_TRACE(std::string(xentkit::normalization_name(mode)) +
                   (with_ignore ? " with ignore" : " without ignore"));
      SigmoidCrossEntropyLossOptions opt;
      opt.normalization = mode;
      opt.loss_weight = 2.5;
      if (with_ignore) opt.ignore_label = -1;
      const auto ref = sigmoid_reference(x, t, outer, opt);
      const double z = mode == Normalization::full       ? 72.0
                       : mode == Normalization::valid    ? (with_ignore ? 48.0 : 72.0)
                       : mode == Normalization::batch_size ? 6.0
                                                           : 1.0;
      ASSERT_EQ(ref.normalizer, z);
      const auto r = run_sigmoid(x, t, outer, opt);
      EXPECT_TRUE(near_rel(r.loss, ref.loss, Tol<T>::rtol, 0.0));
      EXPECT_TRUE(all_close(r.diff, ref.diff, Tol<T>::rtol, Tol<T>::atol * 2.5 / z));
      EXPECT_TRUE(check_gradient(
          x, r.diff, opt.loss_weight,
          [&](const std::vector<T>& xs) { return this->loss_of(xs, t, outer, opt); }, Tol<T>::h,
          Tol<T>::threshold));
      if (with_ignore) {
        for (size_t i = 0; i < t.size(); i += 3) EXPECT_EQ(r.diff[i], T(0)) << i;
      }
    }
  }
}

TYPED_TEST(SigmoidLoss, AllIgnoredGivesZeroLossAndZeroDiff) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(20);
  const std::vector<T> t(20, T(-1));
  for (const auto mode : kAllModes) {
    SCOPED_TRACE(xentkit::normalization_name(mode));
    SigmoidCrossEntropyLossOptions opt;
    opt.normalization = mode;
    opt.ignore_label = -1;
    const auto r = run_sigmoid(x, t, 5, opt);
    EXPECT_FALSE(std::isnan(r.loss));
    EXPECT_EQ(r.loss, T(0));
    EXPECT_TRUE(all_zero(r.diff));
  }
}

TYPED_TEST(SigmoidLoss, IgnoreTestsTheTruncatedTarget) {
  using T = TypeParam;
  const std::vector<T> x = {T(0.3), T(-1.2), T(2.0), T(0.7), T(-0.4), T(1.1)};
  // ignore_label -1: -1.0, -1.5 and -1.99 truncate to -1; -0.5 truncates to 0 and is scored.
  {
    const std::vector<T> t = {T(-1.0), T(-1.5), T(-1.99), T(-0.5), T(0.25), T(1.0)};
    SigmoidCrossEntropyLossOptions opt;
    opt.ignore_label = -1;
    opt.normalization = Normalization::none;
    const auto r = run_sigmoid(x, t, 1, opt);
    EXPECT_EQ(r.diff[0], T(0));
    EXPECT_EQ(r.diff[1], T(0));
    EXPECT_EQ(r.diff[2], T(0));
    EXPECT_NE(r.diff[3], T(0));
    double want = 0.0;
    for (size_t i = 3; i < 6; ++i) {
      const double xi = x[i], ti = t[i];
      want += std::max(xi, 0.0) - xi * ti + std::log1p(std::exp(-std::fabs(xi)));
    }
    EXPECT_TRUE(near_rel(r.loss, want, Tol<T>::rtol, 0.0));
    // The soft target -0.5 enters the formula as it is: diff = sigmoid(x) - t.
    EXPECT_TRUE(near_rel(r.diff[3], 1.0 / (1.0 + std::exp(-double(x[3]))) + 0.5, Tol<T>::rtol,
                         0.0));
  }
  // ignore_label 0: every soft target in (-1, 1) is ignored, 1.0 is not.
  {
    const std::vector<T> t = {T(0.0), T(0.5), T(0.999), T(-0.9), T(1.0), T(1.0)};
    SigmoidCrossEntropyLossOptions opt;
    opt.ignore_label = 0;
    opt.normalization = Normalization::valid;
    const auto r = run_sigmoid(x, t, 1, opt);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(r.diff[i], T(0)) << i;
    // t = 1 for x[4] < 0 and x[5] > 0: l = -x + log1p(exp(x)) and log1p(exp(-x)).
    const double x4 = x[4], x5 = x[5];
    const double l4 = -x4 + std::log1p(std::exp(x4));
    const double l5 = std::log1p(std::exp(-x5));
    EXPECT_TRUE(near_rel(r.loss, (l4 + l5) / 2.0, Tol<T>::rtol, 0.0));
  }
}

TYPED_TEST(SigmoidLoss, TargetsAreNotRangeChecked) {
  using T = TypeParam;
  // x = 3, t = 2: l = 3 - 6 + log1p(e^-3), negative; diff = sigmoid(3) - 2.
  const std::vector<T> x = {T(3)};
  const std::vector<T> t = {T(2)};
  SigmoidCrossEntropyLossOptions opt;
  const auto r = run_sigmoid(x, t, 1, opt);
  EXPECT_TRUE(near_rel(r.loss, -3.0 + std::log1p(std::exp(-3.0)), Tol<T>::rtol, 0.0));
  EXPECT_TRUE(near_rel(r.diff[0], 1.0 / (1.0 + std::exp(-3.0)) - 2.0, Tol<T>::rtol, 0.0));
}

TYPED_TEST(SigmoidLoss, ConfidentPredictionsKeepRelativePrecision) {
  using T = TypeParam;
  // sigmoid(40) rounds to 1; the loss log1p(e^-40) and the gradient -e^-40/(1+e^-40) are tiny
  // but must keep their relative precision.
  const double e40 = std::exp(-40.0);
  const std::vector<T> x = {T(40), T(-40)};
  const std::vector<T> t = {T(1), T(0)};
  SigmoidCrossEntropyLossOptions opt;
  opt.normalization = Normalization::none;
  const auto r = run_sigmoid(x, t, 1, opt);
  const double rtol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  EXPECT_TRUE(near_rel(r.loss, 2.0 * std::log1p(e40), rtol, 0.0));
  EXPECT_TRUE(near_rel(r.diff[0], -e40 / (1.0 + e40), rtol, 0.0));
  EXPECT_TRUE(near_rel(r.diff[1], e40 / (1.0 + e40), rtol, 0.0));
}

TYPED_TEST(SigmoidLoss, InfiniteScoresGiveTheLimits) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  SigmoidCrossEntropyLossOptions opt;
  opt.normalization = Normalization::none;
  auto one = [&](T x, T t) { return run_sigmoid(std::vector<T>{x}, std::vector<T>{t}, 1, opt); };

  const auto a = one(inf, T(1));  // sigmoid = 1 = t
  EXPECT_EQ(a.loss, T(0));
  EXPECT_EQ(a.diff[0], T(0));
  const auto b = one(-inf, T(0));  // sigmoid = 0 = t
  EXPECT_EQ(b.loss, T(0));
  EXPECT_EQ(b.diff[0], T(0));
  const auto c = one(inf, T(0));  // certain and wrong
  EXPECT_EQ(c.loss, inf);
  EXPECT_EQ(c.diff[0], T(1));
  const auto d = one(-inf, T(1));
  EXPECT_EQ(d.loss, inf);
  EXPECT_EQ(d.diff[0], T(-1));
  // A finite element next to an infinite one with a matching target keeps its own loss.
  const std::vector<T> x = {inf, T(0.5)};
  const std::vector<T> t = {T(1), T(0)};
  const auto e = run_sigmoid(x, t, 1, opt);
  EXPECT_TRUE(near_rel(e.loss, 0.5 + std::log1p(std::exp(-0.5)), Tol<T>::rtol, 0.0));
}

TYPED_TEST(SigmoidLoss, NanScoreGivesNanLoss) {
  using T = TypeParam;
  auto x = this->rng_.template normal<T>(8);
  const auto t = this->rng_.template uniform<T>(8);
  x[5] = std::numeric_limits<T>::quiet_NaN();
  const auto r = run_sigmoid(x, t, 2, SigmoidCrossEntropyLossOptions{});
  EXPECT_TRUE(std::isnan(r.loss));
  EXPECT_TRUE(std::isnan(r.diff[5]));
  EXPECT_FALSE(std::isnan(r.diff[4]));
}

TYPED_TEST(SigmoidLoss, InPlaceDiffMatchesSeparateBuffer) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(60);
  auto t = this->rng_.template uniform<T>(60);
  t[7] = T(-1);
  SigmoidCrossEntropyLossOptions opt;
  opt.ignore_label = -1;
  opt.normalization = Normalization::valid;
  opt.loss_weight = 1.5;
  const auto separate = run_sigmoid(x, t, 3, opt);
  std::vector<T> inplace = x;
  const T loss = xentkit::sigmoid_cross_entropy_loss<T>(inplace.data(), t.data(), 3, 60,
                                                        inplace.data(), opt);
  EXPECT_TRUE(same_bits(loss, separate.loss));
  EXPECT_TRUE(same_bytes(inplace, separate.diff));
}

TYPED_TEST(SigmoidLoss, NullDiffReturnsTheSameLoss) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(60);
  auto t = this->rng_.template uniform<T>(60);
  t[0] = T(-1);
  t[31] = T(-1);
  for (const auto mode : kAllModes) {
    SCOPED_TRACE(xentkit::normalization_name(mode));
    SigmoidCrossEntropyLossOptions opt;
    opt.normalization = mode;
    opt.ignore_label = -1;
    const auto with_diff = run_sigmoid(x, t, 4, opt);
    EXPECT_TRUE(same_bits(this->loss_of(x, t, 4, opt), with_diff.loss));
  }
}

TYPED_TEST(SigmoidLoss, EmptyInputsReturnZeroWithoutTouchingMemory) {
  using T = TypeParam;
  std::vector<T> diff(4, sentinel<T>());
  // outer 0 (no batch) and outer 3 with no element per sample.
  EXPECT_EQ(xentkit::sigmoid_cross_entropy_loss<T>(nullptr, nullptr, 0, 0, diff.data()), T(0));
  EXPECT_EQ(xentkit::sigmoid_cross_entropy_loss<T>(nullptr, nullptr, 3, 0, diff.data()), T(0));
  std::vector<T> x(4, sentinel<T>()), t(4, sentinel<T>());
  SigmoidCrossEntropyLossOptions opt;
  opt.normalization = Normalization::valid;
  EXPECT_EQ(xentkit::sigmoid_cross_entropy_loss<T>(x.data(), t.data(), 0, 0, x.data(), opt), T(0));
  EXPECT_TRUE(untouched(diff));
  EXPECT_TRUE(untouched(x));
}

TYPED_TEST(SigmoidLoss, OuterDefinesTheBatchNormalizer) {
  using T = TypeParam;
  // The same 24 elements seen as (2, 12), (4, 6) and (24, 1): only batch_size changes.
  const auto x = this->rng_.template normal<T>(24);
  const auto t = this->rng_.template uniform<T>(24);
  SigmoidCrossEntropyLossOptions opt;
  opt.normalization = Normalization::none;
  const double total = this->loss_of(x, t, 1, opt);
  opt.normalization = Normalization::batch_size;
  for (const int64_t outer : {2, 4, 24}) {
    EXPECT_TRUE(near_rel(this->loss_of(x, t, outer, opt), total / double(outer), Tol<T>::rtol, 0));
  }
  opt.normalization = Normalization::full;
  for (const int64_t outer : {2, 4, 24}) {
    EXPECT_TRUE(near_rel(this->loss_of(x, t, outer, opt), total / 24.0, Tol<T>::rtol, 0));
  }
}

}  // namespace
