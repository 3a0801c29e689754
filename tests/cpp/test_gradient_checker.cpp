// The finite-difference gradient checker and the references used by the other tests: they accept
// correct gradients and reject wrong ones.

#include <cmath>
#include <limits>
#include <vector>

#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;

template <typename T>
class GradientChecker : public ::testing::Test {};
TYPED_TEST_SUITE(GradientChecker, FloatTypes);

/// f(x) = sum(x^3) / 3 + sum(sin x), gradient x^2 + cos x.
template <typename T>
T cubic_loss(const std::vector<T>& x) {
  double s = 0.0;
  for (T v : x) s += double(v) * double(v) * double(v) / 3.0 + std::sin(double(v));
  return static_cast<T>(s);
}

TYPED_TEST(GradientChecker, AcceptsTheTrueGradient) {
  using T = TypeParam;
  Rng rng(1);
  const auto x = rng.normal<T>(30, 0.0, 2.0);
  for (const double lw : {1.0, 2.0, 3.7}) {
    std::vector<T> g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      g[i] = static_cast<T>(lw * (double(x[i]) * double(x[i]) + std::cos(double(x[i]))));
    }
    EXPECT_TRUE(check_gradient(x, g, lw, cubic_loss<T>, Tol<T>::h, Tol<T>::threshold));
  }
}

TYPED_TEST(GradientChecker, RejectsWrongGradients) {
  using T = TypeParam;
  Rng rng(2);
  const auto x = rng.normal<T>(30, 0.0, 2.0);
  std::vector<T> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    g[i] = static_cast<T>(double(x[i]) * double(x[i]) + std::cos(double(x[i])));
  }
  auto wrong = g;
  wrong[17] = static_cast<T>(1.1 * double(wrong[17]) + 0.05);
  EXPECT_FALSE(check_gradient(x, wrong, 1.0, cubic_loss<T>, Tol<T>::h, Tol<T>::threshold));
  // The gradient of loss_weight * loss, checked with the wrong weight.
  EXPECT_FALSE(check_gradient(x, g, 1.5, cubic_loss<T>, Tol<T>::h, Tol<T>::threshold));
  auto nan = g;
  nan[3] = std::numeric_limits<T>::quiet_NaN();
  EXPECT_FALSE(check_gradient(x, nan, 1.0, cubic_loss<T>, Tol<T>::h, Tol<T>::threshold));
  EXPECT_FALSE(check_gradient(x, std::vector<T>(5), 1.0, cubic_loss<T>, Tol<T>::h,
                              Tol<T>::threshold));
}

TYPED_TEST(GradientChecker, RejectsALibraryDiffWithTheWrongLossWeight) {
  using T = TypeParam;
  Rng rng(3);
  const auto x = rng.normal<T>(20, 0.0, 2.0);
  const auto t = rng.uniform<T>(20);
  xentkit::SigmoidCrossEntropyLossOptions opt;
  opt.normalization = xentkit::Normalization::none;
  opt.loss_weight = 3.0;
  const auto r = run_sigmoid(x, t, 1, opt);
  auto loss_of = [&](const std::vector<T>& xs) {
    return xentkit::sigmoid_cross_entropy_loss<T>(xs.data(), t.data(), 1, 20, nullptr, opt);
  };
  EXPECT_TRUE(check_gradient(x, r.diff, 3.0, loss_of, Tol<T>::h, Tol<T>::threshold));
  EXPECT_FALSE(check_gradient(x, r.diff, 1.0, loss_of, Tol<T>::h, Tol<T>::threshold));
}

TEST(References, NormalizerIsMaxOfOneAndZ) {
  using xentkit::Normalization;
  EXPECT_EQ(reference_normalizer(Normalization::full, 4, 6, 3), 24.0);
  EXPECT_EQ(reference_normalizer(Normalization::valid, 4, 6, 3), 3.0);
  EXPECT_EQ(reference_normalizer(Normalization::valid, 4, 6, 0), 1.0);
  EXPECT_EQ(reference_normalizer(Normalization::batch_size, 4, 6, 3), 4.0);
  EXPECT_EQ(reference_normalizer(Normalization::batch_size, 0, 6, 0), 1.0);
  EXPECT_EQ(reference_normalizer(Normalization::none, 4, 6, 3), 1.0);
}

TEST(References, SoftmaxReferenceOnAHandExample) {
  // One position, logits (0, ln 2, ln 5): p = (1, 2, 5) / 8; label 1: loss = ln 4.
  const std::vector<double> x = {0.0, std::log(2.0), std::log(5.0)};
  xentkit::SoftmaxWithLossOptions opt;
  const auto r = softmax_reference(x, std::vector<int>{1}, 1, 3, 1, opt);
  EXPECT_NEAR(r.loss, std::log(4.0), 1e-15);
  EXPECT_NEAR(r.prob[0], 1.0 / 8, 1e-16);
  EXPECT_NEAR(r.diff[1], 2.0 / 8 - 1.0, 1e-15);
  EXPECT_NEAR(r.diff[2], 5.0 / 8, 1e-15);
}

TEST(References, SigmoidReferenceOnAHandExample) {
  // x = 0: l = ln 2 for any t; diff = 1/2 - t.
  const std::vector<double> x = {0.0, 0.0};
  const std::vector<double> t = {0.25, 1.0};
  xentkit::SigmoidCrossEntropyLossOptions opt;
  const auto r = sigmoid_reference(x, t, 2, opt);
  EXPECT_NEAR(r.loss, std::log(2.0), 1e-15);  // (ln 2 + ln 2) / 2
  EXPECT_NEAR(r.diff[0], 0.125, 1e-16);
  EXPECT_NEAR(r.diff[1], -0.25, 1e-16);
}

}  // namespace
