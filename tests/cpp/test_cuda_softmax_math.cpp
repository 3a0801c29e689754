// The per-row algorithm of the CUDA softmax kernels (cuda/softmax.cu), replayed on the host with
// the same formulas (cuda/softmax_math.hpp), the same split of classes over threads and the same
// reduction trees, and compared with the CPU functions on fresh random inputs, including +-inf
// and NaN logits, confident rows (p rounds to 1) and zero class weights.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "softmax_launch.hpp"
#include "softmax_math.hpp"
#include "xentkit/detail/labels.hpp"
#include "xentkit/losses.hpp"

namespace {

namespace m = xentkit::cuda::detail::math;
using m::Extra;
using m::Stats;

constexpr int64_t kNoIndex = INT64_MAX;

/// One call as the device sees it (after the host mapping of cuda/api.cpp).
template <typename T>
struct Call {
  const T* x = nullptr;
  const int64_t* labels = nullptr;  // raw labels (classified as on the device)
  const T* soft = nullptr;
  const T* weight = nullptr;
  int64_t outer = 0, channels = 0, inner = 1;
  bool has_ignore = false;
  int64_t ignore = 0;
  double smoothing = 0.0, cap = HUGE_VAL, scale = 1.0;
  bool nll = false;
  T* diff = nullptr;
  T* prob = nullptr;
  T* log_prob = nullptr;
  T* loss = nullptr;
};

/// How one row is split: `ranks` blocks (a cluster) of `threads` threads, block q holding classes
/// [q * slice, (q + 1) * slice), thread t of a block the classes t, t + threads, ... of its slice.
struct Layout {
  int threads = 1;
  int ranks = 1;
  int64_t slice = 0;  // 0: the whole row
};

/// The layout launch_main chooses without a cluster: positions kernel, warp per row, block per row.
template <typename T>
Layout layout_for(int64_t channels, int64_t inner) {
  if (inner > 1 || channels == 0) return {1, 1, 0};
  if (channels <= (sizeof(T) == 8 ? 512 : 1024)) return {32, 1, 0};
  return {512, 1, 0};
}

/// The cluster layout of rows_cluster_kernel (cluster_shape without the size threshold).
template <typename T>
Layout cluster_layout(int64_t channels, int ranks) {
  const int64_t per_vec = 16 / static_cast<int64_t>(sizeof(T));
  int64_t slice = (channels + ranks - 1) / ranks;
  slice = (slice + per_vec - 1) / per_vec * per_vec;
  return {512, ranks, slice};
}

/// warp_sum: every lane adds its xor partner's value, for o = 16, 8, 4, 2, 1.
template <typename R>
void butterfly(R* v) {
  for (int o = 16; o > 0; o >>= 1) {
    R next[32];
    for (int l = 0; l < 32; ++l) next[l] = v[l] + v[l ^ o];
    std::copy(next, next + 32, v);
  }
}

/// The device tree: warp_sum (one warp) or block_sum (warps, then their sums in one warp).
template <typename R>
R tree_sum(const std::vector<R>& per_thread) {
  const int t = static_cast<int>(per_thread.size());
  if (t == 1) return per_thread[0];
  const int warps = t / 32;
  std::vector<R> lanes(per_thread);
  R sums[32] = {};
  for (int w = 0; w < warps; ++w) {
    butterfly(lanes.data() + 32 * w);
    sums[w] = lanes[32 * w];
  }
  if (warps == 1) return sums[0];
  R v[32];
  for (int l = 0; l < 32; ++l) v[l] = l < warps ? sums[l] : R(0);
  butterfly(v);
  return v[0];
}

/// The kernel's process_row for every position; returns {sum of losses, nll part} in double.
template <typename T>
std::pair<double, double> emulate(const Call<T>& P, Layout lay = {0, 0, 0}) {
  using R = T;  // float32 storage computes in float, float64 in double
  const int64_t C = P.channels, inner = P.inner;
  if (lay.threads == 0) lay = layout_for<T>(C, inner);
  const int threads = lay.threads, ranks = lay.ranks;
  const int64_t slice = lay.slice > 0 ? lay.slice : C;
  const R nan = std::numeric_limits<R>::quiet_NaN();
  const double eps = P.smoothing > 0.0 ? P.smoothing : 0.0;
  const R keep = static_cast<R>(1.0 - eps);
  const R spread = static_cast<R>(C > 0 ? eps / static_cast<double>(C) : 0.0);
  const R cap = static_cast<R>(P.cap);
  const R scale = static_cast<R>(P.scale);
  const Extra extra = P.soft ? Extra::soft : (P.labels && eps > 0.0 ? Extra::smooth : Extra::none);
  double tw = static_cast<double>(C);
  if (P.weight && extra == Extra::smooth) {
    tw = 0.0;
    for (int64_t c = 0; c < C; ++c) tw += static_cast<double>(P.weight[c]);
  }
  const R total_weight = static_cast<R>(tw);
  auto wt = [&](int64_t c) { return P.weight ? P.weight[c] : R(1); };
  double acc = 0.0, acc_nll = 0.0;
  for (int64_t pos = 0; pos < P.outer * inner; ++pos) {
    const int64_t o = pos / inner, s = pos % inner;
    const int64_t base = o * C * inner + s;
    auto at = [&](int64_t c) { return base + c * inner; };
    int64_t y = xentkit::detail::kIgnored;
    if (P.labels) y = xentkit::detail::classify_label(P.labels[pos], C, P.has_ignore, P.ignore);
    const bool bad = y == xentkit::detail::kInvalid;
    if (P.nll) {
      R l = R(0), wy = R(0);
      if (y >= 0) {
        wy = wt(y);
        l = m::nll_loss(wy, P.x[at(y)]);
      } else if (bad) {
        l = nan;
      }
      if (P.diff) {
        const R gy = bad ? nan : -scale * wy;
        for (int64_t c = 0; c < C; ++c) P.diff[at(c)] = (bad || c == y) ? gy : R(0);
      }
      if (P.loss) P.loss[pos] = l;
      acc += l;
      acc_nll += l;
      continue;
    }
    R mx = -m::inf<R>();
    int64_t am = kNoIndex;
    for (int64_t c = 0; c < C; ++c) {
      if (m::takes_max(P.x[at(c)], c, mx, am)) { mx = P.x[at(c)]; am = c; }
    }
    const bool posinf = mx == m::inf<R>();
    R zy = R(0);
    if (y >= 0) zy = m::shifted(P.x[at(y)], mx, posinf);
    std::vector<Stats<R>> st(static_cast<size_t>(threads * ranks));
    for (int q = 0; q < ranks; ++q) {
      const int64_t c0 = q * slice, c1 = std::min(C, c0 + slice);
      for (int t = 0; t < threads; ++t) {
        for (int64_t c = c0 + t; c < c1; c += threads) {
          const R v = P.x[at(c)];
          const R d = m::shifted(v, mx, posinf);
          const R e = m::exp_r(d);
          R w = R(1), qv = R(0);
          if (extra != Extra::none) {
            w = wt(c);
            if (extra == Extra::soft) qv = P.soft[at(c)];
          }
          m::accumulate(st[q * threads + t], extra, c, y, am, d, e, w, qv, keep, spread);
        }
      }
    }
    // Each block's tree, then the blocks in rank order (from 0, as ClusterRow adds them).
    auto field = [&](R Stats<R>::*f) {
      if (ranks == 1) {
        std::vector<R> v(st.size());
        for (size_t t = 0; t < st.size(); ++t) v[t] = st[t].*f;
        return tree_sum(v);
      }
      R total = R(0);
      for (int q = 0; q < ranks; ++q) {
        std::vector<R> v(static_cast<size_t>(threads));
        for (int t = 0; t < threads; ++t) v[t] = st[q * threads + t].*f;
        total += tree_sum(v);
      }
      return total;
    };
    Stats<R> tot;
    tot.sum = field(&Stats<R>::sum);
    tot.other_y = field(&Stats<R>::other_y);
    tot.other_m = field(&Stats<R>::other_m);
    if (extra != Extra::none) {
      tot.wsum = field(&Stats<R>::wsum);
      tot.qsum = field(&Stats<R>::qsum);
    }
    const R logsum = m::log1p_r(tot.other_m);
    R l = R(0), l_nll = R(0), coef_y = R(0);
    if (P.labels) {
      if (y >= 0) {
        const R a = keep * wt(y);
        coef_y = a * scale;
        l_nll = m::weighted(a, m::label_nll(tot.other_y, zy, cap));
        l = l_nll;
        if (extra == Extra::smooth) l += m::smoothing_term(spread, total_weight, logsum, tot.wsum);
      } else if (bad) {
        l = l_nll = nan;
      }
    } else if (P.soft) {
      l = m::soft_loss(tot.qsum, logsum, tot.wsum);
    }
    if (P.loss) P.loss[pos] = l;
    acc += l;
    acc_nll += l_nll;
    const R inv = R(1) / tot.sum;
    const R spread_scale = spread * scale;
    for (int64_t c = 0; c < C; ++c) {
      const R d = m::shifted(P.x[at(c)], mx, posinf);
      if (P.log_prob) P.log_prob[at(c)] = d - logsum;
      const R p = m::exp_r(d) * inv;
      if (P.prob) P.prob[at(c)] = p;
      if (!P.diff) continue;
      R g = R(0);
      if (P.labels) {
        if (bad) {
          g = nan;
        } else if (y >= 0) {
          g = m::label_grad(c == y, p, inv, tot.other_y, coef_y, extra == Extra::smooth,
                            spread_scale, total_weight, extra == Extra::smooth ? wt(c) : R(1));
        }
      } else if (P.soft) {
        const R qw = wt(c) * (keep * P.soft[at(c)] + spread);
        g = m::soft_grad(c == am, p, inv, tot.other_m, tot.qsum, qw, scale);
      }
      P.diff[at(c)] = g;
    }
  }
  return {acc, acc_nll};
}

// ---- inputs ------------------------------------------------------------------------------------

template <typename T>
struct Data {
  int64_t outer, C, inner;
  std::vector<T> x, soft, weight;
  std::vector<int64_t> labels;
  int64_t positions() const { return outer * inner; }
  int64_t size() const { return outer * C * inner; }
};

/// Random logits with special rows: +inf (one or two), -inf entries, a NaN, a confident row whose
/// label has p rounding to 1, a row of equal logits. Labels in [0, C) or `ignore`.
template <typename T>
Data<T> make_data(std::mt19937_64& rng, int64_t outer, int64_t C, int64_t inner, bool specials,
                  int64_t ignore, bool zero_weights) {
  Data<T> d{outer, C, inner, {}, {}, {}, {}};
  std::normal_distribution<double> nd(0.0, 3.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  std::uniform_int_distribution<int64_t> cls(0, C - 1);
  d.x.resize(static_cast<size_t>(d.size()));
  for (auto& v : d.x) v = static_cast<T>(nd(rng));
  d.labels.resize(static_cast<size_t>(d.positions()));
  for (auto& y : d.labels) y = ud(rng) < 0.1 ? ignore : cls(rng);
  d.soft.resize(d.x.size());
  for (int64_t pos = 0; pos < d.positions(); ++pos) {
    const int64_t o = pos / inner, s = pos % inner;
    double tot = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      tot += (d.soft[(o * C + c) * inner + s] = static_cast<T>(ud(rng)));
    }
    for (int64_t c = 0; c < C; ++c) d.soft[(o * C + c) * inner + s] /= static_cast<T>(tot);
  }
  d.weight.resize(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    d.weight[c] = static_cast<T>(zero_weights && c % 3 == 1 ? 0.0 : 0.25 + ud(rng));
  }
  if (specials) {
    const T inf = std::numeric_limits<T>::infinity();
    for (int64_t pos = 0; pos < d.positions(); ++pos) {
      const int64_t o = pos / inner, s = pos % inner;
      auto X = [&](int64_t c) -> T& { return d.x[(o * C + c) * inner + s]; };
      const int64_t y = d.labels[pos] >= 0 && d.labels[pos] < C ? d.labels[pos] : 0;
      switch (pos % 9) {
        case 1: X(cls(rng)) = inf; break;
        case 2: X(0) = inf; X(C - 1) = inf; break;
        case 3: X(cls(rng)) = -inf; X(1 % C) = -inf; break;
        case 4: X(cls(rng)) = std::numeric_limits<T>::quiet_NaN(); break;
        case 5: for (int64_t c = 0; c < C; ++c) X(c) = T(0.5); X(y) = T(40); break;  // confident
        case 6: for (int64_t c = 0; c < C; ++c) X(c) = T(-1); break;                   // all equal
        case 7: X(y) = -inf; break;  // the label at -inf (inf loss, or 0 with a zero weight)
        default: break;
      }
    }
  }
  return d;
}

template <typename T>
::testing::AssertionResult close_all(const std::vector<T>& got, const std::vector<T>& want,
                                     double rtol, double atol, const char* what) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  int bad = 0;
  ::testing::AssertionResult r = ::testing::AssertionFailure();
  for (size_t i = 0; i < got.size(); ++i) {
    const double a = got[i], b = want[i];
    bool ok;
    if (std::isnan(a) || std::isnan(b)) ok = std::isnan(a) && std::isnan(b);
    else if (std::isinf(a) || std::isinf(b)) ok = a == b;
    // A few steps of T's subnormal range always pass: there T has fewer significant bits.
    else ok = std::abs(a - b) <= atol + rtol * std::max(std::abs(a), std::abs(b)) +
                                     4 * static_cast<double>(std::numeric_limits<T>::denorm_min());
    if (!ok && bad++ < 5) r << what << "[" << i << "]: emulated " << a << ", CPU " << b << "\n";
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return r << what << ": " << bad << " of " << got.size() << " differ";
}

template <typename T> double rtol() { return sizeof(T) == 8 ? 1e-11 : 3e-5; }
template <typename T> double atol() { return sizeof(T) == 8 ? 1e-13 : 1e-6; }

struct Shape {
  int64_t outer, C, inner;
};
// Warp rows (C <= 1024; float64 <= 512), block rows (larger C) and positions (inner > 1).
const Shape kShapes[] = {{37, 1, 1},   {29, 5, 1},    {23, 33, 1}, {19, 100, 1}, {9, 700, 1},
                         {5, 1024, 1}, {4, 3000, 1}, {3, 7, 11},  {2, 50, 13},  {2, 600, 3}};

template <typename T>
class CudaSoftmaxMath : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CudaSoftmaxMath, Types);

