// xentkit::softmax_with_loss: Caffe's unit tests re-created, then the normalization modes, axis
// layouts, the FLT_MIN cap, precision of confident predictions, the prob output, aliasing,
// non-finite logits and empty inputs.

#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::Normalization;
using xentkit::SoftmaxWithLossOptions;

template <typename T>
class SoftmaxLoss : public ::testing::Test {
 protected:
  // Caffe's fixture: scores (10, 5, 2, 3) ~ N(0, 10), labels (10, 1, 2, 3) = random int mod 5,
  // stored in a blob of the value type.
  static constexpr int64_t kOuter = 10, kC = 5, kInner = 6;

  void SetUp() override {
    x_ = rng_.template normal<T>(size_t(kOuter * kC * kInner), 0.0, 10.0);
    labels_ = rng_.template classes<T>(size_t(kOuter * kInner), kC);
  }

  template <typename L>
  T loss_of(const std::vector<T>& x, const std::vector<L>& labels, int64_t outer, int64_t C,
            int64_t inner, const SoftmaxWithLossOptions& opt) {
    return xentkit::softmax_with_loss<T, L>(x.data(), labels.data(), outer, C, inner, nullptr,
                                            nullptr, opt);
  }

  /// Runs the library, checks loss, diff and prob against the reference and the diff against
  /// finite differences of the loss.
  template <typename L>
  void check_all(const std::vector<T>& x, const std::vector<L>& labels, int64_t outer, int64_t C,
                 int64_t inner, const SoftmaxWithLossOptions& opt, bool gradient_check = true) {
    const auto ref = softmax_reference(x, labels, outer, C, inner, opt);
    const auto r = run_softmax(x, labels, outer, C, inner, opt);
    EXPECT_TRUE(near_rel(r.loss, ref.loss, Tol<T>::rtol, 0.0));
    EXPECT_TRUE(all_close(r.diff, ref.diff, Tol<T>::rtol,
                          Tol<T>::atol * opt.loss_weight / ref.normalizer));
    EXPECT_TRUE(all_close(r.prob, ref.prob, Tol<T>::rtol, Tol<T>::atol));
    if (gradient_check) {
      EXPECT_TRUE(check_gradient(
          x, r.diff, opt.loss_weight,
          [&](const std::vector<T>& xs) { return loss_of(xs, labels, outer, C, inner, opt); },
          Tol<T>::h, Tol<T>::threshold));
    }
  }

  Rng rng_{1701};
  std::vector<T> x_;
  std::vector<T> labels_;
};
TYPED_TEST_SUITE(SoftmaxLoss, FloatTypes);

// ---- Caffe's tests ---------------------------------------------------------------------------

TYPED_TEST(SoftmaxLoss, CaffeGradient) {
  SoftmaxWithLossOptions opt;  // VALID, no ignore: / 60
  opt.loss_weight = 3;
  this->check_all(this->x_, this->labels_, this->kOuter, this->kC, this->kInner, opt);
  const auto ref = softmax_reference(this->x_, this->labels_, this->kOuter, this->kC,
                                     this->kInner, opt);
  EXPECT_EQ(ref.normalizer, 60.0);
}

TYPED_TEST(SoftmaxLoss, CaffeForwardIgnoreLabel) {
  using T = TypeParam;
  SoftmaxWithLossOptions opt;
  opt.normalization = Normalization::batch_size;  // Caffe's normalize: false
  const double full = this->loss_of(this->x_, this->labels_, 10, 5, 6, opt);
  double sum = 0.0;
  for (int64_t label = 0; label < 5; ++label) {
    opt.ignore_label = label;
    sum += this->loss_of(this->x_, this->labels_, 10, 5, 6, opt);
  }
  // Each position is counted in exactly four of the five runs.
  EXPECT_TRUE(near_rel(sum, 4.0 * full, std::is_same_v<T, float> ? 1e-5 : 1e-12, 0.0));
  EXPECT_GT(full, 0.0);
}

