// The TensorFlow-compatible functions: sigmoid_cross_entropy_with_logits,
// softmax_cross_entropy_with_logits (any class axis, the true derivative for label rows that do
// not sum to 1) and sparse_softmax_cross_entropy_with_logits (integer labels of every type, label
// errors). Compared with double-precision references, finite differences of the gradient of the
// summed losses, the limits at infinite logits, and across thread counts.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "pytorch_reference.hpp"
#include "xentkit/detail/parallel.hpp"
#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::label_error;
using xkref::Acc;

constexpr double kInf = std::numeric_limits<double>::infinity();

template <typename T>
struct Out {
  std::vector<T> loss;
  std::vector<T> grad;
};

template <typename T>
T max_abs_of(const std::vector<T>& v) {
  T m = 0;
  for (T e : v) m = std::max<T>(m, std::fabs(e));
  return m;
}

/// Per-element losses to rtol + atol * loss_scale; gradient to rtol + atol * its largest entry.
template <typename T>
void expect_matches(const Out<T>& got, const xkref::Result& want, double loss_scale) {
  EXPECT_TRUE(xkref::close(got.loss, want.loss, Acc<T>::rtol, Acc<T>::atol * loss_scale))
      << "losses";
  EXPECT_TRUE(xkref::close(got.grad, want.grad, Acc<T>::rtol,
                        Acc<T>::atol * std::max(xkref::max_abs(want.grad), 1e-300)))
      << "gradient";
}

template <typename T>
double sum_of(const std::vector<T>& v) {
  double s = 0.0;
  for (T e : v) s += double(e);
  return s;
}

// ================================================================================================
// sigmoid_cross_entropy_with_logits
// ================================================================================================

template <typename T>
Out<T> run_sigmoid_tf(const std::vector<T>& z, const std::vector<T>& x) {
  Out<T> r{std::vector<T>(x.size(), sentinel<T>()), std::vector<T>(x.size(), sentinel<T>())};
  xentkit::sigmoid_cross_entropy_with_logits<T>(z.data(), x.data(), int64_t(x.size()),
                                                r.loss.data(), r.grad.data());
  return r;
}

template <typename T>
class TfSigmoid : public ::testing::Test {
 protected:
  Rng rng_{606};
};
TYPED_TEST_SUITE(TfSigmoid, FloatTypes);

TYPED_TEST(TfSigmoid, MatchesReference) {
  using T = TypeParam;
  for (const double sd : {1.0, 4.0, 40.0}) {
    SCOPED_TRACE(sd);
    const auto x = this->rng_.template normal<T>(500, 0.0, sd);
    auto z = this->rng_.template uniform<T>(500);
    for (size_t i = 0; i < z.size(); i += 5) z[i] = T(i % 2);
    const auto got = run_sigmoid_tf(z, x);
    expect_matches(got, xkref::tf_sigmoid(z, x), 1.0 + double(max_abs_of(x)));
  }
  // Labels outside [0, 1] are not checked: the formula applies.
  const std::vector<T> x = {T(0.5), T(-3), T(2)}, z = {2, T(-1), T(1.5)};
  const auto got = run_sigmoid_tf(z, x);
  expect_matches(got, xkref::tf_sigmoid(z, x), 4.0);
  EXPECT_LT(got.loss[0], T(0));
}

TYPED_TEST(TfSigmoid, InfiniteLogitsGiveTheLimits) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  const std::vector<T> x = {inf, -inf, inf, -inf, inf, -inf};
  const std::vector<T> z = {1, 0, 0, 1, T(0.25), T(0.25)};
  const auto got = run_sigmoid_tf(z, x);
  EXPECT_TRUE(xkref::close(got.loss, {0, 0, kInf, kInf, kInf, kInf}, 0.0, 0.0));
  EXPECT_TRUE(xkref::close(got.grad, {0, 0, 1, -1, 0.75, -0.25}, 0.0, 0.0));
  // NaN in gives NaN out.
  const std::vector<T> xn = {std::numeric_limits<T>::quiet_NaN(), T(1)}, zn = {1, 0};
  const auto nan = run_sigmoid_tf(zn, xn);
  EXPECT_TRUE(std::isnan(nan.loss[0]));
  EXPECT_TRUE(std::isnan(nan.grad[0]));
  EXPECT_TRUE(std::isfinite(nan.loss[1]));
}