TYPED_TEST(CudaSoftmaxMath, CrossEntropyClassIndicesWithWeightsSmoothingAndIgnore) {
  using T = TypeParam;
  std::mt19937_64 rng(std::random_device{}());
  for (const Shape& sh : kShapes) {
    for (double eps : {0.0, 0.2}) {
      for (bool zero_w : {false, true}) {
        const int64_t ignore = sh.C > 2 ? 2 : -100;  // a real class, or outside [0, C)
        auto d = make_data<T>(rng, sh.outer, sh.C, sh.inner, true, ignore, zero_w);
        const size_t n = d.x.size(), np = static_cast<size_t>(d.positions());
        std::vector<T> loss(np), grad(n), eloss(np), egrad(n);
        xentkit::CrossEntropyOptions opt;
        opt.ignore_index = ignore;
        opt.reduction = xentkit::Reduction::sum;
        opt.label_smoothing = eps;
        opt.grad_output = 0.75;
        const double want = xentkit::cross_entropy(d.x.data(), d.labels.data(), d.outer, d.C,
                                                   d.inner, d.weight.data(), loss.data(),
                                                   grad.data(), opt);
        Call<T> P;
        P.x = d.x.data();
        P.labels = d.labels.data();
        P.weight = d.weight.data();
        P.outer = d.outer, P.channels = d.C, P.inner = d.inner;
        P.has_ignore = true, P.ignore = ignore;
        P.smoothing = eps;
        P.scale = 0.75;
        P.diff = egrad.data();
        P.loss = eloss.data();
        const auto sums = emulate(P);
        SCOPED_TRACE(::testing::Message() << "C=" << sh.C << " inner=" << sh.inner << " eps=" << eps
                                          << " zero weights=" << zero_w);
        // Without smoothing every entry is a product or a log1p: relative precision only.
        const double at = eps > 0.0 ? atol<T>() : 1e-300;
        EXPECT_TRUE(close_all(eloss, loss, rtol<T>(), at, "loss"));
        EXPECT_TRUE(close_all(egrad, grad, rtol<T>(), at, "grad"));
        const double got = static_cast<T>(sums.first);
        if (std::isnan(want)) EXPECT_TRUE(std::isnan(got));
        else if (std::isinf(want)) EXPECT_EQ(got, want);
        else EXPECT_NEAR(got, want, 1e-4 * std::max(1.0, std::abs(want)));
      }
    }
  }
}

