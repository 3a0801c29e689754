// bfloat16: the conversions on every bit pattern against references written from the definition
// (at every instruction-set level), and the four bfloat16 entry points against the float32 ones
// on the widened inputs with their outputs rounded once.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "xentkit/bfloat16.hpp"
#include "xentkit/cpu.hpp"
#include "xentkit/losses.hpp"
#include "xentkit_test_support.hpp"

namespace {

using namespace xktest;
using xentkit::bfloat16;

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

/// The value of a bfloat16 pattern from its fields (1 sign, 8 exponent, 7 mantissa bits). With
/// `past_inf`, the infinity pattern stands for 2^128, the next step after the largest finite.
double bf16_value(uint16_t b, bool past_inf = false) {
  const int sign = (b >> 15) ? -1 : 1;
  const int exp = (b >> 7) & 0xff;
  const int man = b & 0x7f;
  if (exp == 0) return sign * std::ldexp(man, -133);
  if (exp == 255) {
    if (man) return NAN;
    return past_inf ? sign * std::ldexp(1.0, 128) : sign * INFINITY;
  }
  return sign * std::ldexp(128 + man, exp - 134);
}

/// The bfloat16 nearest to finite f, ties to the even mantissa: the two patterns around |f| by
/// comparison of their values.
uint16_t nearest_bf16(float f) {
  const double a = std::fabs(static_cast<double>(f));
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  uint16_t lo = 0;
  for (int step = 1 << 14; step > 0; step >>= 1) {  // largest pattern with value <= a
    const int c = lo + step;
    if (c <= 0x7f80 && bf16_value(static_cast<uint16_t>(c), true) <= a) lo = static_cast<uint16_t>(c);
  }
  if (bf16_value(lo, true) == a) return sign | lo;
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double dl = a - bf16_value(lo, true), dh = bf16_value(hi, true) - a;
  if (dl < dh) return sign | lo;
  if (dh < dl) return sign | hi;
  return sign | ((lo & 1) ? hi : lo);
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

TEST(Bfloat16, WideningIsExactForEveryPattern) {
  LevelGuard guard;
  std::vector<bfloat16> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i].bits = static_cast<uint16_t>(i);
  for (const auto& level : levels()) {
    xentkit::set_simd_level(level);
    std::vector<float> wide(all.size());
    xentkit::to_float(all.data(), wide.data(), static_cast<int64_t>(all.size()));
    for (uint32_t i = 0; i < 65536; ++i) {
      const double want = bf16_value(static_cast<uint16_t>(i));
      const uint16_t back = xentkit::to_bfloat16(wide[i]).bits;
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(wide[i])) << level << " " << i;
        uint32_t u;
        std::memcpy(&u, &wide[i], sizeof u);
        ASSERT_NE(u & 0x00400000u, 0u) << level << " " << i;  // quiet
        ASSERT_EQ(back, i | 0x0040u) << level << " " << i;     // sign and payload kept
        continue;
      }
      ASSERT_EQ(static_cast<double>(wide[i]), want) << level << " " << i;
      ASSERT_EQ(std::signbit(wide[i]), (i & 0x8000) != 0) << level << " " << i;
      ASSERT_EQ(xentkit::to_float(all[i]), wide[i]);
      ASSERT_EQ(back, i) << level << " " << i;
    }
  }
}

TEST(Bfloat16, NarrowingRoundsToNearestEven) {
  LevelGuard guard;
  Rng rng(11);
  std::vector<float> v;
  // Random bit patterns over all floats, every midpoint between neighbouring finite bfloat16
  // values (ties, both parities), their neighbours one float ulp away, and the edges.
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  for (int i = 0; i < 200000; ++i) v.push_back(from_bits(bits(rng.engine())));
  for (uint32_t b = 0; b < 0x7f7f; b += 3) {
    const uint32_t mid = (b << 16) | 0x8000u;
    v.push_back(from_bits(mid));
    v.push_back(from_bits(mid - 1));
    v.push_back(from_bits(mid + 1));
  }
  for (float f : {0.0f, 3.3895314e38f, 3.3961776e38f, 3.4028235e38f, INFINITY, 1e-45f,
                  1.1754942e-38f, 1.17549435e-38f}) {
    v.push_back(f);
  }
  const size_t n = v.size();
  for (size_t i = 0; i < n; ++i) v.push_back(-v[i]);
  for (const auto& level : levels()) {
    xentkit::set_simd_level(level);
    std::vector<bfloat16> out(v.size());
    xentkit::to_bfloat16(v.data(), out.data(), static_cast<int64_t>(v.size()));
    for (size_t i = 0; i < v.size(); ++i) {
      if (std::isnan(v[i])) {
        uint32_t u;
        std::memcpy(&u, &v[i], sizeof u);
        ASSERT_EQ(out[i].bits, static_cast<uint16_t>((u >> 16) | 0x0040u)) << level;
        continue;
      }
      const uint16_t want = nearest_bf16(v[i]);
      ASSERT_EQ(out[i].bits, want) << level << " " << v[i];
      ASSERT_EQ(xentkit::to_bfloat16(v[i]).bits, want) << v[i];
    }
  }
}

std::vector<bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<bfloat16> out(v.size());
  xentkit::to_bfloat16(v.data(), out.data(), static_cast<int64_t>(v.size()));
  return out;
}