TYPED_TEST(TfSigmoid, AtZeroTheGradientIsHalfMinusLabel) {
  using T = TypeParam;
  const std::vector<T> x = {0, 0, T(-0.0)}, z = {0, 1, T(0.3)};
  const auto got = run_sigmoid_tf(z, x);
  EXPECT_TRUE(xkref::close(got.grad, {0.5, -0.5, 0.2}, Acc<T>::rtol, 0.0));
  EXPECT_TRUE(xkref::close(got.loss, std::vector<double>(3, std::log(2.0)), Acc<T>::rtol, 0.0));
}

TYPED_TEST(TfSigmoid, OutputsAreOptionalAndGradMayAliasLogits) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(64, 0.0, 3.0);
  const auto z = this->rng_.template uniform<T>(64);
  const auto ref = run_sigmoid_tf(z, x);
  std::vector<T> loss(64, sentinel<T>());
  xentkit::sigmoid_cross_entropy_with_logits<T>(z.data(), x.data(), 64, loss.data(), nullptr);
  EXPECT_TRUE(same_bytes(loss, ref.loss));
  auto inplace = x;
  xentkit::sigmoid_cross_entropy_with_logits<T>(z.data(), inplace.data(), 64, nullptr,
                                                inplace.data());
  EXPECT_TRUE(same_bytes(inplace, ref.grad));
  // Empty input: nothing to do, nothing written.
  xentkit::sigmoid_cross_entropy_with_logits<T>(z.data(), x.data(), 0, loss.data(), nullptr);
  EXPECT_TRUE(same_bytes(loss, ref.loss));
}

TEST(TfSigmoidGradient, FiniteDifferences) {
  Rng rng(17);
  const auto x = rng.normal<double>(120, 0.0, 3.0);
  const auto z = rng.uniform<double>(120, -0.2, 1.2);
  const auto got = run_sigmoid_tf(z, x);
  EXPECT_TRUE(check_gradient(
      x, got.grad, 1.0,
      [&](const std::vector<double>& xs) {
        std::vector<double> loss(xs.size());
        xentkit::sigmoid_cross_entropy_with_logits<double>(z.data(), xs.data(),
                                                           int64_t(xs.size()), loss.data(),
                                                           nullptr);
        return sum_of(loss);
      },
      Tol<double>::h, Tol<double>::threshold));
}

// ================================================================================================
// softmax_cross_entropy_with_logits
// ================================================================================================

struct Layout {
  int64_t outer, C, inner;
};
// Class axis last ((N, C)), in the middle ((N, C, d)), first ((C, d)), unbatched, one class.
constexpr Layout kLayouts[] = {{6, 5, 1}, {3, 4, 7}, {1, 6, 9}, {1, 8, 1}, {5, 1, 2}};

std::string describe(const Layout& s) {
  return "(" + std::to_string(s.outer) + "," + std::to_string(s.C) + "," +
         std::to_string(s.inner) + ")";
}

template <typename T>
Out<T> run_softmax_tf(const std::vector<T>& z, const std::vector<T>& x, const Layout& s) {
  Out<T> r{std::vector<T>(size_t(s.outer * s.inner), sentinel<T>()),
           std::vector<T>(x.size(), sentinel<T>())};
  xentkit::softmax_cross_entropy_with_logits<T>(z.data(), x.data(), s.outer, s.C, s.inner,
                                                r.loss.data(), r.grad.data());
  return r;
}

