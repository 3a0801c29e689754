// xentkit::softmax_with_loss over every supported label type: the same classes stored as any
// integer or floating type give the same bits; out-of-range values of each type are reported.

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::SoftmaxWithLossOptions;

template <typename L>
class SoftmaxLabelTypes : public ::testing::Test {
 protected:
  static constexpr int64_t kOuter = 5, kC = 6, kInner = 4;
  static constexpr int64_t kIgnore = 100;  // representable in every label type

  /// Classes in [0, C), every fifth position holding the ignored label.
  std::vector<int64_t> base_labels() {
    Rng rng(42);
    auto v = rng.classes<int64_t>(size_t(kOuter * kInner), kC);
    for (size_t i = 0; i < v.size(); i += 5) v[i] = kIgnore;
    return v;
  }

  template <typename T>
  void same_as_int64_labels() {
    Rng rng(7);
    const auto x = rng.normal<T>(size_t(kOuter * kC * kInner), 0.0, 3.0);
    const auto wide = base_labels();
    std::vector<L> narrow(wide.size());
    for (size_t i = 0; i < wide.size(); ++i) narrow[i] = static_cast<L>(wide[i]);
    SoftmaxWithLossOptions opt;
    opt.ignore_label = kIgnore;
    opt.loss_weight = 1.25;
    const auto a = run_softmax(x, narrow, kOuter, kC, kInner, opt);
    const auto b = run_softmax(x, wide, kOuter, kC, kInner, opt);
    EXPECT_TRUE(same_bits(a.loss, b.loss));
    EXPECT_TRUE(same_bytes(a.diff, b.diff));
    EXPECT_TRUE(same_bytes(a.prob, b.prob));
    const auto ref = softmax_reference(x, wide, kOuter, kC, kInner, opt);
    EXPECT_EQ(ref.valid, 16);
    EXPECT_TRUE(near_rel(a.loss, ref.loss, Tol<T>::rtol, 0.0));
    EXPECT_TRUE(all_close(a.diff, ref.diff, Tol<T>::rtol, Tol<T>::atol));
  }

  template <typename T>
  void expect_label_error(L bad, int64_t at, const std::string& text) {
    Rng rng(9);
    const auto x = rng.normal<T>(size_t(kOuter * kC * kInner));
    const auto wide = base_labels();
    std::vector<L> labels(wide.size());
    for (size_t i = 0; i < wide.size(); ++i) labels[i] = static_cast<L>(wide[i]);
    labels[size_t(at)] = bad;
    SoftmaxWithLossOptions opt;
    opt.ignore_label = kIgnore;
    std::vector<T> diff(x.size(), sentinel<T>()), prob(x.size(), sentinel<T>());
    try {
      xentkit::softmax_with_loss<T, L>(x.data(), labels.data(), kOuter, kC, kInner, diff.data(),
                                       prob.data(), opt);
      ADD_FAILURE() << "no label_error for " << text;
    } catch (const xentkit::label_error& e) {
      EXPECT_EQ(e.index(), at);
      EXPECT_EQ(e.value_text(), text);
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
    EXPECT_TRUE(untouched(diff));
    EXPECT_TRUE(untouched(prob));
  }
};

using LabelTypes = ::testing::Types<int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t,
                                    uint32_t, uint64_t, float, double>;
TYPED_TEST_SUITE(SoftmaxLabelTypes, LabelTypes);

TYPED_TEST(SoftmaxLabelTypes, SameResultsAsInt64LabelsFloatScores) {
  this->template same_as_int64_labels<float>();
}

TYPED_TEST(SoftmaxLabelTypes, SameResultsAsInt64LabelsDoubleScores) {
  this->template same_as_int64_labels<double>();
}

TYPED_TEST(SoftmaxLabelTypes, FirstClassPastTheEndIsALabelError) {
  using L = TypeParam;
  this->template expect_label_error<float>(static_cast<L>(6), 13, "6");
  this->template expect_label_error<double>(static_cast<L>(6), 2, "6");
}

TYPED_TEST(SoftmaxLabelTypes, ExtremeValueOfTheTypeIsALabelError) {
  using L = TypeParam;
  if constexpr (std::is_floating_point_v<L>) {
    this->template expect_label_error<double>(static_cast<L>(-1), 19, "-1");
    this->template expect_label_error<float>(static_cast<L>(-2.5), 3, "-2.5");
  } else if constexpr (std::is_signed_v<L>) {
    const L lo = std::numeric_limits<L>::min();
    this->template expect_label_error<double>(lo, 19, std::to_string(int64_t(lo)));
    this->template expect_label_error<float>(static_cast<L>(-1), 3, "-1");
  } else {
    const L hi = std::numeric_limits<L>::max();
    this->template expect_label_error<double>(hi, 19, std::to_string(uint64_t(hi)));
  }
}

}  // namespace
