// Inputs from the libFuzzer target (tests/fuzz) that stopped it, kept as regression tests. Each
// pins down the documented behaviour the input ran into.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "xentkit/xentkit.hpp"

namespace {

template <typename T>
class FuzzRegressions : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(FuzzRegressions, Types);

// Probability targets with no class (outer 2 x channels 0 x inner 2): four positions to score over
// no class is a ValueError (SPEC 1.5), raised before any loss is written; with no position at all
// the result is empty (loss 0 for "sum").
TYPED_TEST(FuzzRegressions, ProbabilityTargetsWithoutClasses) {
  using T = TypeParam;
  const T* none = nullptr;
  std::vector<T> loss(4, T(-7));
  xentkit::CrossEntropyOptions mean;
  mean.label_smoothing = 0.5;
  EXPECT_THROW(xentkit::cross_entropy<T>(none, none, 2, 0, 2, nullptr, loss.data(), nullptr, mean),
               xentkit::value_error);
  for (T v : loss) EXPECT_EQ(v, T(-7));
  xentkit::CrossEntropyOptions sum;
  sum.reduction = xentkit::Reduction::sum;
  EXPECT_EQ(xentkit::cross_entropy<T>(none, none, 0, 0, 2, nullptr, nullptr, nullptr, sum), T(0));
}

// Class indices whose class weights are all 0 with label smoothing: the mean divides by a zero
// weight sum, so the loss is not finite and neither is the gradient (as PyTorch); the
// per-position losses stay finite and every output is written.
TYPED_TEST(FuzzRegressions, SmoothedMeanOverZeroWeightSum) {
  using T = TypeParam;
  const std::vector<T> x = {T(0.5), T(-1), T(2), T(0.25), T(1), T(0), T(-0.5), T(3)};
  const std::vector<int32_t> y = {0, 1};
  const std::vector<T> w = {T(0), T(0), T(1), T(1)};
  const T sentinel = std::numeric_limits<T>::max();
  std::vector<T> loss(2, sentinel), grad(8, sentinel);
  xentkit::CrossEntropyOptions o;
  o.label_smoothing = 0.3;
  const T m = xentkit::cross_entropy<T, int32_t>(x.data(), y.data(), 2, 4, 1, w.data(), loss.data(),
                                                 grad.data(), o);
  EXPECT_FALSE(std::isfinite(m));
  for (T v : loss) EXPECT_TRUE(std::isfinite(v) && v != sentinel);
  for (T v : grad) EXPECT_FALSE(std::isfinite(v));
}

}  // namespace
