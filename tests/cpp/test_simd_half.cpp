// The vectorised kernels at every instruction-set level against the double kernels; float16
// conversions (exhaustive widening, rounding to nearest even) and the float16 entry points; the
// worker pool under concurrent callers.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "xentkit/cpu.hpp"
#include "xentkit/half.hpp"
#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::CrossEntropyOptions;
using xentkit::half;

std::vector<std::string> levels() {
  std::vector<std::string> out;
  std::stringstream in(xentkit::simd_levels_available());
  std::string item;
  while (std::getline(in, item, ',')) {
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    out.push_back(item);
  }
  return out;
}

class LevelGuard {
 public:
  LevelGuard() : saved_(xentkit::simd_level()) {}
  ~LevelGuard() { xentkit::set_simd_level(saved_); }

 private:
  std::string saved_;
};

/// The value of a binary16 bit pattern from its fields.
double half_value(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int man = h & 0x3ff;
  if (exp == 0) return sign * std::ldexp(man, -24);
  if (exp == 31) return man ? NAN : sign * INFINITY;
  return sign * std::ldexp(1024 + man, exp - 25);
}

/// The binary16 nearest to f (ties to the even mantissa), by search over the finite patterns.
uint16_t nearest_half(float f) {
  if (std::isnan(f)) return 0x7e00;
  const double v = f;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(v);
  if (a >= 65520.0) return sign | 0x7c00;  // rounds past the largest finite half, 65504
  uint16_t lo = 0, hi = 0x7bff;
  while (lo < hi) {  // the largest pattern with value <= a
    const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (half_value(mid) <= a) lo = mid; else hi = static_cast<uint16_t>(mid - 1);
  }
  uint16_t best = lo;
  if (lo < 0x7bff) {
    const double below = a - half_value(lo), above = half_value(lo + 1) - a;
    if (above < below || (above == below && (lo & 1))) best = static_cast<uint16_t>(lo + 1);
  }
  return sign | best;
}

TEST(Half, WideningIsExactForEveryPattern) {
  LevelGuard guard;
  std::vector<half> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i].bits = static_cast<uint16_t>(i);
  for (const auto& level : levels()) {
    xentkit::set_simd_level(level);
    std::vector<float> wide(all.size());
    xentkit::to_float(all.data(), wide.data(), static_cast<int64_t>(all.size()));
    for (uint32_t i = 0; i < 65536; ++i) {
      const double want = half_value(static_cast<uint16_t>(i));
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(wide[i])) << level << " " << i;
        continue;
      }
      ASSERT_EQ(static_cast<double>(wide[i]), want) << level << " " << i;
      ASSERT_EQ(std::signbit(wide[i]), (i & 0x8000) != 0) << level << " " << i;
      ASSERT_EQ(xentkit::to_float(all[i]), wide[i]);
      // Narrowing a widened value gives the pattern back.
      ASSERT_EQ(xentkit::to_half(wide[i]).bits, i) << level << " " << i;
    }
  }
}

