// Thread counts: results are bit-identical whatever the number of threads, on inputs large
// enough to be split across threads; the initial count follows XENTKIT_NUM_THREADS.

#if defined(__linux__)
#include <sched.h>
#endif
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "xentkit/detail/parallel.hpp"
#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::Normalization;
using xentkit::SigmoidCrossEntropyLossOptions;
using xentkit::SoftmaxWithLossOptions;

constexpr int kThreadCounts[] = {1, 2, 3, 8};

template <typename T>
class Deterministic : public ::testing::Test {
 protected:
  ThreadCountGuard guard_;
};
TYPED_TEST_SUITE(Deterministic, FloatTypes);

TYPED_TEST(Deterministic, SoftmaxIsBitIdenticalAcrossThreadCounts) {
  using T = TypeParam;
  const int64_t outer = 2048, C = 1000, inner = 1;
  static_assert(2048 * 1000 >= xentkit::detail::kParallelThreshold);
  Rng rng(11);
  const auto x = rng.normal<T>(size_t(outer * C * inner), 0.0, 5.0);
  auto labels = rng.classes<int32_t>(size_t(outer * inner), C);
  for (size_t i = 0; i < labels.size(); i += 9) labels[i] = -1;
  SoftmaxWithLossOptions opt;
  opt.ignore_label = -1;
  opt.loss_weight = 2.0;

  std::vector<SoftmaxRun<T>> runs;
  for (const int n : kThreadCounts) {
    xentkit::set_num_threads(n);
    ASSERT_EQ(xentkit::get_num_threads(), n);
    runs.push_back(run_softmax(x, labels, outer, C, inner, opt));
  }
  for (size_t k = 1; k < runs.size(); ++k) {
    SCOPED_TRACE(kThreadCounts[k]);
    EXPECT_TRUE(same_bits(runs[k].loss, runs[0].loss));
    EXPECT_TRUE(same_bytes(runs[k].diff, runs[0].diff));
    EXPECT_TRUE(same_bytes(runs[k].prob, runs[0].prob));
  }
  const auto ref = softmax_reference(x, labels, outer, C, inner, opt);
  EXPECT_TRUE(near_rel(runs[0].loss, ref.loss, Tol<T>::rtol, 0.0));
  EXPECT_TRUE(all_close(runs[0].diff, ref.diff, Tol<T>::rtol, Tol<T>::atol * 2.0 / ref.normalizer));
}

TYPED_TEST(Deterministic, SoftmaxWithInnerIsBitIdenticalAcrossThreadCounts) {
  using T = TypeParam;
  const int64_t outer = 64, C = 16, inner = 300;
  static_assert(64 * 16 * 300 >= xentkit::detail::kParallelThreshold);
  Rng rng(12);
  const auto x = rng.normal<T>(size_t(outer * C * inner), 0.0, 3.0);
  auto labels = rng.classes<uint8_t>(size_t(outer * inner), C);
  for (size_t i = 0; i < labels.size(); i += 13) labels[i] = 255;
  SoftmaxWithLossOptions opt;
  opt.ignore_label = 255;
  opt.normalization = Normalization::full;
  std::vector<SoftmaxRun<T>> runs;
  for (const int n : kThreadCounts) {
    xentkit::set_num_threads(n);
    runs.push_back(run_softmax(x, labels, outer, C, inner, opt));
  }
  for (size_t k = 1; k < runs.size(); ++k) {
    SCOPED_TRACE(kThreadCounts[k]);
    EXPECT_TRUE(same_bits(runs[k].loss, runs[0].loss));
    EXPECT_TRUE(same_bytes(runs[k].diff, runs[0].diff));
    EXPECT_TRUE(same_bytes(runs[k].prob, runs[0].prob));
  }
  const auto ref = softmax_reference(x, labels, outer, C, inner, opt);
  EXPECT_TRUE(near_rel(runs[0].loss, ref.loss, Tol<T>::rtol, 0.0));
}

TYPED_TEST(Deterministic, SigmoidIsBitIdenticalAcrossThreadCounts) {
  using T = TypeParam;
  const int64_t outer = 1024, count = int64_t{1} << 20;
  static_assert((int64_t{1} << 20) >= xentkit::detail::kParallelThreshold);
  Rng rng(13);
  const auto x = rng.normal<T>(size_t(count), 0.0, 3.0);
  auto t = rng.uniform<T>(size_t(count));
  for (size_t i = 0; i < t.size(); i += 11) t[i] = T(-1);
  SigmoidCrossEntropyLossOptions opt;
  opt.ignore_label = -1;
  opt.normalization = Normalization::valid;
  opt.loss_weight = 0.5;
  std::vector<SigmoidRun<T>> runs;
  for (const int n : kThreadCounts) {
    xentkit::set_num_threads(n);
    runs.push_back(run_sigmoid(x, t, outer, opt));
  }
  for (size_t k = 1; k < runs.size(); ++k) {
    SCOPED_TRACE(kThreadCounts[k]);
    EXPECT_TRUE(same_bits(runs[k].loss, runs[0].loss));
    EXPECT_TRUE(same_bytes(runs[k].diff, runs[0].diff));
  }
  // The sum over 2^20 elements stays within 1e-6 relative of the double result, also in float.
  const auto ref = sigmoid_reference(x, t, outer, opt);
  EXPECT_TRUE(near_rel(runs[0].loss, ref.loss, std::is_same_v<T, float> ? 1e-6 : 1e-12, 0.0));
  EXPECT_TRUE(all_close(runs[0].diff, ref.diff, Tol<T>::rtol, Tol<T>::atol * 0.5 / ref.normalizer));
}

TEST(ThreadCount, InitialCountFollowsTheEnvironment) {
  // Runs before any test of this process changes the count, or after they restored it.
  const char* env = std::getenv("XENTKIT_NUM_THREADS");
  // The CPUs the process may run on (its affinity mask), where the platform has one.
  const unsigned hw = std::thread::hardware_concurrency();
  int fallback = hw == 0 ? 1 : int(hw);
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) >= 1) {
    fallback = CPU_COUNT(&set);
  }
#endif
  int expected = fallback;
  if (env != nullptr) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= 4096) expected = int(n);
  }
  EXPECT_EQ(xentkit::get_num_threads(), expected) << "XENTKIT_NUM_THREADS=" << (env ? env : "");
}

TEST(ThreadCount, SetAndGet) {
  ThreadCountGuard guard;
  for (const int n : {1, 3, 17}) {
    xentkit::set_num_threads(n);
    EXPECT_EQ(xentkit::get_num_threads(), n);
  }
}

}  // namespace
