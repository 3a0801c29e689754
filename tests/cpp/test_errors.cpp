// Errors: the exception hierarchy, label errors with their index and text, bad sizes, bad
// buffers, options and thread counts. Every failing call leaves its outputs untouched.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::label_error;
using xentkit::Normalization;
using xentkit::SigmoidCrossEntropyLossOptions;
using xentkit::SoftmaxWithLossOptions;
using xentkit::value_error;

static_assert(std::is_base_of_v<std::invalid_argument, xentkit::error>);
static_assert(std::is_base_of_v<xentkit::error, xentkit::value_error>);
static_assert(std::is_base_of_v<xentkit::error, xentkit::type_error>);
static_assert(std::is_base_of_v<xentkit::value_error, xentkit::label_error>);
static_assert(std::is_base_of_v<xentkit::error, xentkit::unavailable_error>);

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

template <typename T>
class SoftmaxErrors : public ::testing::Test {
 protected:
  static constexpr int64_t kOuter = 3, kC = 5, kInner = 4;

  void SetUp() override {
    Rng rng(3);
    x_ = rng.normal<T>(size_t(kOuter * kC * kInner));
    diff_.assign(x_.size(), sentinel<T>());
    prob_.assign(x_.size(), sentinel<T>());
  }

  /// Calls the layer with `labels` and returns the label_error it throws (failing if none).
  template <typename L>
  label_error expect_label_error(const std::vector<L>& labels,
                                 const SoftmaxWithLossOptions& opt = {}) {
    try {
      xentkit::softmax_with_loss<T, L>(x_.data(), labels.data(), kOuter, kC, kInner,
                                       diff_.data(), prob_.data(), opt);
    } catch (const label_error& e) {
      EXPECT_TRUE(untouched(diff_));
      EXPECT_TRUE(untouched(prob_));
      return e;
    }
    ADD_FAILURE() << "no label_error";
    return label_error("none", "", 0.0, -1);
  }

  std::vector<T> x_, diff_, prob_;
};
TYPED_TEST_SUITE(SoftmaxErrors, FloatTypes);

TYPED_TEST(SoftmaxErrors, LabelOutOfRangeReportsIndexAndValue) {
  std::vector<int32_t> labels(12, 1);
  labels[7] = 5;  // C == 5
  const auto e = this->expect_label_error(labels);
  EXPECT_EQ(e.index(), 7);
  EXPECT_EQ(e.value_text(), "5");
  EXPECT_EQ(e.value(), 5.0);
  const std::string what = e.what();
  EXPECT_TRUE(contains(what, "labels")) << what;
  EXPECT_TRUE(contains(what, "5")) << what;
  EXPECT_TRUE(contains(what, "7")) << what;
}

TYPED_TEST(SoftmaxErrors, FirstBadLabelIsReported) {
  std::vector<int64_t> labels(12, 0);
  labels[4] = -3;
  labels[9] = 42;
  const auto e = this->expect_label_error(labels);
  EXPECT_EQ(e.index(), 4);
  EXPECT_EQ(e.value_text(), "-3");
}

TYPED_TEST(SoftmaxErrors, LabelErrorIsAValueErrorAndAnInvalidArgument) {
  std::vector<int32_t> labels(12, 0);
  labels[11] = -1;
  EXPECT_THROW((xentkit::softmax_with_loss<TypeParam, int32_t>(
                   this->x_.data(), labels.data(), 3, 5, 4, nullptr, nullptr)),
               value_error);
  EXPECT_THROW((xentkit::softmax_with_loss<TypeParam, int32_t>(
                   this->x_.data(), labels.data(), 3, 5, 4, nullptr, nullptr)),
               std::invalid_argument);
  // With -1 ignored the same call succeeds.
  SoftmaxWithLossOptions opt;
  opt.ignore_label = -1;
  EXPECT_NO_THROW((xentkit::softmax_with_loss<TypeParam, int32_t>(
      this->x_.data(), labels.data(), 3, 5, 4, nullptr, nullptr, opt)));
}