TEST(Half, NarrowingRoundsToNearestEven) {
  LevelGuard guard;
  Rng rng(5);
  std::vector<float> v;
  // Random magnitudes over the whole range, every midpoint between neighbouring halves (ties),
  // and the edges: subnormals, the largest finite, overflow, infinities, NaN.
  for (double e : rng.uniform<double>(20000, -30.0, 17.0)) v.push_back(static_cast<float>(std::exp2(e)));
  for (uint32_t h = 0; h < 0x7bff; h += 7) {
    v.push_back(static_cast<float>((half_value(static_cast<uint16_t>(h)) +
                                    half_value(static_cast<uint16_t>(h + 1))) / 2));
  }
  for (float f : {0.0f, 65504.0f, 65519.99f, 65520.0f, 1e10f, INFINITY, 5.9604645e-08f,
                  2.9802322e-08f, 2.9802326e-08f, 6.1035156e-05f, 6.1035152e-05f, NAN}) {
    v.push_back(f);
  }
  const size_t n = v.size();
  for (size_t i = 0; i < n; ++i) v.push_back(-v[i]);
  for (const auto& level : levels()) {
    xentkit::set_simd_level(level);
    std::vector<half> out(v.size());
    xentkit::to_half(v.data(), out.data(), static_cast<int64_t>(v.size()));
    for (size_t i = 0; i < v.size(); ++i) {
      const uint16_t want = nearest_half(v[i]);
      if (std::isnan(v[i])) {
        ASSERT_EQ(out[i].bits & 0x7c00, 0x7c00) << level;
        ASSERT_NE(out[i].bits & 0x03ff, 0) << level;
        continue;
      }
      ASSERT_EQ(out[i].bits, want) << level << " " << v[i];
      ASSERT_EQ(xentkit::to_half(v[i]).bits, want) << v[i];
    }
  }
}

TEST(SimdLevels, FloatKernelsAgreeWithDouble) {
  LevelGuard guard;
  Rng rng(17);
  for (int64_t C : {1, 7, 16, 33, 1000}) {
    for (int64_t inner : {int64_t{1}, int64_t{40}}) {
      const int64_t outer = 9;
      const size_t count = static_cast<size_t>(outer * C * inner);
      const auto xd = rng.normal<double>(count, 0.0, 4.0);
      std::vector<float> xf(xd.begin(), xd.end());
      std::vector<double> xr(xf.begin(), xf.end());  // the float values, in double
      auto labels = rng.classes<int64_t>(static_cast<size_t>(outer * inner), C);
      labels[3] = -100;
      std::vector<double> gd(count);
      CrossEntropyOptions opt;
      const double want = xentkit::cross_entropy<double, int64_t>(xr.data(), labels.data(), outer, C, inner,
                                                 static_cast<const double*>(nullptr), nullptr,
                                                 gd.data(), opt);
      for (const auto& level : levels()) {
        xentkit::set_simd_level(level);
        std::vector<float> gf(count);
        const float got = xentkit::cross_entropy<float, int64_t>(xf.data(), labels.data(), outer, C, inner,
                                                 static_cast<const float*>(nullptr), nullptr,
                                                 gf.data(), opt);
        EXPECT_NEAR(got, want, 2e-6 * std::fabs(want)) << level << " C=" << C;
        for (size_t i = 0; i < count; ++i) {
          ASSERT_NEAR(gf[i], gd[i], 2e-7) << level << " C=" << C << " inner=" << inner;
        }
        // float16 storage: the float32 result on the same values, rounded once.
        std::vector<half> xh(count), gh(count);
        xentkit::to_half(xf.data(), xh.data(), static_cast<int64_t>(count));
        std::vector<float> xw(count), gw(count), gback(count);
        xentkit::to_float(xh.data(), xw.data(), static_cast<int64_t>(count));
        const float lw = xentkit::cross_entropy<float, int64_t>(xw.data(), labels.data(), outer, C, inner,
                                                static_cast<const float*>(nullptr), nullptr,
                                                gw.data(), opt);
        const float lh = xentkit::cross_entropy<int64_t>(xh.data(), labels.data(), outer, C, inner,
                                                nullptr, nullptr, gh.data(), opt);
        EXPECT_EQ(lh, lw) << level;
        for (size_t i = 0; i < count; ++i) {
          ASSERT_EQ(gh[i].bits, xentkit::to_half(gw[i]).bits) << level << " " << i;
        }
      }
    }
  }
}