TYPED_TEST(SoftmaxLoss, CaffeGradientIgnoreLabel) {
  SoftmaxWithLossOptions opt;  // VALID: / (number of labels != 0)
  opt.ignore_label = 0;
  opt.loss_weight = 3;
  this->check_all(this->x_, this->labels_, this->kOuter, this->kC, this->kInner, opt);
  const auto r = run_softmax(this->x_, this->labels_, 10, 5, 6, opt);
  int64_t ignored = 0;
  for (int64_t p = 0; p < 60; ++p) {
    if (this->labels_[size_t(p)] != 0) continue;
    ++ignored;
    const int64_t o = p / 6, s = p % 6;
    for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(r.diff[size_t(o * 30 + c * 6 + s)], 0) << p;
  }
  EXPECT_GT(ignored, 0);
  EXPECT_LT(ignored, 60);
}

TYPED_TEST(SoftmaxLoss, CaffeGradientUnnormalized) {
  SoftmaxWithLossOptions opt;
  opt.normalization = Normalization::batch_size;  // normalize: false
  opt.loss_weight = 3;
  this->check_all(this->x_, this->labels_, this->kOuter, this->kC, this->kInner, opt);
}

// ---- beyond Caffe -----------------------------------------------------------------------------

TYPED_TEST(SoftmaxLoss, DefaultOptionsAreCaffes) {
  using T = TypeParam;
  const SoftmaxWithLossOptions defaults;
  EXPECT_EQ(defaults.normalization, Normalization::valid);
  EXPECT_FALSE(defaults.ignore_label.has_value());
  EXPECT_EQ(defaults.loss_weight, 1.0);
  const T implicit = xentkit::softmax_with_loss<T, T>(this->x_.data(), this->labels_.data(), 10,
                                                      5, 6, nullptr, nullptr);
  SoftmaxWithLossOptions valid;
  valid.normalization = Normalization::valid;
  EXPECT_TRUE(same_bits(implicit, this->loss_of(this->x_, this->labels_, 10, 5, 6, valid)));
}

TYPED_TEST(SoftmaxLoss, EveryNormalizationWithAndWithoutIgnore) {
  using T = TypeParam;
  const int64_t outer = 4, C = 6, inner = 7;
  const auto x = this->rng_.template normal<T>(size_t(outer * C * inner), 0.0, 3.0);
  auto labels = this->rng_.template classes<int32_t>(size_t(outer * inner), C);
  for (size_t i = 0; i < labels.size(); i += 4) labels[i] = 255;  // outside [0, C)
  for (const auto mode : kAllModes) {
    for (const std::optional<int64_t> ignore : {std::optional<int64_t>{},
                                               std::optional<int64_t>{255},
                                               std::optional<int64_t>{2}}) {
      SoftmaxWithLossOptions opt;
      opt.normalization = mode;
      opt.loss_weight = 1.75;
      opt.ignore_label = ignore;
      SCOPED_TRACE(std::string(xentkit::normalization_name(mode)) + " ignore " +
                   (ignore ? std::to_string(*ignore) : std::string("none")));
      std::vector<int32_t> lab = labels;
      if (!ignore || *ignore != 255) {
        for (auto& v : lab) v = v == 255 ? 1 : v;  // 255 is only valid when ignored
      }
      int64_t valid = 0;
      for (auto v : lab) valid += (ignore && v == *ignore) ? 0 : 1;
      const double z = mode == Normalization::full         ? 28.0
                       : mode == Normalization::valid      ? double(valid)
                       : mode == Normalization::batch_size ? 4.0
                                                           : 1.0;
      const auto ref = softmax_reference(x, lab, outer, C, inner, opt);
      ASSERT_EQ(ref.normalizer, z);
      if (ignore) {
        ASSERT_LT(valid, 28);
      }
      this->check_all(x, lab, outer, C, inner, opt);
    }
  }
}