TYPED_TEST(CudaSoftmaxMath, CrossEntropyProbabilityTargets) {
  using T = TypeParam;
  std::mt19937_64 rng(std::random_device{}());
  for (const Shape& sh : kShapes) {
    for (double eps : {0.0, 0.3}) {
      for (bool zero_w : {false, true}) {
        auto d = make_data<T>(rng, sh.outer, sh.C, sh.inner, true, -100, zero_w);
        const size_t n = d.x.size(), np = static_cast<size_t>(d.positions());
        std::vector<T> loss(np), grad(n), eloss(np), egrad(n);
        xentkit::CrossEntropyOptions opt;
        opt.reduction = xentkit::Reduction::sum;
        opt.label_smoothing = eps;
        xentkit::cross_entropy(d.x.data(), d.soft.data(), d.outer, d.C, d.inner, d.weight.data(),
                               loss.data(), grad.data(), opt);
        Call<T> P;
        P.x = d.x.data();
        P.soft = d.soft.data();
        P.weight = d.weight.data();
        P.outer = d.outer, P.channels = d.C, P.inner = d.inner;
        P.smoothing = eps;
        P.diff = egrad.data();
        P.loss = eloss.data();
        emulate(P);
        SCOPED_TRACE(::testing::Message()
                     << "C=" << sh.C << " inner=" << sh.inner << " eps=" << eps);
        EXPECT_TRUE(close_all(eloss, loss, rtol<T>(), atol<T>(), "loss"));
        EXPECT_TRUE(close_all(egrad, grad, rtol<T>(), atol<T>(), "grad"));
      }
    }
  }
}