TEST(SimdLevels, NarrowRowsStayInsideTheirBuffers) {
  // Rows of 2..16 classes (the kernels compiled per class count: lane permutes on AVX-512,
  // register transposes on AVX2, the logistic form for two classes) in buffers of exactly the
  // rows' size, so that a read or write past the last row is a sanitizer report; row counts
  // below, at and past the 16-row block; the gradient apart and in place, against double.
  LevelGuard guard;
  Rng rng(29);
  for (int64_t C = 2; C <= 16; ++C) {
    for (int64_t rows : {int64_t{1}, int64_t{16}, int64_t{17}, int64_t{31}, int64_t{48}, int64_t{53}}) {
      const size_t count = static_cast<size_t>(rows * C);
      const auto xd = rng.normal<double>(count, 0.0, 4.0);
      const std::vector<float> xf(xd.begin(), xd.end());
      const std::vector<double> xr(xf.begin(), xf.end());
      auto labels = rng.classes<int64_t>(static_cast<size_t>(rows), C);
      labels[0] = -100;
      std::vector<double> gd(count);
      CrossEntropyOptions opt;
      opt.reduction = xentkit::Reduction::sum;
      const double want = xentkit::cross_entropy<double, int64_t>(
          xr.data(), labels.data(), rows, C, 1, static_cast<const double*>(nullptr), nullptr,
          gd.data(), opt);
      for (const auto& level : levels()) {
        xentkit::set_simd_level(level);
        std::vector<float> gf(count);
        const float got = xentkit::cross_entropy<float, int64_t>(
            xf.data(), labels.data(), rows, C, 1, static_cast<const float*>(nullptr), nullptr,
            gf.data(), opt);
        EXPECT_NEAR(got, want, 2e-6 * std::fabs(want) + 1e-6) << level << " C=" << C;
        for (size_t i = 0; i < count; ++i) {
          ASSERT_NEAR(gf[i], gd[i], 2e-6 * std::fabs(gd[i]) + 1e-7)
              << level << " C=" << C << " rows=" << rows << " i=" << i;
        }
        std::vector<float> inplace(xf);
        const float got_i = xentkit::cross_entropy<float, int64_t>(
            inplace.data(), labels.data(), rows, C, 1, static_cast<const float*>(nullptr),
            nullptr, inplace.data(), opt);
        EXPECT_EQ(got_i, got) << level << " C=" << C;
        EXPECT_EQ(0, std::memcmp(inplace.data(), gf.data(), count * sizeof(float)))
            << level << " C=" << C << " rows=" << rows;
      }
    }
  }
}

TEST(Pool, ConcurrentCallersGetTheSingleThreadedBits) {
  ThreadCountGuard guard;
  Rng rng(23);
  const int64_t N = 600, C = 1000;
  const auto x = rng.normal<float>(size_t(N * C), 0.0, 3.0);
  const auto labels = rng.classes<int32_t>(size_t(N), C);
  CrossEntropyOptions opt;
  xentkit::set_num_threads(1);
  std::vector<float> want_g(x.size());
  const float want = xentkit::cross_entropy<float, int32_t>(x.data(), labels.data(), N, C, 1,
                                            static_cast<const float*>(nullptr), nullptr,
                                            want_g.data(), opt);
  xentkit::set_num_threads(2);
  std::vector<std::thread> callers;
  std::vector<int> ok(8, 0);
  for (int t = 0; t < 8; ++t) {
    callers.emplace_back([&, t] {
      std::vector<float> g(x.size());
      bool same = true;
      for (int rep = 0; rep < 5; ++rep) {
        const float l = xentkit::cross_entropy<float, int32_t>(x.data(), labels.data(), N, C, 1,
                                               static_cast<const float*>(nullptr), nullptr,
                                               g.data(), opt);
        same = same && l == want &&
               std::memcmp(g.data(), want_g.data(), g.size() * sizeof(float)) == 0;
        if (t == 0) xentkit::set_num_threads(1 + rep % 3);  // changed while others run
      }
      ok[static_cast<size_t>(t)] = same ? 1 : 0;
    });
  }
  for (auto& th : callers) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(ok[static_cast<size_t>(t)], 1) << "caller " << t;
}

}  // namespace