TYPED_TEST(SoftmaxErrors, HugeLabelsThrow) {
  {
    std::vector<int64_t> labels(12, 2);
    labels[3] = 1000000000;
    const auto e = this->expect_label_error(labels);
    EXPECT_EQ(e.index(), 3);
    EXPECT_EQ(e.value_text(), "1000000000");
  }
  {
    std::vector<float> labels(12, 2.0f);
    labels[6] = 1e30f;
    const auto e = this->expect_label_error(labels);
    EXPECT_EQ(e.index(), 6);
    EXPECT_EQ(e.value(), double(1e30f));
    // The text reads back as the stored float.
    EXPECT_EQ(std::strtof(e.value_text().c_str(), nullptr), 1e30f) << e.value_text();
  }
  {
    std::vector<double> labels(12, 2.0);
    labels[10] = 9223372036854775808.0;  // 2^63 has no int64 value
    const auto e = this->expect_label_error(labels);
    EXPECT_EQ(e.index(), 10);
  }
  {
    std::vector<uint64_t> labels(12, 2);
    labels[1] = (uint64_t{1} << 63) + 5;  // would wrap to a negative int64
    const auto e = this->expect_label_error(labels);
    EXPECT_EQ(e.index(), 1);
    EXPECT_EQ(e.value_text(), "9223372036854775813");
  }
  {
    // 2^64 - 1 is not the ignored label -1, whatever its bits.
    std::vector<uint64_t> labels(12, 2);
    labels[5] = std::numeric_limits<uint64_t>::max();
    SoftmaxWithLossOptions opt;
    opt.ignore_label = -1;
    const auto e = this->expect_label_error(labels, opt);
    EXPECT_EQ(e.index(), 5);
    EXPECT_EQ(e.value_text(), "18446744073709551615");
  }
}

TYPED_TEST(SoftmaxErrors, NonFiniteLabelsThrow) {
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
    std::vector<float> labels(12, 0.0f);
    labels[8] = bad;
    SoftmaxWithLossOptions opt;
    opt.ignore_label = -1;  // NaN is not "ignored" either
    const auto e = this->expect_label_error(labels, opt);
    EXPECT_EQ(e.index(), 8);
    if (std::isnan(bad)) {
      EXPECT_TRUE(std::isnan(e.value()));
    } else {
      EXPECT_EQ(e.value(), double(bad));
    }
  }
  std::vector<double> labels(12, 1.0);
  labels[0] = std::numeric_limits<double>::quiet_NaN();
  const auto e = this->expect_label_error(labels);
  EXPECT_EQ(e.index(), 0);
  EXPECT_TRUE(std::isnan(e.value()));
}

TYPED_TEST(SoftmaxErrors, NegativeSizesThrowValueError) {
  using T = TypeParam;
  std::vector<int32_t> labels(12, 0);
  const T* x = this->x_.data();
  T* d = this->diff_.data();
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(x, labels.data(), -1, 5, 4, d, nullptr)),
               value_error);
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(x, labels.data(), 3, -5, 4, d, nullptr)),
               value_error);
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(x, labels.data(), 3, 5, -4, d, nullptr)),
               value_error);
  EXPECT_TRUE(untouched(this->diff_));
}

TYPED_TEST(SoftmaxErrors, ZeroChannelsWithPositionsThrows) {
  using T = TypeParam;
  std::vector<int32_t> labels(12, 0);
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(this->x_.data(), labels.data(), 3, 0, 4,
                                                       this->diff_.data(), this->prob_.data())),
               value_error);
  EXPECT_TRUE(untouched(this->diff_));
  EXPECT_TRUE(untouched(this->prob_));
}

TYPED_TEST(SoftmaxErrors, NullBuffersAndOverflowThrow) {
  using T = TypeParam;
  std::vector<int32_t> labels(12, 0);
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(nullptr, labels.data(), 3, 5, 4, nullptr,
                                                       nullptr)),
               value_error);
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(this->x_.data(), nullptr, 3, 5, 4,
                                                       nullptr, nullptr)),
               value_error);
  const int64_t big = int64_t{1} << 40;
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(nullptr, nullptr, big, 1, big, nullptr,
                                                       nullptr)),
               value_error);
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(nullptr, nullptr, big, big, 1, nullptr,
                                                       nullptr)),
               value_error);
}

TYPED_TEST(SoftmaxErrors, ProbSharingScoresOrDiffThrows) {
  using T = TypeParam;
  std::vector<int32_t> labels(12, 0);
  std::vector<T> x = this->x_;
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(x.data(), labels.data(), 3, 5, 4, nullptr,
                                                       x.data())),
               value_error);
  EXPECT_TRUE(same_bytes(x, this->x_));
  EXPECT_THROW((xentkit::softmax_with_loss<T, int32_t>(x.data(), labels.data(), 3, 5, 4,
                                                       this->diff_.data(), this->diff_.data())),
               value_error);
  EXPECT_TRUE(untouched(this->diff_));
}