TYPED_TEST(SoftmaxLoss, AllIgnoredGivesZeroLossAndZeroDiff) {
  using T = TypeParam;
  const std::vector<int64_t> labels(12, -1);
  const auto x = this->rng_.template normal<T>(36);
  for (const auto mode : kAllModes) {
    SCOPED_TRACE(xentkit::normalization_name(mode));
    SoftmaxWithLossOptions opt;
    opt.normalization = mode;
    opt.ignore_label = -1;
    const auto r = run_softmax(x, labels, 2, 3, 6, opt);
    EXPECT_FALSE(std::isnan(r.loss));
    EXPECT_EQ(r.loss, T(0));
    EXPECT_TRUE(all_zero(r.diff));
    // The probabilities are still those of the softmax.
    const auto ref = softmax_reference(x, labels, 2, 3, 6, opt);
    EXPECT_TRUE(all_close(r.prob, ref.prob, Tol<T>::rtol, Tol<T>::atol));
  }
}

/// The reference for a row-major N-D array with the softmax on `axis`, indexed by multi-index
/// (independently of the outer/C/inner flattening the library takes).
template <typename T, typename L>
Reference softmax_reference_nd(const std::vector<T>& x, const std::vector<int64_t>& shape,
                               int axis, const std::vector<L>& labels,
                               const SoftmaxWithLossOptions& opt) {
  const int nd = int(shape.size());
  const int a = axis < 0 ? axis + nd : axis;
  std::vector<int64_t> stride(size_t(nd), 1);
  for (int k = nd - 2; k >= 0; --k) stride[size_t(k)] = stride[size_t(k + 1)] * shape[size_t(k + 1)];
  std::vector<int64_t> idx(size_t(nd), 0);  // idx[a] stays 0
  const int64_t C = shape[size_t(a)];
  Reference r;
  r.prob.assign(x.size(), 0.0);
  r.diff.assign(x.size(), 0.0);
  int64_t positions = int64_t(labels.size());
  for (int64_t p = 0; p < positions; ++p) {
    const bool ign = opt.ignore_label && truncated(labels[size_t(p)]) == *opt.ignore_label;
    r.valid += ign ? 0 : 1;
  }
  r.normalizer = reference_normalizer(opt.normalization, positions, 1, r.valid);
  if (opt.normalization == Normalization::batch_size) {
    int64_t outer = 1;
    for (int k = 0; k < a; ++k) outer *= shape[size_t(k)];
    r.normalizer = reference_normalizer(opt.normalization, outer, 1, r.valid);
  }
  const double scale = opt.loss_weight / r.normalizer;
  double total = 0.0;
  for (int64_t p = 0; p < positions; ++p) {
    int64_t base = 0;
    for (int k = 0; k < nd; ++k) base += idx[size_t(k)] * stride[size_t(k)];
    auto at = [&](int64_t c) { return size_t(base + c * stride[size_t(a)]); };
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < C; ++c) m = std::max(m, double(x[at(c)]));
    double z = 0.0;
    for (int64_t c = 0; c < C; ++c) z += std::exp(double(x[at(c)]) - m);
    for (int64_t c = 0; c < C; ++c) r.prob[at(c)] = std::exp(double(x[at(c)]) - m) / z;
    const int64_t y = truncated(labels[size_t(p)]);
    if (!(opt.ignore_label && y == *opt.ignore_label)) {
      total += std::min(std::log(z) - (double(x[at(y)]) - m), flt_min_cap());
      for (int64_t c = 0; c < C; ++c) r.diff[at(c)] = scale * (r.prob[at(c)] - (c == y ? 1 : 0));
    }
    // Next multi-index over the axes other than `a`, last axis fastest.
    for (int k = nd - 1; k >= 0; --k) {
      if (k == a) continue;
      if (++idx[size_t(k)] < shape[size_t(k)]) break;
      idx[size_t(k)] = 0;
    }
  }
  r.loss = total / r.normalizer;
  return r;
}

