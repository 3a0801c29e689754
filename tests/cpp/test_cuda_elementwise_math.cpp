// The per-element math of the CUDA elementwise family (cuda/elementwise_math.hpp), run on the host
// and compared element by element with the CPU functions that use the same family:
// binary_cross_entropy_with_logits, binary_cross_entropy, sigmoid_cross_entropy_loss and
// sigmoid_cross_entropy_with_logits. The reduced value is rebuilt the way the kernels build it
// (the block partition of the main kernel, its warp and block trees, the finalize's fixed order)
// and compared with the CPU's. Every run draws fresh inputs; the seed is printed on failure and
// XENTKIT_TEST_SEED replays one.

#include <gtest/gtest.h>

#include <array>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "elementwise_math.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/half.hpp"
#include "xentkit/losses.hpp"

namespace {

namespace elem = xentkit::cuda::detail::elem;
using xentkit::Broadcast;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

uint64_t fresh_seed() {
  if (const char* s = std::getenv("XENTKIT_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

struct Gen {
  std::mt19937_64 g;
  explicit Gen(uint64_t seed) : g(seed) {}
  double u() { return std::uniform_real_distribution<double>(0.0, 1.0)(g); }
  double normal(double sd) { return std::normal_distribution<double>(0.0, sd)(g); }
  int64_t pick(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(g); }

  /// Logits: mostly moderate, some large, some +-inf and NaN (when `special`), some exact 0.
  double logit(bool special) {
    const double r = u();
    if (r < 0.55) return normal(3.0);
    if (r < 0.70) return normal(30.0);
    if (r < 0.80) return (u() < 0.5 ? -1 : 1) * std::exp(std::log(20.0) + u() * std::log(1e4));
    if (r < 0.85) return 0.0;
    if (r < 0.90) return normal(1e-4);
    if (!special) return normal(1.0);
    if (r < 0.96) return u() < 0.5 ? kInf : -kInf;
    if (r < 0.98) return kNaN;
    return (u() < 0.5 ? -1 : 1) * 3.0e38;  // near float max
  }
  /// Targets: 0, 1, soft, 0.5.
  double target() {
    const double r = u();
    if (r < 0.3) return 0.0;
    if (r < 0.6) return 1.0;
    if (r < 0.65) return 0.5;
    return u();
  }
  /// Probabilities: inside [0, 1], ends and near-ends included.
  double probability() {
    const double r = u();
    if (r < 0.05) return 0.0;
    if (r < 0.10) return 1.0;
    if (r < 0.15) return std::exp(-u() * 120.0);        // tiny, down to where log clamps
    if (r < 0.20) return 1.0 - std::exp(-u() * 30.0);  // near 1
    return u();
  }
  /// Weights: nonnegative, a fifth of them 0.
  double weight() { return u() < 0.2 ? 0.0 : 2.0 * u(); }
  double pos_weight() {
    const double r = u();
    if (r < 0.1) return 0.0;
    if (r < 0.2) return 1.0;
    return 5.0 * u();
  }
};

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

/// got == want within `ulps` units of T's epsilon times (|want| + mag); NaN matches NaN, an
/// infinity matches the same infinity.
template <typename T>
::testing::AssertionResult close(T got, T want, double mag, double ulps) {
  const double g = static_cast<double>(got), w = static_cast<double>(want);
  if (std::isnan(g) || std::isnan(w)) {
    if (std::isnan(g) && std::isnan(w)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << g << ", want " << w;
  }
  if (std::isinf(g) || std::isinf(w)) {
    if (g == w) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << g << ", want " << w;
  }
  // Relative to the value, with a floor of `ulps` steps of the subnormal range (where a float
  // has fewer significant bits than epsilon assumes).
  const double tol = std::max(ulps * std::numeric_limits<T>::epsilon() * (std::fabs(w) + mag),
                              ulps * static_cast<double>(std::numeric_limits<T>::denorm_min()));
  if (std::fabs(g - w) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << g << ", want " << w << " (|diff| "
                                       << std::fabs(g - w) << " > " << tol << ")";
}

/// The CPU's float kernel takes a vector path (polynomial exp and log1p, ~2e-7) when there are no
/// weights and no ignored label; the double kernel and every other case are the same scalar code.
template <typename T>
constexpr double kUlps = std::is_same_v<T, float> ? 16.0 : 4.0;

/// |v| for finite v, else 0 (infinite and NaN results must match exactly).
double finite_abs(double v) { return std::isfinite(v) ? std::fabs(v) : 0.0; }

template <typename T>
T at(const Broadcast<T>& b, int64_t i) {
  return b.data ? b.data[(i / b.stride) % b.period] : T(1);
}

// ---- the reduction as the kernels perform it -------------------------------------------------

/// block_sum of common.cuh over kThreads values: xor-butterfly warp sums (v + v[lane ^ o]), lane 0
/// of each warp into scratch, then the first warp's butterfly over the scratch. Returns thread 0's.
template <typename V>
V emulate_warp_sum(std::array<V, 32> lanes) {
  for (int o = 16; o > 0; o >>= 1) {
    std::array<V, 32> next{};
    for (int l = 0; l < 32; ++l) next[l] = lanes[l] + lanes[l ^ o];
    lanes = next;
  }
  return lanes[0];
}

template <typename V>
V emulate_block_sum(const std::vector<V>& v) {
  const int warps = elem::kThreads / 32;
  std::array<V, 32> scratch{};
  for (int w = 0; w < warps; ++w) {
    std::array<V, 32> lanes{};
    for (int l = 0; l < 32; ++l) lanes[l] = v[32 * w + l];
    scratch[w] = emulate_warp_sum(lanes);
  }
  std::array<V, 32> first{};
  for (int l = 0; l < warps; ++l) first[l] = scratch[l];
  return emulate_warp_sum(first);
}

struct Reduced {
  double sum = 0.0;
  double count = 0.0;
  double abs_sum = 0.0;  // sum of |l|: the scale of the rounding of any order of summation
  int grid = 0;
};

/// Units of T's epsilon allowed between two reduced values: the terms' own (a few units of T),
/// plus two orders of summing n terms in double.
template <typename T>
double sum_ulps(int64_t n) {
  return kUlps<T> + 2.0 * std::sqrt(static_cast<double>(n)) *
                        (std::numeric_limits<double>::epsilon() /
                         std::numeric_limits<T>::epsilon());
}

/// The main kernel's partition (chunks of V elements dealt round-robin to the grid's threads,
/// sums in double per thread) and the finalize's combine.
Reduced emulate_reduction(const std::vector<elem::Element>& es, int element_bytes) {
  const int64_t n = static_cast<int64_t>(es.size());
  const int v = elem::chunk_elements(element_bytes);
  const int64_t chunks = elem::chunk_count(n, v);
  Reduced r;
  r.grid = elem::grid_for(chunks);
  const int64_t step = static_cast<int64_t>(r.grid) * elem::kThreads;
  std::vector<double> psum(r.grid), pcount(r.grid);
  std::vector<int> seen(n, 0);
  for (int b = 0; b < r.grid; ++b) {
    std::vector<double> acc(elem::kThreads, 0.0);
    std::vector<long long> valid(elem::kThreads, 0);
    for (int j = 0; j < elem::kThreads; ++j) {
      for (int64_t c = int64_t(b) * elem::kThreads + j; c < chunks; c += step) {
        for (int k = 0; k < v; ++k) {
          const int64_t i = c * v + k;
          if (i >= n) continue;
          ++seen[i];
          EXPECT_EQ(elem::owner_block(i, v, r.grid), b);
          acc[j] += es[i].loss;
          r.abs_sum += std::fabs(es[i].loss);
          valid[j] += es[i].counted;
        }
      }
    }
    psum[b] = emulate_block_sum(acc);
    pcount[b] = static_cast<double>(emulate_block_sum(valid));
  }
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(seen[i], 1) << "element " << i;
  std::vector<double> s(elem::kThreads, 0.0), c(elem::kThreads, 0.0);
  for (int j = 0; j < elem::kThreads; ++j) {
    for (int b = j; b < r.grid; b += elem::kThreads) {
      s[j] += psum[b];
      c[j] += pcount[b];
    }
  }
  r.sum = emulate_block_sum(s);
  r.count = emulate_block_sum(c);
  return r;
}

// ---- one problem, through the header --------------------------------------------------------

template <typename T>
std::vector<elem::Element> run_header(bool probabilities, const std::vector<T>& x,
                                      const std::vector<T>& t, Broadcast<T> w, Broadcast<T> pw,
                                      bool has_ignore, int64_t ignore) {
  // The broadcast index walks chunks as the kernel does: one seek per chunk, then next().
  const int v = elem::chunk_elements(sizeof(T));
  const int64_t n = static_cast<int64_t>(x.size());
  elem::BroadcastIndex wi(w.stride, w.period), pi(pw.stride, pw.period);
  std::vector<elem::Element> out(n);
  for (int64_t i0 = 0; i0 < n; i0 += v) {
    wi.seek(i0);
    pi.seek(i0);
    for (int64_t i = i0; i < n && i < i0 + v; ++i) {
      const T wv = w.data ? w.data[wi.k] : T(1);
      const T pv = pw.data ? pw.data[pi.k] : T(1);
      EXPECT_EQ(wv, at(w, i));
      EXPECT_EQ(pv, at(pw, i));
      out[i] = elem::element<T>(probabilities, x[i], t[i], wv, pv, has_ignore, ignore);
      wi.next();
      pi.next();
    }
  }
  return out;
}

template <typename T>
class CudaElementwiseMath : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CudaElementwiseMath, Types);

// ---- PyTorch: binary_cross_entropy_with_logits ------------------------------------------------

TYPED_TEST(CudaElementwiseMath, LogitsMatchBinaryCrossEntropyWithLogits) {
  using T = TypeParam;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Gen gen(seed);
  for (int trial = 0; trial < 24; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const int64_t rows = 1 + gen.pick(40), cols = 1 + gen.pick(37);
    const int64_t n = rows * cols;
    std::vector<double> xd(n), td(n);
    for (int64_t i = 0; i < n; ++i) {
      xd[i] = gen.logit(true);
      td[i] = gen.target();
    }
    const auto x = cast<T>(xd), t = cast<T>(td);
    // weight over the last axis, over the first, the full shape, or none; pos_weight likewise.
    std::vector<T> wv, pv;
    Broadcast<T> w, pw;
    const int wmode = trial % 4, pmode = (trial / 4) % 3;
    if (wmode == 1) { wv.resize(cols); w = {nullptr, 1, cols}; }
    if (wmode == 2) { wv.resize(rows); w = {nullptr, cols, rows}; }
    if (wmode == 3) { wv.resize(n); w = {nullptr, 1, n}; }
    for (auto& e : wv) e = static_cast<T>(gen.weight());
    if (!wv.empty()) w.data = wv.data();
    if (pmode == 1) { pv.resize(cols); pw = {nullptr, 1, cols}; }
    if (pmode == 2) { pv.resize(1); pw = {nullptr, 1, 1}; }
    for (auto& e : pv) e = static_cast<T>(gen.pos_weight());
    if (!pv.empty()) pw.data = pv.data();

    const double grad_output = trial % 2 ? 1.0 : 0.5 + gen.u();
    xentkit::BinaryCrossEntropyOptions opt;
    opt.reduction = xentkit::Reduction::none;
    opt.grad_output = grad_output;
    std::vector<T> loss(n), grad(n);
    xentkit::binary_cross_entropy_with_logits<T>(x.data(), t.data(), n, w, pw, loss.data(),
                                                 grad.data(), opt);
    const auto es = run_header(false, x, t, w, pw, false, 0);
    for (int64_t i = 0; i < n; ++i) {
      SCOPED_TRACE("i " + std::to_string(i) + " x " + std::to_string(xd[i]) + " t " +
                   std::to_string(td[i]));
      const double wi = static_cast<double>(at(w, i)), pi = static_cast<double>(at(pw, i));
      const double mag = wi * (1.0 + pi) * (1.0 + finite_abs(static_cast<double>(x[i])));
      EXPECT_EQ(es[i].bad, 0);
      EXPECT_EQ(es[i].counted, 1);
      EXPECT_TRUE(close<T>(static_cast<T>(es[i].loss), loss[i], mag, kUlps<T>)) << "loss";
      EXPECT_TRUE(close<T>(elem::scaled_grad<T>(es[i], grad_output), grad[i],
                           wi * (1.0 + pi) * grad_output, kUlps<T>))
          << "grad";
    }
  }
}

TYPED_TEST(CudaElementwiseMath, InfiniteLogitsGiveTheLimits) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  auto one = [](T x, T t, T w, T pw) {
    return elem::element<T>(false, x, t, w, pw, false, 0);
  };
  EXPECT_EQ(one(inf, 1, 1, 1).loss, 0.0);
  EXPECT_EQ(one(inf, 1, 1, 1).grad, 0.0);
  EXPECT_EQ(one(-inf, 0, 1, 1).loss, 0.0);
  EXPECT_EQ(one(-inf, 0, 1, 1).grad, 0.0);
  EXPECT_EQ(one(inf, 0, 1, 1).loss, kInf);
  EXPECT_EQ(one(inf, 0, 1, 1).grad, 1.0);
  EXPECT_EQ(one(-inf, 1, 1, 3).loss, kInf);
  EXPECT_EQ(one(-inf, 1, 1, 3).grad, -3.0);
  EXPECT_EQ(one(-inf, 1, 1, 0).loss, 0.0);   // pos_weight 0 removes the infinite term
  EXPECT_EQ(one(inf, 0, 0, 1).loss, 0.0);    // a zero weight removes an infinite loss
  EXPECT_EQ(one(inf, 0, 0, 1).grad, 0.0);
  EXPECT_EQ(one(inf, T(0.25), 1, 1).loss, kInf);
  EXPECT_TRUE(std::isnan(one(std::numeric_limits<T>::quiet_NaN(), 1, 0, 1).loss));  // NaN stays
}

// ---- PyTorch: binary_cross_entropy ------------------------------------------------------------

TYPED_TEST(CudaElementwiseMath, ProbabilitiesMatchBinaryCrossEntropy) {
  using T = TypeParam;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Gen gen(seed);
  for (int trial = 0; trial < 16; ++trial) {
    const int64_t n = 1 + gen.pick(3000);
    std::vector<double> xd(n), td(n);
    for (int64_t i = 0; i < n; ++i) {
      xd[i] = gen.probability();
      td[i] = gen.u() < 0.7 ? gen.target() : gen.probability();
    }
    const auto x = cast<T>(xd), t = cast<T>(td);
    std::vector<T> wv;
    Broadcast<T> w;
    if (trial % 2) {
      wv.resize(n);
      for (auto& e : wv) e = static_cast<T>(gen.weight());
      w = {wv.data(), 1, n};
    }
    const double grad_output = 0.5 + gen.u();
    xentkit::BinaryCrossEntropyOptions opt;
    opt.reduction = xentkit::Reduction::none;
    opt.grad_output = grad_output;
    std::vector<T> loss(n), grad(n);
    xentkit::binary_cross_entropy<T>(x.data(), t.data(), n, w, loss.data(), grad.data(), opt);
    const auto es = run_header(true, x, t, w, Broadcast<T>{}, false, 0);
    for (int64_t i = 0; i < n; ++i) {
      SCOPED_TRACE("i " + std::to_string(i) + " x " + std::to_string(xd[i]) + " t " +
                   std::to_string(td[i]));
      EXPECT_EQ(es[i].bad, 0);
      // Computed in T here (float for float), in double on the CPU: a few units of T apart.
      EXPECT_TRUE(close<T>(static_cast<T>(es[i].loss), loss[i], 0.0, kUlps<T>)) << "loss";
      EXPECT_TRUE(close<T>(elem::scaled_grad<T>(es[i], grad_output), grad[i], 0.0, kUlps<T>))
          << "grad";
    }
    // The mean, rebuilt as the kernels reduce it.
    opt.reduction = xentkit::Reduction::mean;
    const T mean = xentkit::binary_cross_entropy<T>(x.data(), t.data(), n, w, nullptr, nullptr,
                                                    opt);
    const Reduced r = emulate_reduction(es, sizeof(T));
    EXPECT_EQ(r.count, static_cast<double>(n));
    EXPECT_TRUE(close<T>(static_cast<T>(r.sum / static_cast<double>(n)), mean,
                         r.abs_sum / static_cast<double>(n), sum_ulps<T>(n)));
  }
}

TYPED_TEST(CudaElementwiseMath, BadProbabilitiesAreFlaggedAsTheCpuReportsThem) {
  using T = TypeParam;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Gen gen(seed);
  const double bad_values[] = {-0.25, 1.5, kNaN, -kInf, kInf, -1e-30, 1.0 + 1e-3};
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t n = 1 + gen.pick(200);
    std::vector<double> xd(n), td(n);
    for (int64_t i = 0; i < n; ++i) {
      xd[i] = gen.probability();
      td[i] = gen.target();
    }
    const int nbad = 1 + static_cast<int>(gen.pick(3));
    for (int k = 0; k < nbad; ++k) {
      (gen.u() < 0.5 ? xd : td)[gen.pick(n)] = bad_values[gen.pick(7)];
    }
    const auto x = cast<T>(xd), t = cast<T>(td);
    const auto es = run_header(true, x, t, Broadcast<T>{}, Broadcast<T>{}, false, 0);
    // The record the finalize kernel writes: the first bad input, else the first bad target.
    int64_t first_x = -1, first_t = -1;
    for (int64_t i = 0; i < n; ++i) {
      const bool bx = !(x[i] >= T(0) && x[i] <= T(1)), bt = !(t[i] >= T(0) && t[i] <= T(1));
      EXPECT_EQ(es[i].bad, (bx ? 1 : 0) | (bt ? 2 : 0));
      if (bx || bt) {
        EXPECT_TRUE(std::isnan(es[i].loss));
        EXPECT_TRUE(std::isnan(es[i].grad));
      } else {
        EXPECT_FALSE(std::isnan(es[i].loss));
      }
      if (bx && first_x < 0) first_x = i;
      if (bt && first_t < 0) first_t = i;
    }
    ASSERT_TRUE(first_x >= 0 || first_t >= 0);
    const bool input = first_x >= 0;
    const int64_t index = input ? first_x : first_t;
    std::ostringstream want;
    want.precision(std::numeric_limits<T>::max_digits10);
    want << (input ? "input" : "target") << ": expected every element in [0, 1], got "
         << static_cast<double>(input ? x[index] : t[index]) << " at flat index " << index;
    try {
      xentkit::binary_cross_entropy<T>(x.data(), t.data(), n, {}, nullptr, nullptr, {});
      ADD_FAILURE() << "the CPU accepted bad probabilities";
    } catch (const xentkit::value_error& e) {
      EXPECT_EQ(std::string(e.what()), want.str());
    }
    const Reduced r = emulate_reduction(es, sizeof(T));
    EXPECT_TRUE(std::isnan(r.sum));
  }
}

// ---- Caffe: sigmoid_cross_entropy_loss (ignored targets, data-dependent divisor) --------------

TYPED_TEST(CudaElementwiseMath, CaffeLayerMatchesWithIgnoredTargets) {
  using T = TypeParam;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Gen gen(seed);
  for (int trial = 0; trial < 20; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const int64_t outer = 1 + gen.pick(16), inner = 1 + gen.pick(300);
    const int64_t n = outer * inner;
    const bool has_ignore = trial % 4 != 3;
    const int64_t ignore = trial % 2 ? 255 : -1;
    std::vector<double> xd(n), td(n);
    for (int64_t i = 0; i < n; ++i) {
      xd[i] = gen.logit(false);
      const double r = gen.u();
      // ignored (also through truncation toward zero: 255.7 and -1.9), or a near miss, or a target
      if (r < 0.15) td[i] = static_cast<double>(ignore);
      else if (r < 0.2) td[i] = ignore + (ignore > 0 ? 0.7 : -0.9);
      else if (r < 0.22) td[i] = ignore + (ignore > 0 ? 1.0 : -1.0);
      else td[i] = gen.target();
    }
    if (trial == 5) std::fill(td.begin(), td.end(), static_cast<double>(ignore));  // all ignored
    const auto x = cast<T>(xd), t = cast<T>(td);
    xentkit::SigmoidCrossEntropyLossOptions opt;
    if (has_ignore) opt.ignore_label = ignore;
    opt.normalization = trial % 3 ? xentkit::Normalization::valid
                                  : xentkit::Normalization::batch_size;
    opt.loss_weight = 0.5 + gen.u();
    std::vector<T> diff(n);
    const T reduced = xentkit::sigmoid_cross_entropy_loss<T>(x.data(), t.data(), outer, n,
                                                             diff.data(), opt);
    const auto es = run_header(false, x, t, Broadcast<T>{}, Broadcast<T>{}, has_ignore, ignore);
    // The pre-pass count (Divide::caffe_valid) and the main kernel's count agree.
    int64_t valid = 0;
    for (int64_t i = 0; i < n; ++i) {
      valid += elem::ignored_target(t[i], has_ignore, ignore) ? 0 : 1;
    }
    const Reduced r = emulate_reduction(es, sizeof(T));
    EXPECT_EQ(r.count, static_cast<double>(valid));
    const bool by_valid = opt.normalization == xentkit::Normalization::valid;
    const double divisor = by_valid ? elem::valid_divisor(static_cast<double>(valid))
                                    : static_cast<double>(outer);
    const double scale = opt.loss_weight / divisor;
    for (int64_t i = 0; i < n; ++i) {
      SCOPED_TRACE("i " + std::to_string(i) + " x " + std::to_string(xd[i]) + " t " +
                   std::to_string(td[i]));
      const bool ign = has_ignore && elem::ignored_target(t[i], true, ignore);
      EXPECT_EQ(es[i].counted, ign ? 0 : 1);
      if (ign) {
        EXPECT_EQ(es[i].loss, 0.0);
        EXPECT_EQ(elem::scaled_grad<T>(es[i], scale), T(0));
      }
      EXPECT_TRUE(close<T>(elem::scaled_grad<T>(es[i], scale), diff[i], scale, kUlps<T>));
    }
    const double final_divisor =
        by_valid ? elem::valid_divisor(r.count) : static_cast<double>(outer);
    EXPECT_TRUE(close<T>(static_cast<T>(r.sum / final_divisor), reduced,
                         r.abs_sum / final_divisor, sum_ulps<T>(n)));
  }
}

// ---- TensorFlow: sigmoid_cross_entropy_with_logits --------------------------------------------

TYPED_TEST(CudaElementwiseMath, TensorFlowPerElementMatches) {
  using T = TypeParam;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Gen gen(seed);
  for (int trial = 0; trial < 8; ++trial) {
    const int64_t n = 1 + gen.pick(5000);
    std::vector<double> xd(n), td(n);
    for (int64_t i = 0; i < n; ++i) {
      xd[i] = gen.logit(true);
      td[i] = gen.target();
    }
    const auto x = cast<T>(xd), t = cast<T>(td);
    std::vector<T> loss(n), grad(n);
    xentkit::sigmoid_cross_entropy_with_logits<T>(t.data(), x.data(), n, loss.data(),
                                                  grad.data());
    const auto es = run_header(false, x, t, Broadcast<T>{}, Broadcast<T>{}, false, 0);
    for (int64_t i = 0; i < n; ++i) {
      SCOPED_TRACE("i " + std::to_string(i) + " x " + std::to_string(xd[i]) + " t " +
                   std::to_string(td[i]));
      const double mag = 2.0 * (1.0 + finite_abs(static_cast<double>(x[i])));
      EXPECT_TRUE(close<T>(static_cast<T>(es[i].loss), loss[i], mag, kUlps<T>)) << "loss";
      EXPECT_TRUE(close<T>(elem::scaled_grad<T>(es[i], 1.0), grad[i], 2.0, kUlps<T>)) << "grad";
    }
  }
}

// ---- reductions over large problems: the kernels' partition against the CPU's mean -----------

TYPED_TEST(CudaElementwiseMath, ReducedMeanMatchesOverTheBlockPartition) {
  using T = TypeParam;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Gen gen(seed);
  const int64_t sizes[] = {0, 1, 3, 255, 4097, 262147, (1 << 20) + 5, 3000001};
  for (const int64_t n : sizes) {
    SCOPED_TRACE("n " + std::to_string(n));
    std::vector<double> xd(n), td(n);
    for (int64_t i = 0; i < n; ++i) {
      xd[i] = gen.logit(false);
      td[i] = gen.target();
    }
    const auto x = cast<T>(xd), t = cast<T>(td);
    for (const bool weighted : {false, true}) {
      const int64_t period = 1 + gen.pick(50);
      std::vector<T> wv(period), pv(period);
      for (auto& e : wv) e = static_cast<T>(gen.weight());
      for (auto& e : pv) e = static_cast<T>(gen.pos_weight());
      Broadcast<T> w, pw;
      if (weighted) {
        w = {wv.data(), 1 + gen.pick(7), period};
        pw = {pv.data(), 1, period};
      }
      xentkit::BinaryCrossEntropyOptions opt;
      opt.reduction = xentkit::Reduction::mean;
      const T mean = xentkit::binary_cross_entropy_with_logits<T>(x.data(), t.data(), n, w, pw,
                                                                  nullptr, nullptr, opt);
      const auto es = run_header(false, x, t, w, pw, false, 0);
      const Reduced r = emulate_reduction(es, sizeof(T));
      EXPECT_LE(r.grid, xentkit::cuda::detail::elem::kMaxGrid);
      EXPECT_EQ(r.count, static_cast<double>(n));
      // 0 / 0 for n == 0: NaN, as the CPU.
      EXPECT_TRUE(close<T>(static_cast<T>(r.sum / static_cast<double>(n)), mean,
                           r.abs_sum / static_cast<double>(n), sum_ulps<T>(n)));
    }
  }
}

// ---- float16 storage: computed in float, each result rounded to float, then to float16 ---------

/// Two float16 values at most `ulps` steps apart (NaN matches NaN; equal infinities match).
::testing::AssertionResult half_close(xentkit::half got, xentkit::half want, int ulps) {
  const float g = xentkit::to_float(got), w = xentkit::to_float(want);
  if (std::isnan(g) || std::isnan(w)) {
    if (std::isnan(g) && std::isnan(w)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << g << ", want " << w;
  }
  // Ordered integer images of the bit patterns: adjacent float16 values differ by 1.
  auto ord = [](uint16_t b) { return (b & 0x8000) ? -int(b & 0x7fff) : int(b); };
  if (std::abs(ord(got.bits) - ord(want.bits)) <= ulps) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << g << ", want " << w;
}

TEST(CudaElementwiseMathHalf, LogitsAndCaffeLayerMatchInFloat16) {
  using xentkit::half;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Gen gen(seed);
  for (int trial = 0; trial < 12; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const int64_t outer = 1 + gen.pick(8), inner = 1 + gen.pick(700);
    const int64_t n = outer * inner;
    const int64_t ignore = 255;
    std::vector<half> x(n), t(n);
    std::vector<float> xf(n), tf(n);
    for (int64_t i = 0; i < n; ++i) {
      double xv = gen.logit(true);
      if (std::isfinite(xv) && std::fabs(xv) > 6e4) xv = 0.0;  // keep finite values finite
      const double r = gen.u();
      const double tv = r < 0.15 ? 255.0 : (r < 0.2 ? 255.5 : gen.target());
      x[i] = xentkit::to_half(static_cast<float>(xv));
      t[i] = xentkit::to_half(static_cast<float>(tv));
      xf[i] = xentkit::to_float(x[i]);
      tf[i] = xentkit::to_float(t[i]);
    }
    // pos_weight (float32 on the CPU): values that float16 holds exactly, as a device plan would.
    std::vector<float> pv(inner);
    for (auto& e : pv) {
      e = xentkit::to_float(xentkit::to_half(static_cast<float>(gen.pos_weight())));
    }
    const Broadcast<float> pw = trial % 2 ? Broadcast<float>{pv.data(), 1, inner}
                                          : Broadcast<float>{};

    // binary_cross_entropy_with_logits, per element
    xentkit::BinaryCrossEntropyOptions opt;
    opt.reduction = xentkit::Reduction::none;
    std::vector<half> loss(n), grad(n);
    xentkit::binary_cross_entropy_with_logits(x.data(), t.data(), n, {}, pw, loss.data(),
                                              grad.data(), opt);
    const auto es = run_header(false, xf, tf, Broadcast<float>{}, pw, false, 0);
    // With no weights the CPU's float kernel may take its vector path (a few float units off),
    // which can tip a float16 rounding: one step allowed then, none otherwise.
    const int ulps = pw.data ? 0 : 1;
    for (int64_t i = 0; i < n; ++i) {
      SCOPED_TRACE("i " + std::to_string(i) + " x " + std::to_string(xf[i]) + " t " +
                   std::to_string(tf[i]));
      EXPECT_TRUE(half_close(xentkit::to_half(static_cast<float>(es[i].loss)), loss[i], ulps));
      EXPECT_TRUE(half_close(xentkit::to_half(elem::scaled_grad<float>(es[i], 1.0)), grad[i],
                             ulps));
    }

    // sigmoid_cross_entropy_loss with an ignored label (255 and 255.5 are ignored)
    xentkit::SigmoidCrossEntropyLossOptions copt;
    copt.ignore_label = ignore;
    copt.normalization = xentkit::Normalization::valid;
    std::vector<float> finite_x(xf);
    for (auto& v : finite_x) {
      if (!std::isfinite(v)) v = 0.0f;
    }
    std::vector<half> xh(n), diff(n);
    for (int64_t i = 0; i < n; ++i) xh[i] = xentkit::to_half(finite_x[i]);
    const float reduced =
        xentkit::sigmoid_cross_entropy_loss(xh.data(), t.data(), outer, n, diff.data(), copt);
    const auto ce = run_header(false, finite_x, tf, Broadcast<float>{}, Broadcast<float>{}, true,
                               ignore);
    const Reduced r = emulate_reduction(ce, 2);
    const double scale = 1.0 / elem::valid_divisor(r.count);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_TRUE(half_close(xentkit::to_half(elem::scaled_grad<float>(ce[i], scale)), diff[i],
                             0));
    }
    EXPECT_TRUE(close<float>(static_cast<float>(r.sum / elem::valid_divisor(r.count)), reduced,
                             r.abs_sum / elem::valid_divisor(r.count), sum_ulps<float>(n)));
  }
}

// ---- the broadcast walk against the direct formula --------------------------------------------

TEST(CudaElementwiseBroadcast, WalkMatchesTheFormula) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Gen gen(seed);
  for (int trial = 0; trial < 2000; ++trial) {
    const bool wide = trial % 3 == 0;
    const int64_t stride = wide && trial % 2 ? (int64_t(1) << 33) + gen.pick(1000)
                                             : 1 + gen.pick(trial % 5 ? 9 : 100000);
    const int64_t period = wide && trial % 4 == 0 ? (int64_t(1) << 32) + gen.pick(7)
                                                  : 1 + gen.pick(trial % 7 ? 13 : 1000);
    const int64_t i0 = wide ? (int64_t(1) << 40) + gen.pick(int64_t(1) << 40) : gen.pick(1 << 30);
    elem::BroadcastIndex b(stride, period);
    b.seek(i0);
    for (int64_t i = i0; i < i0 + 16; ++i) {
      ASSERT_EQ(b.k, (i / stride) % period) << "i " << i << " stride " << stride;
      ASSERT_EQ(b.r, i % stride);
      b.next();
    }
  }
}

TEST(CudaElementwisePartition, GridDependsOnlyOnTheSizeAndIsBounded) {
  EXPECT_EQ(elem::chunk_elements(4), 4);
  EXPECT_EQ(elem::chunk_elements(8), 2);
  EXPECT_EQ(elem::chunk_elements(2), 8);
  EXPECT_EQ(elem::grid_for(0), 0);
  EXPECT_EQ(elem::grid_for(1), 1);
  EXPECT_EQ(elem::grid_for(elem::kThreads), 1);
  EXPECT_EQ(elem::grid_for(elem::kThreads + 1), 2);
  EXPECT_EQ(elem::grid_for(int64_t(1) << 40), elem::kMaxGrid);
  EXPECT_EQ(elem::chunk_count(9, 4), 3);
}

}  // namespace