template <typename T>
class TfSoftmax : public ::testing::Test {
 protected:
  /// Label rows that sum to 1, rows that do not, rows with negative entries.
  std::vector<std::pair<std::string, std::vector<T>>> labels(const Layout& s) {
    const size_t n = size_t(s.outer * s.C * s.inner);
    const auto p = xkref::softmax(rng_.template normal<T>(n, 0.0, 2.0), s.outer, s.C, s.inner);
    return {{"normalised", std::vector<T>(p.begin(), p.end())},
            {"unnormalised", rng_.template uniform<T>(n, 0.0, 1.0)},
            {"signed", rng_.template uniform<T>(n, -0.5, 1.0)}};
  }
  Rng rng_{707};
};
TYPED_TEST_SUITE(TfSoftmax, FloatTypes);

TYPED_TEST(TfSoftmax, MatchesReferenceOverLayouts) {
  using T = TypeParam;
  for (const Layout& s : kLayouts) {
    const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 3.0);
    const double scale = (1.0 + 2.0 * double(max_abs_of(x))) * double(s.C);
    for (const auto& [name, z] : this->labels(s)) {
      SCOPED_TRACE(describe(s) + " " + name);
      expect_matches(run_softmax_tf(z, x, s), xkref::tf_softmax(z, x, s.outer, s.C, s.inner),
                     scale);
    }
  }
}

TYPED_TEST(TfSoftmax, GradientIsSoftmaxMinusLabelsWhenRowsSumToOne) {
  using T = TypeParam;
  const Layout s{4, 6, 3};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner), 0.0, 2.0);
  const auto z = this->labels(s)[0].second;
  const auto got = run_softmax_tf(z, x, s);
  std::vector<T> p(x.size());
  xentkit::softmax<T>(x.data(), s.outer, s.C, s.inner, p.data());
  std::vector<double> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = double(p[i]) - double(z[i]);
  EXPECT_TRUE(xkref::close(got.grad, want, Acc<T>::rtol, 10 * Acc<T>::atol));
}

TYPED_TEST(TfSoftmax, GradientIsTheTrueDerivativeForAnyLabels) {
  using T = TypeParam;
  const Layout s{3, 5, 2};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  // Rows summing to 3: loss tripled, gradient 3 p - 3 z (TF's fused kernel would give p - 3 z).
  const auto z1 = this->labels(s)[0].second;
  std::vector<T> z3(z1);
  for (auto& v : z3) v *= T(3);
  const auto a = run_softmax_tf(z1, x, s);
  const auto b = run_softmax_tf(z3, x, s);
  std::vector<double> tripled(a.loss.begin(), a.loss.end());
  for (auto& v : tripled) v *= 3.0;
  EXPECT_TRUE(xkref::close(b.loss, tripled, Acc<T>::rtol, Acc<T>::atol));
  const auto p = xkref::softmax(x, s.outer, s.C, s.inner);
  std::vector<double> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = 3.0 * (p[i] - double(z1[i]));
  EXPECT_TRUE(xkref::close(b.grad, want, Acc<T>::rtol, 10 * Acc<T>::atol));
  if constexpr (std::is_same_v<T, double>) {
    for (const auto& labels : this->labels(s)) {
      SCOPED_TRACE(labels.first);
      const std::vector<T>& z = labels.second;
      const auto got = run_softmax_tf(z, x, s);
      EXPECT_TRUE(check_gradient(
          x, got.grad, 1.0,
          [&](const std::vector<T>& xs) {
            std::vector<T> loss(size_t(s.outer * s.inner));
            xentkit::softmax_cross_entropy_with_logits<T>(z.data(), xs.data(), s.outer, s.C,
                                                          s.inner, loss.data(), nullptr);
            return sum_of(loss);
          },
          Tol<T>::h, Tol<T>::threshold));
    }
  }
}

