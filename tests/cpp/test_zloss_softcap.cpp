// z_loss and softcap of cross_entropy (class indices): the vectorised float32 kernels against the
// scalar ones (the "scalar" level) and against the double kernels, within float32 rounding;
// in-place gradients; bit-identical results for any thread count; bad values refused.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "xentkit/cpu.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/losses.hpp"
#include "xentkit/threading.hpp"

namespace {

using xentkit::CrossEntropyOptions;

class Guard {
 public:
  Guard() : level_(xentkit::simd_level()), threads_(xentkit::get_num_threads()) {}
  ~Guard() {
    xentkit::set_simd_level(level_);
    xentkit::set_num_threads(threads_);
  }

 private:
  std::string level_;
  int threads_;
};

struct Case {
  int64_t outer, channels, inner;
};

struct Result {
  float loss;
  std::vector<float> grad, per;
};

struct Data {
  std::vector<float> x;
  std::vector<int64_t> t;
};

Data make(const Case& c, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 5.0f);
  std::uniform_int_distribution<int64_t> label(0, c.channels - 1);
  Data d;
  d.x.resize(static_cast<size_t>(c.outer * c.channels * c.inner));
  for (auto& v : d.x) v = normal(rng);
  d.t.resize(static_cast<size_t>(c.outer * c.inner));
  for (size_t i = 0; i < d.t.size(); ++i) d.t[i] = (i % 7 == 3) ? -100 : label(rng);
  return d;
}

CrossEntropyOptions options(double z, double s) {
  CrossEntropyOptions o;
  o.z_loss = z;
  o.softcap = s;
  return o;
}

Result run(const Case& c, const Data& d, const CrossEntropyOptions& o, bool in_place = false) {
  Result r;
  r.grad = in_place ? d.x : std::vector<float>(d.x.size());
  const float* in = in_place ? r.grad.data() : d.x.data();
  r.loss = xentkit::cross_entropy<float, int64_t>(in, d.t.data(), c.outer, c.channels, c.inner,
                                                  nullptr, nullptr, r.grad.data(), o);
  CrossEntropyOptions none = o;
  none.reduction = xentkit::Reduction::none;
  r.per.resize(d.t.size());
  xentkit::cross_entropy<float, int64_t>(d.x.data(), d.t.data(), c.outer, c.channels, c.inner,
                                         nullptr, r.per.data(), nullptr, none);
  return r;
}

const Case kCases[] = {{37, 3, 1},  {37, 16, 1},  {40, 17, 1}, {21, 33, 1}, {9, 1000, 1},
                       {2, 32000, 1}, {3, 5, 7},  {2, 40, 70}, {2, 300, 33}, {1, 9, 4096}};
const double kOptions[][2] = {{1e-2, 0.0}, {0.0, 6.0}, {5e-2, 3.0}};

TEST(ZLossSoftcap, VectorisedEqualsScalarWithinFloatRounding) {
  Guard guard;
  unsigned seed = 1;
  for (const Case& c : kCases) {
    const Data d = make(c, seed++);
    for (const auto& zs : kOptions) {
      const CrossEntropyOptions o = options(zs[0], zs[1]);
      xentkit::set_simd_level("scalar");
      const Result ref = run(c, d, o);
      xentkit::set_simd_level("auto");
      for (bool in_place : {false, true}) {
        const Result got = run(c, d, o, in_place);
        SCOPED_TRACE("C=" + std::to_string(c.channels) + " inner=" + std::to_string(c.inner) +
                     " z=" + std::to_string(zs[0]) + " s=" + std::to_string(zs[1]) +
                     (in_place ? " in place" : ""));
        EXPECT_NEAR(got.loss, ref.loss, 2e-6 * std::max(1.0f, std::fabs(ref.loss)));
        float gmax = 0.0f;
        for (float g : ref.grad) gmax = std::max(gmax, std::fabs(g));
        for (size_t i = 0; i < ref.grad.size(); ++i) {
          ASSERT_NEAR(got.grad[i], ref.grad[i], 2e-6f * gmax) << i;
        }
        for (size_t i = 0; i < ref.per.size(); ++i) {
          ASSERT_NEAR(got.per[i], ref.per[i], 2e-6f * std::max(1.0f, std::fabs(ref.per[i])));
        }
      }
    }
  }
}

TEST(ZLossSoftcap, FloatAgreesWithDouble) {
  Guard guard;
  xentkit::set_simd_level("auto");
  unsigned seed = 100;
  for (const Case& c : kCases) {
    const Data d = make(c, seed++);
    const std::vector<double> xd(d.x.begin(), d.x.end());
    for (const auto& zs : kOptions) {
      const CrossEntropyOptions o = options(zs[0], zs[1]);
      const Result got = run(c, d, o);
      std::vector<double> gd(xd.size());
      const double ref = xentkit::cross_entropy<double, int64_t>(
          xd.data(), d.t.data(), c.outer, c.channels, c.inner, nullptr, nullptr, gd.data(), o);
      EXPECT_NEAR(got.loss, ref, 1e-5 * std::max(1.0, std::fabs(ref)));
      double gmax = 0.0;
      for (double g : gd) gmax = std::max(gmax, std::fabs(g));
      for (size_t i = 0; i < gd.size(); ++i) ASSERT_NEAR(got.grad[i], gd[i], 3e-6 * gmax) << i;
    }
  }
}

TEST(ZLossSoftcap, BitIdenticalForAnyThreadCount) {
  Guard guard;
  const Case cases[] = {{3000, 257, 1}, {4, 30, 700}, {600, 9, 1}};
  unsigned seed = 200;
  for (const Case& c : cases) {
    const Data d = make(c, seed++);
    for (const auto& zs : kOptions) {
      const CrossEntropyOptions o = options(zs[0], zs[1]);
      xentkit::set_num_threads(1);
      const Result one = run(c, d, o);
      for (int n : {2, 3, 4}) {
        xentkit::set_num_threads(n);
        const Result many = run(c, d, o);
        EXPECT_EQ(std::memcmp(&many.loss, &one.loss, sizeof(float)), 0);
        EXPECT_TRUE(many.grad == one.grad);
        EXPECT_TRUE(many.per == one.per);
      }
    }
  }
}

TEST(ZLossSoftcap, BadSoftcapIsRefused) {
  const float x[6] = {0, 1, 2, 3, 4, 5};
  const int64_t t[2] = {0, 1};
  const auto capped = [&](double s) {
    return xentkit::cross_entropy<float, int64_t>(x, t, 2, 3, 1, nullptr, nullptr, nullptr,
                                                  options(0.0, s));
  };
  const double bad[] = {-1.0, std::nan(""), HUGE_VAL};
  for (double s : bad) EXPECT_THROW(capped(s), xentkit::value_error);
  const float q[6] = {1, 0, 0, 0, 1, 0};
  const auto probabilities = [&] {
    return xentkit::cross_entropy<float>(x, q, 2, 3, 1, nullptr, nullptr, nullptr,
                                         options(0.0, 5.0));
  };
  EXPECT_THROW(probabilities(), xentkit::value_error);
}

}  // namespace