template <typename T>
class SigmoidErrors : public ::testing::Test {};
TYPED_TEST_SUITE(SigmoidErrors, FloatTypes);

TYPED_TEST(SigmoidErrors, BadSizesThrowValueErrorAndWriteNothing) {
  using T = TypeParam;
  Rng rng(5);
  const auto x = rng.normal<T>(12);
  const auto t = rng.uniform<T>(12);
  std::vector<T> diff(12, sentinel<T>());
  auto call = [&](int64_t outer, int64_t count) {
    return xentkit::sigmoid_cross_entropy_loss<T>(x.data(), t.data(), outer, count, diff.data());
  };
  EXPECT_THROW(call(-1, 12), value_error);
  EXPECT_THROW(call(3, -12), value_error);
  EXPECT_THROW(call(5, 12), value_error);  // 12 is not a multiple of 5
  EXPECT_THROW(call(0, 12), value_error);  // no batch, yet elements
  EXPECT_THROW(call(24, 12), value_error);
  EXPECT_THROW(call(5, 12), std::invalid_argument);
  EXPECT_TRUE(untouched(diff));
  EXPECT_NO_THROW(call(4, 12));
  EXPECT_FALSE(untouched(diff));
}

TYPED_TEST(SigmoidErrors, NullBuffersThrow) {
  using T = TypeParam;
  std::vector<T> x(6, T(0.5)), diff(6, sentinel<T>());
  EXPECT_THROW(xentkit::sigmoid_cross_entropy_loss<T>(nullptr, x.data(), 2, 6, diff.data()),
               value_error);
  EXPECT_THROW(xentkit::sigmoid_cross_entropy_loss<T>(x.data(), nullptr, 2, 6, diff.data()),
               value_error);
  EXPECT_TRUE(untouched(diff));
}

TEST(Options, ParseNormalizationIgnoresCase) {
  EXPECT_EQ(xentkit::parse_normalization("VALID"), Normalization::valid);
  EXPECT_EQ(xentkit::parse_normalization("Batch_Size"), Normalization::batch_size);
  EXPECT_EQ(xentkit::parse_normalization("full"), Normalization::full);
  EXPECT_EQ(xentkit::parse_normalization("FULL"), Normalization::full);
  EXPECT_EQ(xentkit::parse_normalization("None"), Normalization::none);
  EXPECT_EQ(xentkit::parse_normalization("batch_size"), Normalization::batch_size);
}

TEST(Options, ParseNormalizationRejectsOtherNames) {
  for (const char* bad : {"mean", "sum", "", "valid ", "batch-size", "batchsize", "PRE_FIXED"}) {
    SCOPED_TRACE(bad);
    try {
      xentkit::parse_normalization(bad);
      ADD_FAILURE() << "accepted";
    } catch (const value_error& e) {
      EXPECT_TRUE(contains(e.what(), "normalization")) << e.what();
      EXPECT_TRUE(contains(e.what(), std::string("'") + bad + "'")) << e.what();
    }
  }
  EXPECT_THROW(xentkit::parse_normalization("mean"), std::invalid_argument);
}

TEST(Options, NormalizationNamesRoundTripWithCaffeNumbering) {
  EXPECT_EQ(static_cast<int>(Normalization::full), 0);
  EXPECT_EQ(static_cast<int>(Normalization::valid), 1);
  EXPECT_EQ(static_cast<int>(Normalization::batch_size), 2);
  EXPECT_EQ(static_cast<int>(Normalization::none), 3);
  for (const auto mode : kAllModes) {
    EXPECT_EQ(xentkit::parse_normalization(xentkit::normalization_name(mode)), mode);
  }
  EXPECT_STREQ(xentkit::normalization_name(Normalization::batch_size), "batch_size");
}

TEST(Threads, SetNumThreadsRejectsNonPositive) {
  ThreadCountGuard guard;
  xentkit::set_num_threads(2);
  EXPECT_THROW(xentkit::set_num_threads(0), value_error);
  EXPECT_THROW(xentkit::set_num_threads(-3), value_error);
  EXPECT_THROW(xentkit::set_num_threads(0), std::invalid_argument);
  EXPECT_EQ(xentkit::get_num_threads(), 2);
  xentkit::set_num_threads(1);
  EXPECT_EQ(xentkit::get_num_threads(), 1);
}

}  // namespace