TYPED_TEST(SoftmaxLoss, AxisVariantsAsOuterChannelsInner) {
  using T = TypeParam;
  const std::vector<int64_t> shape = {3, 4, 5, 6};
  const auto x = this->rng_.template normal<T>(360, 0.0, 2.0);
  for (const int axis : {0, 1, 2, 3, -1, -2, -3}) {
    SCOPED_TRACE("axis " + std::to_string(axis));
    const int a = axis < 0 ? axis + 4 : axis;
    int64_t outer = 1, inner = 1;
    for (int k = 0; k < a; ++k) outer *= shape[size_t(k)];
    for (int k = a + 1; k < 4; ++k) inner *= shape[size_t(k)];
    const int64_t C = shape[size_t(a)];
    auto labels = this->rng_.template classes<int64_t>(size_t(outer * inner), C);
    labels[1] = -1;
    for (const auto mode : {Normalization::valid, Normalization::batch_size}) {
      SoftmaxWithLossOptions opt;
      opt.ignore_label = -1;
      opt.normalization = mode;
      opt.loss_weight = 2.0;
      const auto ref = softmax_reference_nd(x, shape, axis, labels, opt);
      const auto r = run_softmax(x, labels, outer, C, inner, opt);
      EXPECT_TRUE(near_rel(r.loss, ref.loss, Tol<T>::rtol, 0.0));
      EXPECT_TRUE(all_close(r.diff, ref.diff, Tol<T>::rtol, Tol<T>::atol));
      EXPECT_TRUE(all_close(r.prob, ref.prob, Tol<T>::rtol, Tol<T>::atol));
    }
  }
}

TYPED_TEST(SoftmaxLoss, LongInnerRuns) {
  using T = TypeParam;
  // inner much longer than one run of positions processed together, with a ragged end.
  {
    const int64_t outer = 3, C = 4, inner = 150;
    const auto x = this->rng_.template normal<T>(size_t(outer * C * inner), 0.0, 4.0);
    auto labels = this->rng_.template classes<uint8_t>(size_t(outer * inner), C);
    for (size_t i = 0; i < labels.size(); i += 7) labels[i] = 255;
    SoftmaxWithLossOptions opt;
    opt.ignore_label = 255;
    opt.loss_weight = 0.5;
    this->check_all(x, labels, outer, C, inner, opt, /*gradient_check=*/false);
  }
  {
    const int64_t outer = 2, C = 3, inner = 70;
    const auto x = this->rng_.template normal<T>(size_t(outer * C * inner), 0.0, 4.0);
    const auto labels = this->rng_.template classes<int32_t>(size_t(outer * inner), C);
    SoftmaxWithLossOptions opt;
    opt.normalization = Normalization::none;
    this->check_all(x, labels, outer, C, inner, opt, /*gradient_check=*/true);
  }
}

TYPED_TEST(SoftmaxLoss, ManyClassesOnTheClassAxisOne) {
  using T = TypeParam;
  // 40, 150 and 300 classes with 467 positions (tiles of 8, 4 and 1 groups of 16 and a tail):
  // up to 256 classes the vector kernel packs 8 groups at a time into a buffer of the thread's,
  // above that 4, in place and apart, with ignored labels. Two classes take the logistic form.
  for (const int64_t C : {2, 40, 150, 300}) {
    const int64_t outer = 2, inner = 467;
    const auto x = this->rng_.template normal<T>(size_t(outer * C * inner), 0.0, 3.0);
    auto labels = this->rng_.template classes<int32_t>(size_t(outer * inner), C);
    for (size_t i = 0; i < labels.size(); i += 9) labels[i] = -1;
    SoftmaxWithLossOptions opt;
    opt.ignore_label = -1;
    this->check_all(x, labels, outer, C, inner, opt, /*gradient_check=*/false);
    // (Without the softmax output: with it, two classes keep the softmax form.)
    std::vector<T> apart(x.size());
    const T loss_apart = xentkit::softmax_with_loss<T, int32_t>(
        x.data(), labels.data(), outer, C, inner, apart.data(), nullptr, opt);
    std::vector<T> in_place = x;
    const T loss = xentkit::softmax_with_loss<T, int32_t>(in_place.data(), labels.data(), outer,
                                                         C, inner, in_place.data(), nullptr, opt);
    EXPECT_EQ(loss, loss_apart) << "C = " << C;
    EXPECT_EQ(in_place, apart) << "C = " << C;
    const auto ref = softmax_reference(x, labels, outer, C, inner, opt);
    EXPECT_TRUE(all_close(apart, ref.diff, Tol<T>::rtol, Tol<T>::atol / ref.normalizer))
        << "C = " << C;
  }
}