std::vector<float> widened(const std::vector<bfloat16>& v) {
  std::vector<float> out(v.size());
  xentkit::to_float(v.data(), out.data(), static_cast<int64_t>(v.size()));
  return out;
}

/// Each bfloat16 output is the float32 output on the widened inputs, rounded once.
void expect_rounded(const std::vector<bfloat16>& got, const std::vector<float>& f32,
                    const char* what) {
  ASSERT_EQ(got.size(), f32.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].bits, xentkit::to_bfloat16(f32[i]).bits) << what << " " << i;
  }
}

TEST(Bfloat16, CrossEntropyIsTheFloat32LossRounded) {
  LevelGuard guard;
  Rng rng(3);
  for (const auto& level : levels()) {
    xentkit::set_simd_level(level);
    for (const auto& shape : {std::vector<int64_t>{37, 5, 1}, {9, 40, 1}, {3, 7, 19}}) {
      const int64_t outer = shape[0], C = shape[1], inner = shape[2];
      const auto x = to_bf16(rng.normal<float>(outer * C * inner, 0.0, 3.0));
      auto y = rng.classes<int64_t>(outer * inner, C);
      y[1] = -100;  // ignored
      const auto w = rng.uniform<float>(C, 0.5, 2.0);
      const auto xf = widened(x);
      for (double eps : {0.0, 0.1}) {
        for (auto red : {xentkit::Reduction::none, xentkit::Reduction::mean}) {
          xentkit::CrossEntropyOptions opt;
          opt.reduction = red;
          opt.label_smoothing = eps;
          std::vector<bfloat16> loss(outer * inner), grad(x.size());
          std::vector<float> lf(outer * inner), gf(x.size());
          const float r = xentkit::cross_entropy(x.data(), y.data(), outer, C, inner, w.data(),
                                                 loss.data(), grad.data(), opt);
          const float rf = xentkit::cross_entropy(xf.data(), y.data(), outer, C, inner, w.data(),
                                                  lf.data(), gf.data(), opt);
          EXPECT_EQ(r, rf) << level;
          expect_rounded(grad, gf, "grad");
          if (red == xentkit::Reduction::none) expect_rounded(loss, lf, "loss");
        }
      }
    }
  }
}

TEST(Bfloat16, SoftmaxWithLossIsTheFloat32LayerRounded) {
  Rng rng(4);
  const int64_t outer = 6, C = 33, inner = 5;
  const auto x = to_bf16(rng.normal<float>(outer * C * inner, 0.0, 4.0));
  const auto y = rng.classes<int32_t>(outer * inner, C);
  const auto xf = widened(x);
  std::vector<bfloat16> diff(x.size()), prob(x.size());
  std::vector<float> df(x.size()), pf(x.size());
  const float r = xentkit::softmax_with_loss(x.data(), y.data(), outer, C, inner, diff.data(),
                                             prob.data());
  const float rf = xentkit::softmax_with_loss(xf.data(), y.data(), outer, C, inner, df.data(),
                                              pf.data());
  EXPECT_EQ(r, rf);
  expect_rounded(diff, df, "diff");
  expect_rounded(prob, pf, "prob");
}

TEST(Bfloat16, BinaryLossesAreTheFloat32OnesRounded) {
  LevelGuard guard;
  Rng rng(6);
  const int64_t n = 5000;
  auto xv = rng.normal<float>(n, 0.0, 5.0);
  xv[7] = NAN;
  xv[8] = INFINITY;
  xv[9] = -INFINITY;
  const auto x = to_bf16(xv);
  const auto t = to_bf16(rng.uniform<float>(n));
  const auto xf = widened(x), tf = widened(t);
  const float pw = 1.5f;
  const xentkit::Broadcast<float> pwb{&pw, 1, 1};
  for (const auto& level : levels()) {
    xentkit::set_simd_level(level);
    std::vector<bfloat16> loss(n), grad(n);
    std::vector<float> lf(n), gf(n);
    xentkit::BinaryCrossEntropyOptions opt;
    opt.reduction = xentkit::Reduction::none;
    xentkit::binary_cross_entropy_with_logits(x.data(), t.data(), n, {}, pwb, loss.data(),
                                              grad.data(), opt);
    xentkit::binary_cross_entropy_with_logits(xf.data(), tf.data(), n, {}, pwb, lf.data(),
                                              gf.data(), opt);
    expect_rounded(loss, lf, "loss");
    expect_rounded(grad, gf, "grad");
    EXPECT_TRUE(std::isnan(xentkit::to_float(loss[7])));

    std::vector<bfloat16> diff(n);
    std::vector<float> dfl(n);
    xentkit::SigmoidCrossEntropyLossOptions so;
    so.ignore_label = 0;
    so.normalization = xentkit::Normalization::valid;
    const float r = xentkit::sigmoid_cross_entropy_loss(x.data() + 10, t.data() + 10, 10, n - 10,
                                                        diff.data(), so);
    const float rf = xentkit::sigmoid_cross_entropy_loss(xf.data() + 10, tf.data() + 10, 10,
                                                         n - 10, dfl.data(), so);
    EXPECT_EQ(r, rf) << level;
    diff.resize(n - 10);
    dfl.resize(n - 10);
    expect_rounded(diff, dfl, "diff");
  }
}

}  // namespace