TYPED_TEST(TfSoftmax, InfiniteLogits) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  const Layout row{1, 3, 1};
  {
    // The +inf logit takes all the mass.
    const auto r = run_softmax_tf<T>({1, 0, 0}, {inf, 0, 0}, row);
    EXPECT_EQ(r.loss[0], T(0));
    EXPECT_TRUE(xkref::close(r.grad, {0, 0, 0}, 0.0, 0.0));
    EXPECT_EQ(run_softmax_tf<T>({0, 1, 0}, {inf, 0, 0}, row).loss[0], inf);
  }
  {
    // Two +inf logits share it.
    const auto r = run_softmax_tf<T>({T(0.5), T(0.5), 0}, {inf, inf, 0}, row);
    EXPECT_TRUE(near_rel(r.loss[0], std::log(2.0), Acc<T>::rtol, 0.0));
    EXPECT_TRUE(xkref::close(r.grad, {0, 0, 0}, 0.0, Acc<T>::atol));
  }
  {
    // A -inf logit with label 0 adds nothing; with a label share it is inf.
    const std::vector<T> x = {1, -inf, 0}, z = {T(0.25), 0, T(0.75)};
    const auto r = run_softmax_tf(z, x, row);
    const auto want = xkref::tf_softmax(z, x, 1, 3, 1);
    EXPECT_TRUE(std::isfinite(double(r.loss[0])));
    expect_matches(r, want, 4.0);
    EXPECT_EQ(r.grad[1], T(0));
    EXPECT_EQ(run_softmax_tf<T>({T(0.5), T(0.5), 0}, x, row).loss[0], inf);
  }
}

TYPED_TEST(TfSoftmax, GradMayAliasLogitsAndLossIsOptional) {
  using T = TypeParam;
  const Layout s{3, 4, 5};
  const auto x = this->rng_.template normal<T>(size_t(s.outer * s.C * s.inner));
  const auto z = this->labels(s)[1].second;
  const auto ref = run_softmax_tf(z, x, s);
  auto inplace = x;
  xentkit::softmax_cross_entropy_with_logits<T>(z.data(), inplace.data(), s.outer, s.C, s.inner,
                                                nullptr, inplace.data());
  EXPECT_TRUE(same_bytes(inplace, ref.grad));
  std::vector<T> loss(15, sentinel<T>());
  xentkit::softmax_cross_entropy_with_logits<T>(z.data(), x.data(), s.outer, s.C, s.inner,
                                                loss.data(), nullptr);
  EXPECT_TRUE(same_bytes(loss, ref.loss));
}

// ================================================================================================
// sparse_softmax_cross_entropy_with_logits
// ================================================================================================

template <typename T, typename L>
Out<T> run_sparse(const std::vector<L>& y, const std::vector<T>& x, int64_t C) {
  const int64_t rows = C == 0 ? 0 : int64_t(x.size()) / C;
  Out<T> r{std::vector<T>(size_t(rows), sentinel<T>()), std::vector<T>(x.size(), sentinel<T>())};
  xentkit::sparse_softmax_cross_entropy_with_logits<T, L>(y.data(), x.data(), rows, C,
                                                          r.loss.data(), r.grad.data());
  return r;
}

template <typename T_, typename L_>
struct ValueAndLabel {
  using T = T_;
  using L = L_;
};
using SparseTypes =
    ::testing::Types<ValueAndLabel<float, int32_t>, ValueAndLabel<double, int64_t>,
                     ValueAndLabel<float, int64_t>, ValueAndLabel<double, uint8_t>,
                     ValueAndLabel<double, int8_t>, ValueAndLabel<float, uint16_t>,
                     ValueAndLabel<double, uint64_t>>;

template <typename P>
class TfSparse : public ::testing::Test {
 protected:
  Rng rng_{808};
};
TYPED_TEST_SUITE(TfSparse, SparseTypes);

TYPED_TEST(TfSparse, MatchesReference) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  for (const int64_t C : {1, 2, 7, 100}) {
    for (const double sd : {1.0, 20.0}) {
      SCOPED_TRACE("C " + std::to_string(C) + " sd " + std::to_string(sd));
      const int64_t rows = 13;
      const auto x = this->rng_.template normal<T>(size_t(rows * C), 0.0, sd);
      const auto y = this->rng_.template classes<L>(size_t(rows), C);
      const auto got = run_sparse(y, x, C);
      expect_matches(got, xkref::tf_sparse(y, x, rows, C), 1.0 + 2.0 * double(max_abs_of(x)));
    }
  }
}