TYPED_TEST(CudaSoftmaxMath, NllLoss) {
  using T = TypeParam;
  std::mt19937_64 rng(std::random_device{}());
  for (const Shape& sh : kShapes) {
    auto d = make_data<T>(rng, sh.outer, sh.C, sh.inner, true, -100, true);
    for (auto& v : d.x) v = -std::abs(v);  // log-probabilities (some -inf from the specials)
    const size_t n = d.x.size(), np = static_cast<size_t>(d.positions());
    std::vector<T> loss(np), grad(n), eloss(np), egrad(n);
    xentkit::NllLossOptions opt;
    opt.reduction = xentkit::Reduction::sum;
    opt.grad_output = 2.0;
    xentkit::nll_loss(d.x.data(), d.labels.data(), d.outer, d.C, d.inner, d.weight.data(),
                      loss.data(), grad.data(), opt);
    Call<T> P;
    P.nll = true;
    P.x = d.x.data();
    P.labels = d.labels.data();
    P.weight = d.weight.data();
    P.outer = d.outer, P.channels = d.C, P.inner = d.inner;
    P.has_ignore = true, P.ignore = -100;
    P.scale = 2.0;
    P.diff = egrad.data();
    P.loss = eloss.data();
    emulate(P);
    EXPECT_TRUE(close_all(eloss, loss, 0.0, 0.0, "loss"));
    EXPECT_TRUE(close_all(egrad, grad, 0.0, 0.0, "grad"));
  }
}