TYPED_TEST(SoftmaxLoss, FloatLabelsAreTruncatedTowardZero) {
  using T = TypeParam;
  const int64_t C = 5;
  const auto x = this->rng_.template normal<T>(size_t(4 * C));
  // (outer 4, C 5, inner 1): 2.7 -> class 2, -0.5 -> class 0, -1.7 -> -1 (ignored), 4.999 -> 4.
  const std::vector<T> fractional = {T(2.7), T(-0.5), T(-1.7), T(4.999)};
  const std::vector<int64_t> integral = {2, 0, -1, 4};
  SoftmaxWithLossOptions opt;
  opt.ignore_label = -1;
  const auto a = run_softmax(x, fractional, 4, C, 1, opt);
  const auto b = run_softmax(x, integral, 4, C, 1, opt);
  EXPECT_TRUE(same_bits(a.loss, b.loss));
  EXPECT_TRUE(same_bytes(a.diff, b.diff));
  EXPECT_TRUE(same_bytes(a.prob, b.prob));
  // Three valid positions (VALID), the ignored one all zero.
  const auto ref = softmax_reference(x, integral, 4, C, 1, opt);
  EXPECT_EQ(ref.valid, 3);
  EXPECT_TRUE(near_rel(a.loss, ref.loss, Tol<T>::rtol, 0.0));
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(a.diff[size_t(2 * C + c)], T(0));
  EXPECT_LT(a.diff[size_t(0 * C + 2)], T(0));  // class 2 is the target of position 0
  EXPECT_LT(a.diff[size_t(1 * C + 0)], T(0));  // class 0 is the target of position 1
  EXPECT_LT(a.diff[size_t(3 * C + 4)], T(0));  // class 4 is the target of position 3
}

TYPED_TEST(SoftmaxLoss, TruncatedLabelCanHitTheIgnoredLabel) {
  using T = TypeParam;
  // With ignore_label 0, -0.5 and 0.9 truncate to 0 and are ignored; 1.5 is class 1.
  const auto x = this->rng_.template normal<T>(9);
  const std::vector<T> labels = {T(-0.5), T(0.9), T(1.5)};
  SoftmaxWithLossOptions opt;
  opt.ignore_label = 0;
  const auto r = run_softmax(x, labels, 3, 3, 1, opt);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(r.diff[i], T(0)) << i;
  const double m = std::max({double(x[6]), double(x[7]), double(x[8])});
  const double lse = m + std::log(std::exp(double(x[6]) - m) + std::exp(double(x[7]) - m) +
                                  std::exp(double(x[8]) - m));
  EXPECT_TRUE(near_rel(r.loss, lse - double(x[7]), Tol<T>::rtol, Tol<T>::atol));
}

TYPED_TEST(SoftmaxLoss, SingleClassHasZeroLossAndGradient) {
  using T = TypeParam;
  const auto x = this->rng_.template normal<T>(6, 0.0, 5.0);
  SoftmaxWithLossOptions opt;
  opt.normalization = Normalization::none;
  const auto r = run_softmax(x, std::vector<int32_t>(6, 0), 2, 1, 3, opt);
  EXPECT_EQ(r.loss, T(0));
  EXPECT_TRUE(all_zero(r.diff));
  for (T p : r.prob) EXPECT_EQ(p, T(1));
}