TYPED_TEST(TfSparse, OutOfRangeLabelThrowsLabelError) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  const int64_t rows = 9, C = 5;
  const auto x = this->rng_.template normal<T>(size_t(rows * C));
  std::vector<L> bad_values = {L(5), L(100), std::numeric_limits<L>::max()};
  if (std::is_signed_v<L>) {
    bad_values.push_back(L(-1));
    bad_values.push_back(L(-100));  // there is no ignored label
  }
  for (const L bad : bad_values) {
    for (const int64_t where : {int64_t{0}, int64_t{4}, rows - 1}) {
      auto y = this->rng_.template classes<L>(size_t(rows), C);
      y[size_t(where)] = bad;
      std::vector<T> loss(size_t(rows), sentinel<T>()), grad(x.size(), sentinel<T>());
      try {
        xentkit::sparse_softmax_cross_entropy_with_logits<T, L>(y.data(), x.data(), rows, C,
                                                                loss.data(), grad.data());
        ADD_FAILURE() << "no label_error for " << +bad << " at " << where;
      } catch (const label_error& e) {
        EXPECT_EQ(e.index(), where);
        EXPECT_EQ(e.value(), static_cast<double>(bad));
        const std::string what = e.what();
        EXPECT_NE(what.find("labels"), std::string::npos) << what;
        EXPECT_NE(what.find(e.value_text()), std::string::npos) << what;
      }
      EXPECT_TRUE(untouched(loss));
      EXPECT_TRUE(untouched(grad));
    }
  }
}

TYPED_TEST(TfSparse, ZeroClassesAndLossesBeyondCaffesCap) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  // No class to pick: a value_error for any row; no row: nothing to do.
  const std::vector<T> none;
  const std::vector<L> y = {L(0)};
  std::vector<T> loss(1, sentinel<T>());
  EXPECT_THROW((xentkit::sparse_softmax_cross_entropy_with_logits<T, L>(y.data(), none.data(), 1,
                                                                        0, loss.data(), nullptr)),
               xentkit::value_error);
  EXPECT_TRUE(untouched(loss));
  EXPECT_NO_THROW((xentkit::sparse_softmax_cross_entropy_with_logits<T, L>(
      y.data(), none.data(), 0, 4, loss.data(), nullptr)));
  EXPECT_TRUE(untouched(loss));
  // -log p is not capped at -log(FLT_MIN) as in Caffe.
  const auto got = run_sparse(std::vector<L>{L(1)}, std::vector<T>{T(200), 0}, 2);
  EXPECT_TRUE(near_rel(got.loss[0], 200.0, Acc<T>::rtol, 0.0));
}

TYPED_TEST(TfSparse, ConfidentPredictionKeepsRelativePrecision) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  // logits (0, -40, -40), label 0: the label entry is -2e^-40 / (1 + 2e^-40), not 0.
  const std::vector<T> x = {0, -40, -40, -40, 0, -40};
  const std::vector<L> y = {0, 1};
  const auto got = run_sparse(y, x, 3);
  const double e = std::exp(-40.0);
  const double rtol = std::is_same_v<T, double> ? 1e-12 : 1e-5;
  EXPECT_TRUE(near_rel(got.grad[0], -2.0 * e / (1.0 + 2.0 * e), rtol, 0.0));
  EXPECT_TRUE(near_rel(got.grad[4], -2.0 * e / (1.0 + 2.0 * e), rtol, 0.0));
  EXPECT_TRUE(near_rel(got.grad[1], e / (1.0 + 2.0 * e), rtol, 0.0));
}