TYPED_TEST(CudaSoftmaxMath, SoftmaxWithLossCapAndProbabilities) {
  using T = TypeParam;
  std::mt19937_64 rng(std::random_device{}());
  for (const Shape& sh : kShapes) {
    auto d = make_data<T>(rng, sh.outer, sh.C, sh.inner, true, 255, false);
    std::vector<T> labels(d.labels.begin(), d.labels.end());  // Caffe's floating labels
    std::vector<int64_t> truncated(d.labels);
    for (size_t i = 0; i < labels.size(); ++i) {
      if (d.labels[i] != 255) labels[i] += T(0.5);  // truncated toward zero
    }
    const size_t n = d.x.size();
    std::vector<T> diff(n), prob(n), ediff(n), eprob(n);
    xentkit::SoftmaxWithLossOptions opt;
    opt.ignore_label = 255;
    opt.normalization = xentkit::Normalization::none;
    opt.loss_weight = 1.5;
    const double want = xentkit::softmax_with_loss(d.x.data(), labels.data(), d.outer, d.C,
                                                   d.inner, diff.data(), prob.data(), opt);
    Call<T> P;
    P.x = d.x.data();
    P.labels = truncated.data();
    P.outer = d.outer, P.channels = d.C, P.inner = d.inner;
    P.has_ignore = true, P.ignore = 255;
    P.cap = -std::log(static_cast<double>(FLT_MIN));
    P.scale = 1.5;
    P.diff = ediff.data();
    P.prob = eprob.data();
    const auto sums = emulate(P);
    SCOPED_TRACE(::testing::Message() << "C=" << sh.C << " inner=" << sh.inner);
    EXPECT_TRUE(close_all(ediff, diff, rtol<T>(), 1e-300, "diff"));
    EXPECT_TRUE(close_all(eprob, prob, rtol<T>(), 1e-300, "prob"));
    const double got = static_cast<T>(sums.first);
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(got));
    else EXPECT_NEAR(got, want, 1e-4 * std::max(1.0, std::abs(want)));
  }
}

TYPED_TEST(CudaSoftmaxMath, SoftmaxAndLogSoftmax) {
  using T = TypeParam;
  std::mt19937_64 rng(std::random_device{}());
  for (const Shape& sh : kShapes) {
    auto d = make_data<T>(rng, sh.outer, sh.C, sh.inner, true, -100, false);
    const size_t n = d.x.size();
    std::vector<T> prob(n), logp(n), eprob(n), elogp(n);
    xentkit::softmax(d.x.data(), d.outer, d.C, d.inner, prob.data());
    xentkit::log_softmax(d.x.data(), d.outer, d.C, d.inner, logp.data());
    Call<T> P;
    P.x = d.x.data();
    P.outer = d.outer, P.channels = d.C, P.inner = d.inner;
    P.prob = eprob.data();
    P.log_prob = elogp.data();
    emulate(P);
    SCOPED_TRACE(::testing::Message() << "C=" << sh.C << " inner=" << sh.inner);
    EXPECT_TRUE(close_all(eprob, prob, rtol<T>(), 1e-300, "softmax"));
    EXPECT_TRUE(close_all(elogp, logp, rtol<T>(), atol<T>(), "log_softmax"));
  }
}

/// TF's softmax_cross_entropy_with_logits on d (probability targets in d.soft) against the
/// kernels' replay: losses and gradient within rtol<T>() and `abs_tol`.
template <typename T>
void expect_tf_softmax_matches(Data<T>& d, double abs_tol) {
  const size_t n = d.x.size(), np = static_cast<size_t>(d.positions());
  std::vector<T> loss(np), grad(n), eloss(np), egrad(n);
  xentkit::softmax_cross_entropy_with_logits(d.soft.data(), d.x.data(), d.outer, d.C, d.inner,
                                             loss.data(), grad.data());
  Call<T> P;
  P.x = d.x.data();
  P.soft = d.soft.data();
  P.outer = d.outer, P.channels = d.C, P.inner = d.inner;
  P.diff = egrad.data();
  P.loss = eloss.data();
  emulate(P);
  EXPECT_TRUE(close_all(eloss, loss, rtol<T>(), abs_tol, "loss"));
  EXPECT_TRUE(close_all(egrad, grad, rtol<T>(), abs_tol, "grad"));
}

TYPED_TEST(CudaSoftmaxMath, SoftmaxCrossEntropyWithLogits) {
  using T = TypeParam;
  std::mt19937_64 rng(std::random_device{}());
  for (const Shape& sh : kShapes) {
    auto d = make_data<T>(rng, sh.outer, sh.C, sh.inner, true, -100, false);
    for (size_t i = 0; i < d.soft.size(); i += 3) d.soft[i] *= T(1.5);  // rows not summing to 1
    SCOPED_TRACE(::testing::Message() << "C=" << sh.C << " inner=" << sh.inner);
    expect_tf_softmax_matches(d, atol<T>());
  }
}