TYPED_TEST(SoftmaxLoss, LossIsCappedAtMinusLogFltMin) {
  using T = TypeParam;
  EXPECT_NEAR(flt_min_cap(), 87.336544750553108986571, 1e-12);
  const T cap = static_cast<T>(flt_min_cap());
  SoftmaxWithLossOptions opt;
  opt.normalization = Normalization::none;
  auto one = [&](std::vector<T> logits, int64_t label) {
    return run_softmax(logits, std::vector<int64_t>{label}, 1, int64_t(logits.size()), 1, opt);
  };
  // p = e^-200: underflows float and is below FLT_MIN in double too.
  const auto a = one({T(0), T(-200)}, 1);
  EXPECT_EQ(a.loss, cap);
  // The cap is FLT_MIN also for double: e^-100 ~ 3.7e-44 is a normal double but below FLT_MIN.
  const auto b = one({T(0), T(-100)}, 1);
  EXPECT_EQ(b.loss, cap);
  const auto c = one({T(0), T(-88)}, 1);  // e^-88 ~ 6.0e-39 < FLT_MIN
  EXPECT_EQ(c.loss, cap);
  const auto d = one({T(0), T(-86)}, 1);  // e^-86 ~ 4.5e-38 > FLT_MIN: not capped
  EXPECT_TRUE(near_rel(d.loss, 86.0 + std::log1p(std::exp(-86.0)), Tol<T>::rtol, 0.0));
  EXPECT_LT(d.loss, cap);
  // The gradient ignores the cap: p - onehot.
  EXPECT_TRUE(near_rel(a.diff[0], 1.0, Tol<T>::rtol, 0.0));
  EXPECT_TRUE(near_rel(a.diff[1], -1.0, Tol<T>::rtol, 0.0));
  // Capped positions add the cap to a sum normalized as usual.
  SoftmaxWithLossOptions valid;
  const std::vector<T> two = {T(0), T(-300), T(1), T(2)};
  const auto e = run_softmax(two, std::vector<int32_t>{1, 1}, 2, 2, 1, valid);
  EXPECT_TRUE(near_rel(e.loss, (flt_min_cap() + std::log1p(std::exp(-1.0))) / 2.0, Tol<T>::rtol,
                       0.0));
}

TYPED_TEST(SoftmaxLoss, ConfidentPredictionKeepsGradientPrecision) {
  using T = TypeParam;
  // p[label] rounds to 1; p - 1 = -(2e^-40 / (1 + 2e^-40)) must keep its relative precision.
  const double e = std::exp(-40.0);
  const std::vector<T> x = {T(40), T(0), T(0)};
  SoftmaxWithLossOptions opt;
  opt.normalization = Normalization::none;
  const auto r = run_softmax(x, std::vector<int64_t>{0}, 1, 3, 1, opt);
  const double rtol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  EXPECT_TRUE(near_rel(r.diff[0], -(2.0 * e / (1.0 + 2.0 * e)), rtol, 0.0));
  EXPECT_TRUE(near_rel(r.diff[1], e / (1.0 + 2.0 * e), rtol, 0.0));
  EXPECT_TRUE(near_rel(r.diff[2], e / (1.0 + 2.0 * e), rtol, 0.0));
  EXPECT_TRUE(near_rel(r.prob[1], e / (1.0 + 2.0 * e), rtol, 0.0));
  EXPECT_EQ(r.prob[0], T(1));
  // The loss log1p(2e^-40) ~ 8.5e-18 keeps its relative precision (log(sum) would round to 0).
  EXPECT_TRUE(near_rel(r.loss, std::log1p(2.0 * e), rtol, 0.0));
  // Same in an (outer, C, inner) layout with inner > 1 and a loss weight.
  // (1, 3, 2): element (c, s) at c * 2 + s; position 0 has logits (0, 40, 0) and label 1,
  // position 1 has logits (0, 0, 40) and label 2.
  const std::vector<T> y = {T(0), T(0), T(40), T(0), T(0), T(40)};
  opt.loss_weight = 4.0;
  const auto s = run_softmax(y, std::vector<int32_t>{1, 2}, 1, 3, 2, opt);
  EXPECT_TRUE(near_rel(s.diff[2], -4.0 * (2.0 * e / (1.0 + 2.0 * e)), rtol, 0.0));
  EXPECT_TRUE(near_rel(s.diff[5], -4.0 * (2.0 * e / (1.0 + 2.0 * e)), rtol, 0.0));
  for (const size_t i : {0, 1, 3, 4}) {
    EXPECT_TRUE(near_rel(s.diff[i], 4.0 * e / (1.0 + 2.0 * e), rtol, 0.0)) << i;
  }
}