TYPED_TEST(TfSparse, InfiniteLogitsAndAliasing) {
  using T = typename TypeParam::T;
  using L = typename TypeParam::L;
  const T inf = std::numeric_limits<T>::infinity();
  const std::vector<T> x = {inf, 0, 0, 1, -inf, 0, inf, inf, 0};
  const std::vector<L> y = {0, 0, 1};
  const auto got = run_sparse(y, x, 3);
  EXPECT_EQ(got.loss[0], T(0));
  EXPECT_TRUE(near_rel(got.loss[1], std::log1p(std::exp(-1.0)), Acc<T>::rtol, 0.0));
  EXPECT_TRUE(near_rel(got.loss[2], std::log(2.0), Acc<T>::rtol, 0.0));
  EXPECT_TRUE(
      xkref::close(got.grad, xkref::tf_sparse(y, x, 3, 3).grad, Acc<T>::rtol, Acc<T>::atol));
  EXPECT_EQ(got.grad[4], T(0));
  EXPECT_EQ(run_sparse(std::vector<L>{1}, std::vector<T>{inf, 0, 0}, 3).loss[0], inf);
  // In place.
  const auto z = this->rng_.template normal<T>(24);
  const auto yz = this->rng_.template classes<L>(4, 6);
  const auto ref = run_sparse(yz, z, 6);
  auto inplace = z;
  xentkit::sparse_softmax_cross_entropy_with_logits<T, L>(yz.data(), inplace.data(), 4, 6,
                                                          nullptr, inplace.data());
  EXPECT_TRUE(same_bytes(inplace, ref.grad));
}

/// Finite differences in double, for several label types.
template <typename L>
class TfSparseGradient : public ::testing::Test {};
using GradientLabelTypes = ::testing::Types<int32_t, int64_t, uint8_t, uint64_t>;
TYPED_TEST_SUITE(TfSparseGradient, GradientLabelTypes);

TYPED_TEST(TfSparseGradient, FiniteDifferences) {
  using T = double;
  using L = TypeParam;
  Rng rng(4040);
  const int64_t rows = 7, C = 6;
  const auto x = rng.normal<T>(size_t(rows * C), 0.0, 2.0);
  const auto y = rng.classes<L>(size_t(rows), C);
  const auto got = run_sparse(y, x, C);
  EXPECT_TRUE(check_gradient(
      x, got.grad, 1.0,
      [&](const std::vector<T>& xs) {
        std::vector<T> loss(static_cast<size_t>(rows));
        xentkit::sparse_softmax_cross_entropy_with_logits<T, L>(y.data(), xs.data(), rows, C,
                                                                loss.data(), nullptr);
        return sum_of(loss);
      },
      Tol<T>::h, Tol<T>::threshold));
}

// ================================================================================================
// Thread counts: bit-identical results
// ================================================================================================

template <typename T>
class TfDeterministic : public ::testing::Test {
 protected:
  template <typename Fn>
  Out<T> same_for_thread_counts(Fn&& fn) {
    xentkit::set_num_threads(1);
    const Out<T> one = fn();
    xentkit::set_num_threads(3);
    const Out<T> three = fn();
    EXPECT_TRUE(same_bytes(one.loss, three.loss));
    EXPECT_TRUE(same_bytes(one.grad, three.grad));
    return three;
  }
  ThreadCountGuard guard_;
  Rng rng_{909};
};
TYPED_TEST_SUITE(TfDeterministic, FloatTypes);

static_assert(600 * 500 >= xentkit::detail::kParallelThreshold);

TYPED_TEST(TfDeterministic, AllThreeFunctions) {
  using T = TypeParam;
  const int64_t n = 300000;
  const auto x = this->rng_.template normal<T>(size_t(n), 0.0, 4.0);
  const auto z = this->rng_.template uniform<T>(size_t(n));
  const auto sig = this->same_for_thread_counts([&] { return run_sigmoid_tf(z, x); });
  expect_matches(sig, xkref::tf_sigmoid(z, x), 1.0 + double(max_abs_of(x)));
  for (const Layout s : {Layout{600, 500, 1}, Layout{4, 10, 7500}}) {
    SCOPED_TRACE(describe(s));
    const auto soft = this->same_for_thread_counts([&] { return run_softmax_tf(z, x, s); });
    EXPECT_TRUE(xkref::close(soft.loss, xkref::tf_softmax(z, x, s.outer, s.C, s.inner).loss,
                          Acc<T>::rtol, Acc<T>::atol * 50 * double(s.C)));
  }
  const auto y = this->rng_.template classes<int32_t>(600, 500);
  const auto sparse = this->same_for_thread_counts([&] { return run_sparse(y, x, 500); });
  expect_matches(sparse, xkref::tf_sparse(y, x, 600, 500), 50.0);
}

}  // namespace