/// The cluster layout (rows split over 2..8 blocks): class-index cross entropy with smoothing and
/// weights, probability targets and softmax outputs against the CPU.
TYPED_TEST(CudaSoftmaxMath, ClusterLayout) {
  using T = TypeParam;
  std::mt19937_64 rng(std::random_device{}());
  const Shape shapes[] = {{5, 3000, 1}, {3, 30000, 1}};
  for (const Shape& sh : shapes) {
    for (int ranks : {2, 4, 8}) {
      const Layout lay = cluster_layout<T>(sh.C, ranks);
      SCOPED_TRACE(::testing::Message() << "C=" << sh.C << " ranks=" << ranks);
      auto d = make_data<T>(rng, sh.outer, sh.C, sh.inner, true, 7, true);
      const size_t n = d.x.size(), np = static_cast<size_t>(d.positions());
      {
        std::vector<T> loss(np), grad(n), prob(n), eloss(np), egrad(n);
        xentkit::CrossEntropyOptions opt;
        opt.ignore_index = 7;
        opt.reduction = xentkit::Reduction::sum;
        opt.label_smoothing = 0.1;
        xentkit::cross_entropy(d.x.data(), d.labels.data(), d.outer, d.C, d.inner,
                               d.weight.data(), loss.data(), grad.data(), opt);
        Call<T> P;
        P.x = d.x.data();
        P.labels = d.labels.data();
        P.weight = d.weight.data();
        P.outer = d.outer, P.channels = d.C, P.inner = d.inner;
        P.has_ignore = true, P.ignore = 7;
        P.smoothing = 0.1;
        P.diff = egrad.data();
        P.loss = eloss.data();
        emulate(P, lay);
        EXPECT_TRUE(close_all(eloss, loss, rtol<T>(), atol<T>(), "loss"));
        EXPECT_TRUE(close_all(egrad, grad, rtol<T>(), atol<T>(), "grad"));
      }
      {
        std::vector<T> loss(np), grad(n), eloss(np), egrad(n), prob(n), eprob(n), logp(n),
            elogp(n);
        xentkit::softmax_cross_entropy_with_logits(d.soft.data(), d.x.data(), d.outer, d.C,
                                                   d.inner, loss.data(), grad.data());
        xentkit::softmax(d.x.data(), d.outer, d.C, d.inner, prob.data());
        xentkit::log_softmax(d.x.data(), d.outer, d.C, d.inner, logp.data());
        Call<T> P;
        P.x = d.x.data();
        P.soft = d.soft.data();
        P.outer = d.outer, P.channels = d.C, P.inner = d.inner;
        P.diff = egrad.data();
        P.loss = eloss.data();
        P.prob = eprob.data();
        P.log_prob = elogp.data();
        emulate(P, lay);
        EXPECT_TRUE(close_all(eloss, loss, rtol<T>(), atol<T>(), "loss"));
        EXPECT_TRUE(close_all(egrad, grad, rtol<T>(), atol<T>(), "grad"));
        EXPECT_TRUE(close_all(eprob, prob, rtol<T>(), 1e-300, "softmax"));
        EXPECT_TRUE(close_all(elogp, logp, rtol<T>(), atol<T>(), "log_softmax"));
      }
    }
  }
}

/// One-hot probability targets on confident rows: the gradient at the argmax is -(1 - p), kept
/// to relative precision (as other_m / sum), and every other entry is p.
TYPED_TEST(CudaSoftmaxMath, OneHotTargetsOnConfidentRows) {
  using T = TypeParam;
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<double> nd(0.0, 1.0);
  for (const Shape& sh : kShapes) {
    Data<T> d = make_data<T>(rng, sh.outer, sh.C, sh.inner, false, -100, false);
    for (int64_t pos = 0; pos < d.positions(); ++pos) {
      const int64_t o = pos / sh.inner, s = pos % sh.inner, y = pos % sh.C;
      for (int64_t c = 0; c < sh.C; ++c) {
        const size_t i = static_cast<size_t>((o * sh.C + c) * sh.inner + s);
        d.soft[i] = T(c == y ? 1 : 0);
        d.x[i] = static_cast<T>(c == y ? 25.0 + nd(rng) : nd(rng));
      }
    }
    SCOPED_TRACE(::testing::Message() << "C=" << sh.C << " inner=" << sh.inner);
    expect_tf_softmax_matches(d, 1e-300);
  }
}