TYPED_TEST(SoftmaxLoss, ProbIsTheSoftmaxAndSumsToOne) {
  using T = TypeParam;
  auto labels = this->labels_;
  labels[3] = T(-1);
  SoftmaxWithLossOptions opt;
  opt.ignore_label = -1;
  const auto r = run_softmax(this->x_, labels, 10, 5, 6, opt);
  const auto ref = softmax_reference(this->x_, labels, 10, 5, 6, opt);
  EXPECT_TRUE(all_close(r.prob, ref.prob, Tol<T>::rtol, Tol<T>::atol));
  for (int64_t o = 0; o < 10; ++o) {
    for (int64_t s = 0; s < 6; ++s) {
      double sum = 0.0;
      for (int64_t c = 0; c < 5; ++c) {
        const T p = r.prob[size_t(o * 30 + c * 6 + s)];
        EXPECT_GE(p, T(0));
        EXPECT_LE(p, T(1));
        sum += double(p);
      }
      EXPECT_NEAR(sum, 1.0, (std::is_same_v<T, float> ? 1e-6 : 1e-14)) << o << "," << s;
    }
  }
  // prob alone (no diff) gives the same probabilities and loss.
  std::vector<T> prob_only(this->x_.size(), sentinel<T>());
  const T loss = xentkit::softmax_with_loss<T, T>(this->x_.data(), labels.data(), 10, 5, 6,
                                                  nullptr, prob_only.data(), opt);
  EXPECT_TRUE(same_bits(loss, r.loss));
  EXPECT_TRUE(same_bytes(prob_only, r.prob));
}

TYPED_TEST(SoftmaxLoss, InPlaceDiffMatchesSeparateBuffer) {
  using T = TypeParam;
  auto labels = this->labels_;
  labels[0] = T(7);
  labels[17] = T(7);
  SoftmaxWithLossOptions opt;
  opt.ignore_label = 7;
  opt.loss_weight = 3;
  const auto separate = run_softmax(this->x_, labels, 10, 5, 6, opt);
  for (const bool with_prob : {false, true}) {
    SCOPED_TRACE(with_prob ? "with prob" : "without prob");
    std::vector<T> buf = this->x_;
    std::vector<T> prob(buf.size(), sentinel<T>());
    const T loss = xentkit::softmax_with_loss<T, T>(buf.data(), labels.data(), 10, 5, 6,
                                                    buf.data(),
                                                    with_prob ? prob.data() : nullptr, opt);
    EXPECT_TRUE(same_bits(loss, separate.loss));
    EXPECT_TRUE(same_bytes(buf, separate.diff));
    if (with_prob) {
      EXPECT_TRUE(same_bytes(prob, separate.prob));
    } else {
      EXPECT_TRUE(untouched(prob));
    }
  }
}

TYPED_TEST(SoftmaxLoss, NullDiffReturnsTheSameLoss) {
  auto labels = this->labels_;
  labels[5] = -1;
  for (const auto mode : kAllModes) {
    SCOPED_TRACE(xentkit::normalization_name(mode));
    SoftmaxWithLossOptions opt;
    opt.normalization = mode;
    opt.ignore_label = -1;
    const auto full = run_softmax(this->x_, labels, 10, 5, 6, opt);
    EXPECT_TRUE(same_bits(this->loss_of(this->x_, labels, 10, 5, 6, opt), full.loss));
  }
}

TYPED_TEST(SoftmaxLoss, LossWeightScalesOnlyTheDiff) {
  using T = TypeParam;
  SoftmaxWithLossOptions unit, weighted;
  weighted.loss_weight = 3.7;
  const auto a = run_softmax(this->x_, this->labels_, 10, 5, 6, unit);
  const auto b = run_softmax(this->x_, this->labels_, 10, 5, 6, weighted);
  EXPECT_TRUE(same_bits(a.loss, b.loss));
  EXPECT_TRUE(same_bytes(a.prob, b.prob));
  std::vector<double> scaled(a.diff.begin(), a.diff.end());
  for (auto& v : scaled) v *= 3.7;
  EXPECT_TRUE(all_close(b.diff, scaled, 2 * Tol<T>::rtol, 0.0));
}

TYPED_TEST(SoftmaxLoss, NanLogitGivesNanLoss) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  SoftmaxWithLossOptions opt;
  for (const int64_t where : {0, 1, 2}) {  // at the labelled class (1) and at the others
    SCOPED_TRACE(where);
    std::vector<T> x = {T(0.5), T(1.0), T(-0.5), T(0.1), T(0.2), T(0.3)};
    x[size_t(where)] = nan;
    const auto r = run_softmax(x, std::vector<int32_t>{1, 0}, 2, 3, 1, opt);
    EXPECT_TRUE(std::isnan(r.loss));
  }
}

TYPED_TEST(SoftmaxLoss, InfiniteLogitsGiveTheLimits) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  SoftmaxWithLossOptions opt;
  opt.normalization = Normalization::none;
  opt.loss_weight = 2.0;
  auto one = [&](std::vector<T> logits, int32_t label) {
    return run_softmax(logits, std::vector<int32_t>{label}, 1, int64_t(logits.size()), 1, opt);
  };
  // +inf at the label: p = 1, loss 0, zero gradient.
  const auto a = one({T(1), inf, T(-3)}, 1);
  EXPECT_EQ(a.loss, T(0));
  for (T d : a.diff) EXPECT_EQ(d, T(0));
  EXPECT_EQ(a.prob[1], T(1));
  EXPECT_EQ(a.prob[0], T(0));
  // +inf at another class: p[label] = 0, loss capped; gradient 2 * (p - onehot).
  const auto b = one({T(1), T(2), inf}, 0);
  EXPECT_EQ(b.loss, static_cast<T>(flt_min_cap()));
  EXPECT_EQ(b.diff[0], T(-2));
  EXPECT_EQ(b.diff[1], T(0));
  EXPECT_EQ(b.diff[2], T(2));
  // -inf at another class: that class has p = 0 and the rest is an ordinary softmax.
  const auto c = one({T(0), -inf, T(0)}, 0);
  EXPECT_TRUE(near_rel(c.loss, std::log(2.0), Tol<T>::rtol, 0.0));
  EXPECT_EQ(c.diff[1], T(0));
  EXPECT_TRUE(near_rel(c.diff[0], -1.0, Tol<T>::rtol, 0.0));
  // -inf at the label: p = 0, loss capped.
  const auto d = one({T(0), -inf, T(0)}, 1);
  EXPECT_EQ(d.loss, static_cast<T>(flt_min_cap()));
  for (T v : {a.loss, b.loss, c.loss, d.loss}) EXPECT_FALSE(std::isnan(v));
}

TYPED_TEST(SoftmaxLoss, EmptyInputsReturnZeroWithoutTouchingMemory) {
  using T = TypeParam;
  std::vector<T> diff(8, sentinel<T>()), prob(8, sentinel<T>());
  std::vector<int32_t> labels(8, 99);
  for (const auto& dims : std::vector<std::array<int64_t, 3>>{
           {0, 5, 3}, {4, 5, 0}, {0, 0, 0}, {0, 5, 0}, {3, 0, 0}}) {
    SCOPED_TRACE(std::to_string(dims[0]) + "x" + std::to_string(dims[1]) + "x" +
                 std::to_string(dims[2]));
    EXPECT_EQ((xentkit::softmax_with_loss<T, int32_t>(nullptr, nullptr, dims[0], dims[1], dims[2],
                                                      diff.data(), prob.data())),
              T(0));
    EXPECT_EQ((xentkit::softmax_with_loss<T, int32_t>(diff.data(), labels.data(), dims[0],
                                                      dims[1], dims[2], diff.data(),
                                                      prob.data())),
              T(0));
  }
  EXPECT_TRUE(untouched(diff));
  EXPECT_TRUE(untouched(prob));
}

}  // namespace