/// The labelled gradient entry and the loss keep their relative precision when p rounds to 1.
TEST(CudaSoftmaxMathFormulas, ConfidentRowKeepsRelativePrecision) {
  // Two classes, x = (30, 0): other_y = exp(-30) relative to the max.
  const float other = std::exp(-30.0f);
  const float nll = m::label_nll(other, 0.0f, HUGE_VALF);
  EXPECT_NEAR(nll / std::exp(-30.0), 1.0, 1e-6);
  const float g = m::label_grad(true, 1.0f, 1.0f / (1.0f + other), other, 1.0f, false, 0.0f,
                                0.0f, 1.0f);
  EXPECT_NEAR(-g / std::exp(-30.0), 1.0, 1e-6);
  // The overflow fallback: the label far below the max.
  EXPECT_NEAR(m::label_nll(1.0f, -200.0f, HUGE_VALF), 200.0f, 1e-4);
  EXPECT_EQ(m::label_nll(1.0f, -200.0f, 87.3365f), 87.3365f);
  // A zero weight removes an infinite term but not NaN.
  EXPECT_EQ(m::weighted(0.0f, HUGE_VALF), 0.0f);
  EXPECT_TRUE(std::isnan(m::weighted(0.0f, std::nanf(""))));
  // The max order: NaN above numbers, equal values by first index.
  EXPECT_TRUE(m::takes_max(std::nanf(""), 5, 3.0f, 1));
  EXPECT_FALSE(m::takes_max(3.0f, 5, 3.0f, 1));
  EXPECT_TRUE(m::takes_max(3.0f, 0, 3.0f, 1));
}

}  // namespace

// ---- the launch layout (cuda/softmax_launch.hpp) -------------------------------------------

namespace ls = xentkit::cuda::detail::launch_shape;

constexpr int64_t kH100Optin = 227 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin, sm_90
constexpr int64_t kT4Optin = 64 * 1024;     // sm_75

// The staged kernel's static shared memory counts against the 48 KiB of a launch without the
// opt-in: rows whose staged size alone is under 48 KiB still need it in the windows the review
// of the kernels found (float32 C 12129-12288, 16-bit 24257-24576, float64 6049-6144).
TEST(CudaLaunchShape, StaticSharedMemoryCountsTowardTheOptIn) {
  struct Window { int elem, compute; int64_t first, last; };
  for (const Window w : {Window{4, 4, 12129, 12288}, Window{2, 4, 24257, 24576},
                         Window{8, 8, 6049, 6144}}) {
    const int64_t stat = ls::block_static_bytes(w.compute);
    EXPECT_FALSE(ls::needs_opt_in(ls::staged_bytes(w.first - 1, w.elem), stat)) << w.first - 1;
    for (int64_t C = w.first; C <= w.last; ++C) {
      const int64_t dyn = ls::staged_bytes(C, w.elem);
      ASSERT_LE(dyn, ls::kDefaultSharedBytes) << C;  // the old test (dynamic alone) missed these
      ASSERT_TRUE(ls::needs_opt_in(dyn, stat)) << C;
      // With the opt-in granted the row is staged; refused, it is not (never a failing launch).
      ASSERT_EQ(ls::kernel_for(3, C, 1, w.elem, ls::staged_limit(kH100Optin, stat, true), false),
                ls::Kernel::staged_rows) << C;
      ASSERT_EQ(ls::kernel_for(3, C, 1, w.elem, ls::staged_limit(kH100Optin, stat, false), false),
                ls::Kernel::long_rows) << C;
    }
  }
}

// Whatever the device grants, a staged launch's static plus dynamic shared memory fits it.
TEST(CudaLaunchShape, StagedRowsAlwaysFitTheDevice) {
  std::mt19937_64 gen(11);
  for (int trial = 0; trial < 2000; ++trial) {
    const int elem = std::array<int, 4>{2, 2, 4, 8}[gen() % 4];
    const int compute = elem == 8 ? 8 : 4;
    const int64_t stat = ls::block_static_bytes(compute);
    const int64_t optin = std::array<int64_t, 3>{kT4Optin, 163 * 1024, kH100Optin}[gen() % 3];
    const bool granted = gen() % 4 != 0;
    const int64_t limit = ls::staged_limit(optin, stat, granted);
    const int64_t C = 1 + static_cast<int64_t>(gen() % 60000);
    if (ls::kernel_for(1, C, 1, elem, limit, false) != ls::Kernel::staged_rows) continue;
    const int64_t total = ls::staged_bytes(C, elem) + stat;
    EXPECT_LE(total, granted ? optin : ls::kDefaultSharedBytes) << C << " " << elem;
    EXPECT_LE(ls::staged_bytes(C, elem), ls::kStageBytes);
  }
  // A T4 stages float32 rows up to its 64 KiB opt-in, not 96 KiB.
  const int64_t t4 = ls::staged_limit(kT4Optin, ls::block_static_bytes(4), true);
  EXPECT_EQ(ls::kernel_for(1, t4 / 4, 1, 4, t4, false), ls::Kernel::staged_rows);
  EXPECT_EQ(ls::kernel_for(1, t4 / 4 + 4, 1, 4, t4, false), ls::Kernel::long_rows);
}

// nll reads x[y] alone: rows beyond the warp layout take the sweeping kernel, no shared stage.
TEST(CudaLaunchShape, NllStagesNothing) {
  const int64_t limit = ls::staged_limit(kH100Optin, ls::block_static_bytes(4), true);
  for (int64_t C : {1025, 5000, 12288, 24576, 128256, 300000}) {
    EXPECT_EQ(ls::kernel_for(4, C, 1, 4, limit, true), ls::Kernel::sweep_rows) << C;
  }
  EXPECT_EQ(ls::kernel_for(4, 1024, 1, 4, limit, true), ls::Kernel::warp_rows);
  EXPECT_EQ(ls::kernel_for(4, 513, 1, 8, limit, true), ls::Kernel::sweep_rows);
}

// The class axis not last with a long axis and few positions: a warp per position.
TEST(CudaLaunchShape, PositionsLayout) {
  EXPECT_EQ(ls::kernel_for(2048, 128256, 2048, 4, 0, false), ls::Kernel::warp_positions);
  EXPECT_EQ(ls::kernel_for(2048, 128256, 2048, 4, 0, true), ls::Kernel::warp_positions);
  EXPECT_EQ(ls::kernel_for(2048, 10, 2048, 4, 0, false), ls::Kernel::positions);
  EXPECT_EQ(ls::kernel_for(int64_t{1} << 20, 1000, 4096, 2, 0, false), ls::Kernel::positions);
  EXPECT_EQ(ls::kernel_for(0, 0, 1, 4, 0, false), ls::Kernel::positions);
}

// Cluster slices: 16-byte aligned, within a block's stage, covering the row, fewest blocks.
TEST(CudaLaunchShape, ClusterSlices) {
  for (int elem : {2, 4, 8}) {
    for (int64_t C : {24577, 81921, 100003, 128256, 262144, 327680}) {
      const ls::ClusterShape cs = ls::cluster_shape(C, elem);
      if (cs.ranks == 0) {
        EXPECT_GT((C + 7) / 8 * elem, ls::kClusterStageBytes) << C;
        continue;
      }
      EXPECT_EQ(cs.slice * elem % 16, 0) << C;
      EXPECT_LE(cs.slice * elem, ls::kClusterStageBytes) << C;
      EXPECT_GE(cs.slice * cs.ranks, C) << C;
      if (cs.ranks > 2) {
        const int64_t half = ((C + cs.ranks / 2 - 1) / (cs.ranks / 2) + 16 / elem - 1) /
                             (16 / elem) * (16 / elem);
        EXPECT_GT(half * elem, ls::kClusterStageBytes) << C;
      }
    }
  }
  EXPECT_EQ(ls::cluster_shape(128256, 4).ranks, 4);
  EXPECT_EQ(ls::cluster_shape(128256, 2).ranks, 2);
}

// The soft-capping and z-loss formulas of the device kernels, replayed on one row against the
// CPU's cross_entropy (float64: the same formulas, so to rounding).
namespace {

TEST(CudaSoftmaxMath, SoftcapAndZLossRowMatchesTheCpu) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal(0.0, 20.0);
  const int64_t C = 37;
  const double s = 15.0, z = 1e-2, inv_s = 1.0 / s;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<double> x(C);
    for (double& v : x) v = normal(rng);
    const int64_t y = trial % C;
    // The device algorithm on one row (process_row with s and z): max of the raw logits, capped.
    double t = 0.0;
    double mx = *std::max_element(x.begin(), x.end());
    int64_t am = std::max_element(x.begin(), x.end()) - x.begin();
    mx = m::capped(mx, s, inv_s, t);
    Stats<double> st;
    for (int64_t c = 0; c < C; ++c) {
      const double d = m::shifted(m::capped(x[c], s, inv_s, t), mx, false);
      m::accumulate(st, Extra::none, c, y, am, d, std::exp(d), 1.0, 0.0, 1.0, 0.0);
    }
    const double zy = m::capped(x[y], s, inv_s, t) - mx;
    const double lse = mx + m::log1p_r(st.other_m);
    const double loss = m::label_nll(st.other_y, zy, HUGE_VAL) + m::z_term(z, 1.0, lse);
    const double inv = 1.0 / st.sum, coef_z = 2.0 * z * lse;
    std::vector<double> g(C);
    for (int64_t c = 0; c < C; ++c) {
      const double d = m::shifted(m::capped(x[c], s, inv_s, t), mx, false);
      const double p = std::exp(d) * inv;
      double gc = m::label_grad(c == y, p, inv, st.other_y, 1.0, false, 0.0, 0.0, 1.0);
      gc += coef_z * p;
      g[c] = gc * (1.0 - t * t);
    }
    xentkit::CrossEntropyOptions o;
    o.reduction = xentkit::Reduction::sum;
    o.z_loss = z;
    o.softcap = s;
    std::vector<double> g_cpu(C);
    const double l_cpu = xentkit::cross_entropy<double, int64_t>(x.data(), &y, 1, C, 1, nullptr,
                                                                 nullptr, g_cpu.data(), o);
    EXPECT_NEAR(loss, l_cpu, 1e-12 * std::max(1.0, std::abs(l_cpu)));
    for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(g[c], g_cpu[c], 1e-13) << c;
  }
}

}  // namespace
