// The CUDA entry points on a device, against the CPU functions on the same (rounded) inputs:
// every loss for float32, float64, float16 and bfloat16 storage (the last two against the float32
// CPU result, within a few units in the last place of the storage type), class counts from 10 to
// 128256, weights, ignored labels, label smoothing, probability targets, inner > 1; bad labels and
// probabilities (NaN outputs, and check() throws the CPU's error); and determinism (two runs give
// the same bits). main() exits 77 (skipped) where no device is usable.

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xentkit/cuda.hpp"
#include "xentkit/device.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/half.hpp"
#include "xentkit/losses.hpp"

namespace {

namespace xk = xentkit;
namespace xc = xentkit::cuda;
using xk::bfloat16;
using xk::Broadcast;
using xk::half;

#define CUDA_OK(call)                                                                  \
  do {                                                                                 \
    const cudaError_t e_ = (call);                                                     \
    ASSERT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorString(e_);             \
  } while (0)

// ---- storage types ----------------------------------------------------------------------------

uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

float bf16_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// S: the storage type; R: the type of the CPU reference (float for the narrow types).
template <typename S>
struct Storage;
template <>
struct Storage<float> {
  using R = float;
  static float from(float v) { return v; }
  static float to(float v) { return v; }
  static constexpr double rel = 5e-5, abs = 1e-30;
};
template <>
struct Storage<double> {
  using R = double;
  static double from(double v) { return v; }
  static double to(double v) { return v; }
  static constexpr double rel = 1e-11, abs = 1e-300;
};
template <>
struct Storage<half> {
  using R = float;
  static half from(float v) { return xk::to_half(v); }
  static float to(half v) { return xk::to_float(v); }
  static constexpr double rel = 4.0 / 2048, abs = 4.0 / 16777216;  // 4 ulp; 4 subnormal steps
};
template <>
struct Storage<bfloat16> {
  using R = float;
  static bfloat16 from(float v) { return bfloat16{bf16_bits(v)}; }
  static float to(bfloat16 v) { return bf16_float(v.bits); }
  static constexpr double rel = 4.0 / 256, abs = 1e-37;
};

template <typename S>
using Ref = typename Storage<S>::R;

/// Rounds reference values to the storage type (in place) and returns the storage copy.
template <typename S>
std::vector<S> round_to(std::vector<Ref<S>>& v) {
  std::vector<S> s(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    s[i] = Storage<S>::from(v[i]);
    v[i] = Storage<S>::to(s[i]);
  }
  return s;
}

// ---- device buffers -----------------------------------------------------------------------------

xc::Launch g_launch;  // one stream and workspace for every test

template <typename T>
struct Dev {
  T* p = nullptr;
  std::size_t n = 0;
  explicit Dev(std::size_t count) : n(count) {
    if (n == 0) return;
    void* raw = nullptr;
    if (cudaMalloc(&raw, n * sizeof(T)) != cudaSuccess) throw std::runtime_error("cudaMalloc");
    p = static_cast<T*>(raw);
    // A pattern no result has (0x7f.. is a large finite float, 0xff.. a NaN of half/bf16).
    cudaMemset(p, 0x7f, n * sizeof(T));
    cudaDeviceSynchronize();
  }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) {
    if (n) cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
    cudaDeviceSynchronize();  // a pageable copy may return before its DMA ends
  }
  ~Dev() {
    if (p) cudaFree(p);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<T> get() const {
    std::vector<T> h(n);
    cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(g_launch.stream));
    if (n) cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// GPU values (storage S) against reference values: within rel * (|ref| + 1e-3 max|ref|) + abs.
template <typename S>
void expect_close(const char* what, const std::vector<S>& gpu, const std::vector<Ref<S>>& ref) {
  ASSERT_EQ(gpu.size(), ref.size()) << what;
  double scale = 0;
  for (const auto r : ref) {
    if (std::isfinite(static_cast<double>(r))) scale = std::max(scale, std::fabs(double(r)));
  }
  int bad = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double g = static_cast<double>(Storage<S>::to(gpu[i]));
    const double r = static_cast<double>(ref[i]);
    bool ok;
    if (std::isnan(r) || std::isinf(r)) {
      ok = std::isnan(r) ? std::isnan(g) : g == r;
    } else {
      ok = std::fabs(g - r) <= Storage<S>::rel * (std::fabs(r) + 1e-3 * scale) + Storage<S>::abs;
    }
    if (!ok && ++bad <= 5) {
      ADD_FAILURE() << what << "[" << i << "]: gpu " << g << ", cpu " << r << " (of "
                    << ref.size() << ")";
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << ref.size() << " differ";
}

template <typename S>
void expect_close(const char* what, S gpu, Ref<S> ref) {
  expect_close<S>(what, std::vector<S>{gpu}, std::vector<Ref<S>>{ref});
}

template <typename R>
std::vector<R> normal(std::mt19937_64& rng, std::size_t n, double sd) {
  std::normal_distribution<double> d(0.0, sd);
  std::vector<R> v(n);
  for (auto& x : v) x = static_cast<R>(d(rng));
  return v;
}

template <typename R>
std::vector<R> uniform(std::mt19937_64& rng, std::size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<R> v(n);
  for (auto& x : v) x = static_cast<R>(d(rng));
  return v;
}

/// Probability rows (outer, C, inner) summing to 1 over C.
template <typename R>
std::vector<R> simplex(std::mt19937_64& rng, int64_t outer, int64_t C, int64_t inner) {
  auto v = uniform<R>(rng, static_cast<std::size_t>(outer * C * inner), 0.0, 1.0);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t s = 0; s < inner; ++s) {
      double sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += v[(o * C + c) * inner + s];
      for (int64_t c = 0; c < C; ++c) v[(o * C + c) * inner + s] /= static_cast<R>(sum);
    }
  }
  return v;
}

int64_t rows_for(int64_t C) { return std::clamp<int64_t>((int64_t{1} << 20) / C, 3, 96); }

const int64_t kClasses[] = {10, 1000, 32000, 128256};

template <typename S>
class CudaDevice : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, half, bfloat16>;
TYPED_TEST_SUITE(CudaDevice, StorageTypes);

// ---- PyTorch ----------------------------------------------------------------------------------

template <typename S>
void class_index_case(std::mt19937_64& rng, bool nll, int64_t A, int64_t C, int64_t B,
                      bool weighted, double ignore_share, double eps, xk::Reduction reduction) {
  using R = Ref<S>;
  SCOPED_TRACE(std::string(nll ? "nll_loss" : "cross_entropy") + " A=" + std::to_string(A) +
               " C=" + std::to_string(C) + " B=" + std::to_string(B) +
               " weighted=" + std::to_string(weighted) + " ignore=" +
               std::to_string(ignore_share) + " eps=" + std::to_string(eps) +
               " reduction=" + std::to_string(static_cast<int>(reduction)));
  const int64_t P = A * B, N = P * C;
  auto x = nll ? uniform<R>(rng, N, -12.0, 0.0) : normal<R>(rng, N, 3.0);
  auto w = uniform<R>(rng, C, 0.2, 2.0);
  const auto xs = round_to<S>(x);
  const auto ws = round_to<S>(w);
  const int64_t ignore = C > 5 ? 5 : -100;
  std::vector<int64_t> y(P);
  std::uniform_int_distribution<int64_t> cls(0, C - 1);
  std::uniform_real_distribution<double> u(0, 1);
  for (auto& v : y) v = u(rng) < ignore_share ? ignore : cls(rng);
  std::vector<R> loss(P), grad(N);
  R red;
  const R* wp = weighted ? w.data() : nullptr;
  xk::CrossEntropyOptions co;
  co.reduction = reduction;
  co.ignore_index = ignore;
  co.label_smoothing = eps;
  co.grad_output = 1.5;
  xk::NllLossOptions no;
  no.reduction = reduction;
  no.ignore_index = ignore;
  no.grad_output = 1.5;
  red = nll ? xk::nll_loss(x.data(), y.data(), A, C, B, wp, loss.data(), grad.data(), no)
            : xk::cross_entropy(x.data(), y.data(), A, C, B, wp, loss.data(), grad.data(), co);

  Dev<S> dx(xs), dw(ws), dloss(P), dgrad(N), dred(1);
  Dev<int64_t> dy(y);
  std::vector<S> first_loss, first_grad, first_red;
  for (int run = 0; run < 2; ++run) {
    const S* dwp = weighted ? dw.p : nullptr;
    if (nll) {
      xc::nll_loss(dx.p, dy.p, A, C, B, dwp, dloss.p, dgrad.p, dred.p, no, g_launch);
    } else {
      xc::cross_entropy(dx.p, dy.p, A, C, B, dwp, dloss.p, dgrad.p, dred.p, co, g_launch);
    }
    EXPECT_NO_THROW(xc::check(g_launch));
    if (run == 0) {
      first_loss = dloss.get();
      first_grad = dgrad.get();
      first_red = dred.get();
      expect_close<S>("loss", first_loss, loss);
      expect_close<S>("grad", first_grad, grad);
      expect_close<S>("reduced", first_red[0], red);
    } else {
      EXPECT_TRUE(same_bits(first_loss, dloss.get())) << "loss not deterministic";
      EXPECT_TRUE(same_bits(first_grad, dgrad.get())) << "grad not deterministic";
      EXPECT_TRUE(same_bits(first_red, dred.get())) << "reduced not deterministic";
    }
  }
}

TYPED_TEST(CudaDevice, CrossEntropyClassIndices) {
  using S = TypeParam;
  std::mt19937_64 rng(1);
  const auto mean = xk::Reduction::mean, sum = xk::Reduction::sum, none = xk::Reduction::none;
  for (const int64_t C : kClasses) {
    const int64_t A = rows_for(C);
    class_index_case<S>(rng, false, A, C, 1, false, 0.0, 0.0, mean);
    class_index_case<S>(rng, false, A, C, 1, true, 0.2, 0.1, mean);
    class_index_case<S>(rng, false, A, C, 1, true, 0.3, 0.0, sum);
    class_index_case<S>(rng, false, A, C, 1, false, 0.2, 0.05, none);
  }
  class_index_case<S>(rng, false, 4, 10, 7, true, 0.2, 0.1, mean);
  class_index_case<S>(rng, false, 3, 1000, 3, false, 0.1, 0.0, mean);
  // Every target ignored: the mean is 0 / 0 (NaN), the gradient 0.
  class_index_case<S>(rng, false, 6, 10, 1, false, 1.0, 0.0, mean);
  class_index_case<S>(rng, false, 6, 10, 1, true, 1.0, 0.1, mean);
  class_index_case<S>(rng, false, 0, 10, 1, false, 0.0, 0.0, mean);
}

TYPED_TEST(CudaDevice, NllLoss) {
  using S = TypeParam;
  std::mt19937_64 rng(2);
  for (const int64_t C : {int64_t{10}, int64_t{1000}}) {
    class_index_case<S>(rng, true, 50, C, 1, true, 0.2, 0.0, xk::Reduction::mean);
    class_index_case<S>(rng, true, 50, C, 1, false, 0.2, 0.0, xk::Reduction::mean);
    class_index_case<S>(rng, true, 8, C, 4, true, 0.1, 0.0, xk::Reduction::sum);
    class_index_case<S>(rng, true, 8, C, 4, false, 0.0, 0.0, xk::Reduction::none);
  }
}

template <typename S>
void probabilities_case(std::mt19937_64& rng, int64_t A, int64_t C, int64_t B, bool weighted,
                        double eps, xk::Reduction reduction) {
  using R = Ref<S>;
  SCOPED_TRACE("cross_entropy(probabilities) C=" + std::to_string(C) + " B=" + std::to_string(B));
  const int64_t N = A * C * B;
  auto x = normal<R>(rng, N, 2.0);
  auto q = simplex<R>(rng, A, C, B);
  auto w = uniform<R>(rng, C, 0.5, 1.5);
  const auto xs = round_to<S>(x), qs = round_to<S>(q), ws = round_to<S>(w);
  std::vector<R> loss(A * B), grad(N);
  xk::CrossEntropyOptions o;
  o.reduction = reduction;
  o.label_smoothing = eps;
  const R red = xk::cross_entropy(x.data(), q.data(), A, C, B, weighted ? w.data() : nullptr,
                                  loss.data(), grad.data(), o);
  Dev<S> dx(xs), dq(qs), dw(ws), dloss(A * B), dgrad(N), dred(1);
  xc::cross_entropy(dx.p, dq.p, A, C, B, weighted ? dw.p : nullptr, dloss.p, dgrad.p, dred.p, o,
                    g_launch);
  const auto l1 = dloss.get(), g1 = dgrad.get(), r1 = dred.get();
  expect_close<S>("loss", l1, loss);
  expect_close<S>("grad", g1, grad);
  expect_close<S>("reduced", r1[0], red);
  xc::cross_entropy(dx.p, dq.p, A, C, B, weighted ? dw.p : nullptr, dloss.p, dgrad.p, dred.p, o,
                    g_launch);
  EXPECT_TRUE(same_bits(l1, dloss.get()) && same_bits(g1, dgrad.get()) &&
              same_bits(r1, dred.get()));
}

TYPED_TEST(CudaDevice, CrossEntropyProbabilities) {
  using S = TypeParam;
  std::mt19937_64 rng(3);
  for (const int64_t C : {int64_t{10}, int64_t{1000}, int64_t{32000}}) {
    probabilities_case<S>(rng, rows_for(C), C, 1, true, 0.1, xk::Reduction::mean);
    probabilities_case<S>(rng, rows_for(C), C, 1, false, 0.0, xk::Reduction::sum);
  }
  probabilities_case<S>(rng, 5, 10, 6, true, 0.0, xk::Reduction::none);
}

TYPED_TEST(CudaDevice, SoftmaxAndLogSoftmax) {
  using S = TypeParam;
  using R = Ref<S>;
  std::mt19937_64 rng(4);
  std::vector<std::pair<int64_t, int64_t>> shapes;  // (C, inner)
  for (const int64_t C : kClasses) shapes.emplace_back(C, 1);
  shapes.emplace_back(10, 9);
  shapes.emplace_back(1000, 2);
  for (const auto& [C, B] : shapes) {
    const int64_t A = std::max<int64_t>(2, rows_for(C) / B), N = A * C * B;
    auto x = normal<R>(rng, N, 4.0);
    const auto xs = round_to<S>(x);
    std::vector<R> p(N), lp(N);
    xk::softmax(x.data(), A, C, B, p.data());
    xk::log_softmax(x.data(), A, C, B, lp.data());
    Dev<S> dx(xs), dp(N), dlp(N);
    xc::softmax(dx.p, A, C, B, dp.p, g_launch);
    xc::log_softmax(dx.p, A, C, B, dlp.p, g_launch);
    SCOPED_TRACE("C=" + std::to_string(C) + " inner=" + std::to_string(B));
    const auto p1 = dp.get(), lp1 = dlp.get();
    expect_close<S>("softmax", p1, p);
    expect_close<S>("log_softmax", lp1, lp);
    xc::softmax(dx.p, A, C, B, dp.p, g_launch);
    xc::log_softmax(dx.p, A, C, B, dlp.p, g_launch);
    EXPECT_TRUE(same_bits(p1, dp.get()) && same_bits(lp1, dlp.get()));
  }
}

TYPED_TEST(CudaDevice, BinaryCrossEntropy) {
  using S = TypeParam;
  using R = Ref<S>;
  std::mt19937_64 rng(5);
  const int64_t A = 37, C = 11, B = 13, N = A * C * B;
  for (const auto reduction : {xk::Reduction::mean, xk::Reduction::sum, xk::Reduction::none}) {
    for (const bool logits : {false, true}) {
      SCOPED_TRACE(std::string(logits ? "with_logits " : "probabilities ") +
                   std::to_string(static_cast<int>(reduction)));
      auto x = logits ? normal<R>(rng, N, 3.0) : uniform<R>(rng, N, 0.0, 1.0);
      auto t = uniform<R>(rng, N, 0.0, 1.0);
      auto w = uniform<R>(rng, C, 0.5, 2.0);
      auto pw = uniform<R>(rng, C * B, 0.5, 3.0);
      const auto xs = round_to<S>(x), ts = round_to<S>(t), ws = round_to<S>(w),
                 pws = round_to<S>(pw);
      std::vector<R> loss(N), grad(N);
      xk::BinaryCrossEntropyOptions o;
      o.reduction = reduction;
      o.grad_output = 0.75;
      // weight over C of (A, C, B); pos_weight over (C, B).
      const Broadcast<R> bw{w.data(), B, C}, bpw{pw.data(), 1, C * B};
      const R red = logits ? xk::binary_cross_entropy_with_logits(x.data(), t.data(), N, bw, bpw,
                                                                  loss.data(), grad.data(), o)
                           : xk::binary_cross_entropy(x.data(), t.data(), N, bw, loss.data(),
                                                      grad.data(), o);
      Dev<S> dx(xs), dt(ts), dw(ws), dpw(pws), dloss(N), dgrad(N), dred(1);
      const Broadcast<S> gw{dw.p, B, C}, gpw{dpw.p, 1, C * B};
      std::vector<S> l1, g1, r1;
      for (int run = 0; run < 2; ++run) {
        if (logits) {
          xc::binary_cross_entropy_with_logits(dx.p, dt.p, N, gw, gpw, dloss.p, dgrad.p, dred.p,
                                               o, g_launch);
        } else {
          xc::binary_cross_entropy(dx.p, dt.p, N, gw, dloss.p, dgrad.p, dred.p, o, g_launch);
        }
        EXPECT_NO_THROW(xc::check(g_launch));
        if (run == 0) {
          l1 = dloss.get();
          g1 = dgrad.get();
          r1 = dred.get();
          expect_close<S>("loss", l1, loss);
          expect_close<S>("grad", g1, grad);
          expect_close<S>("reduced", r1[0], red);
        } else {
          EXPECT_TRUE(same_bits(l1, dloss.get()) && same_bits(g1, dgrad.get()) &&
                      same_bits(r1, dred.get()));
        }
      }
    }
  }
}

// ---- Caffe ------------------------------------------------------------------------------------

TYPED_TEST(CudaDevice, SoftmaxWithLoss) {
  using S = TypeParam;
  using R = Ref<S>;
  std::mt19937_64 rng(6);
  struct Case {
    int64_t A, C, B;
    std::optional<int64_t> ignore;
    xk::Normalization mode;
  };
  const Case cases[] = {{rows_for(10), 10, 1, std::nullopt, xk::Normalization::valid},
                        {rows_for(1000), 1000, 1, 255, xk::Normalization::valid},
                        {rows_for(32000), 32000, 1, 3, xk::Normalization::full},
                        {rows_for(128256), 128256, 1, std::nullopt, xk::Normalization::batch_size},
                        {4, 21, 17, 255, xk::Normalization::valid},
                        {3, 10, 5, 255, xk::Normalization::none}};
  for (const Case& k : cases) {
    SCOPED_TRACE("softmax_with_loss C=" + std::to_string(k.C) + " inner=" + std::to_string(k.B));
    const int64_t P = k.A * k.B, N = P * k.C;
    // Large logits too: the loss of a position is capped at -log(FLT_MIN).
    auto x = normal<R>(rng, N, 8.0);
    const auto xs = round_to<S>(x);
    std::vector<float> y(P);
    std::uniform_int_distribution<int64_t> cls(0, k.C - 1);
    std::uniform_real_distribution<double> u(0, 1);
    for (auto& v : y) {
      // Caffe truncates floating labels toward zero.
      v = k.ignore && u(rng) < 0.2 ? static_cast<float>(*k.ignore) + 0.5f
                                   : static_cast<float>(cls(rng)) + 0.25f;
    }
    xk::SoftmaxWithLossOptions o;
    o.ignore_label = k.ignore;
    o.normalization = k.mode;
    o.loss_weight = 2.0;
    std::vector<R> diff(N), prob(N);
    const R loss = xk::softmax_with_loss(x.data(), y.data(), k.A, k.C, k.B, diff.data(),
                                         prob.data(), o);
    Dev<S> dx(xs), ddiff(N), dprob(N), dloss(1);
    Dev<float> dy(y);
    xc::softmax_with_loss(dx.p, dy.p, k.A, k.C, k.B, ddiff.p, dprob.p, dloss.p, o, g_launch);
    EXPECT_NO_THROW(xc::check(g_launch));
    const auto d1 = ddiff.get(), p1 = dprob.get(), l1 = dloss.get();
    expect_close<S>("diff", d1, diff);
    expect_close<S>("prob", p1, prob);
    expect_close<S>("loss", l1[0], loss);
    xc::softmax_with_loss(dx.p, dy.p, k.A, k.C, k.B, ddiff.p, dprob.p, dloss.p, o, g_launch);
    EXPECT_TRUE(same_bits(d1, ddiff.get()) && same_bits(p1, dprob.get()) &&
                same_bits(l1, dloss.get()));
  }
}

TYPED_TEST(CudaDevice, SigmoidCrossEntropyLoss) {
  using S = TypeParam;
  using R = Ref<S>;
  std::mt19937_64 rng(7);
  const int64_t outer = 24, N = outer * 1001;
  for (const auto mode : {xk::Normalization::valid, xk::Normalization::batch_size,
                          xk::Normalization::full}) {
    for (const bool ignore : {false, true}) {
      auto x = normal<R>(rng, N, 4.0);
      auto t = uniform<R>(rng, N, 0.0, 1.0);
      std::uniform_real_distribution<double> u(0, 1);
      if (ignore) {
        for (auto& v : t) {
          if (u(rng) < 0.3) v = R(-1);
        }
      }
      const auto xs = round_to<S>(x), ts = round_to<S>(t);
      xk::SigmoidCrossEntropyLossOptions o;
      if (ignore) o.ignore_label = -1;
      o.normalization = mode;
      o.loss_weight = 0.5;
      std::vector<R> diff(N);
      const R loss = xk::sigmoid_cross_entropy_loss(x.data(), t.data(), outer, N, diff.data(), o);
      Dev<S> dx(xs), dt(ts), ddiff(N), dloss(1);
      xc::sigmoid_cross_entropy_loss(dx.p, dt.p, outer, N, ddiff.p, dloss.p, o, g_launch);
      const auto d1 = ddiff.get(), l1 = dloss.get();
      expect_close<S>("diff", d1, diff);
      expect_close<S>("loss", l1[0], loss);
      xc::sigmoid_cross_entropy_loss(dx.p, dt.p, outer, N, ddiff.p, dloss.p, o, g_launch);
      EXPECT_TRUE(same_bits(d1, ddiff.get()) && same_bits(l1, dloss.get()));
    }
  }
}

// ---- TensorFlow -------------------------------------------------------------------------------

TYPED_TEST(CudaDevice, TensorFlow) {
  using S = TypeParam;
  using R = Ref<S>;
  std::mt19937_64 rng(8);
  {
    const int64_t N = 100003;
    auto x = normal<R>(rng, N, 5.0);
    auto t = uniform<R>(rng, N, 0.0, 1.0);
    const auto xs = round_to<S>(x), ts = round_to<S>(t);
    std::vector<R> loss(N), grad(N);
    xk::sigmoid_cross_entropy_with_logits(t.data(), x.data(), N, loss.data(), grad.data());
    Dev<S> dx(xs), dt(ts), dloss(N), dgrad(N);
    xc::sigmoid_cross_entropy_with_logits(dt.p, dx.p, N, dloss.p, dgrad.p, g_launch);
    expect_close<S>("sigmoid loss", dloss.get(), loss);
    expect_close<S>("sigmoid grad", dgrad.get(), grad);
  }
  for (const int64_t C : kClasses) {
    SCOPED_TRACE("C=" + std::to_string(C));
    const int64_t A = rows_for(C), N = A * C;
    auto x = normal<R>(rng, N, 3.0);
    auto q = simplex<R>(rng, A, C, 1);
    const auto xs = round_to<S>(x), qs = round_to<S>(q);
    std::vector<int32_t> y(A);
    std::uniform_int_distribution<int32_t> cls(0, static_cast<int32_t>(C - 1));
    for (auto& v : y) v = cls(rng);
    std::vector<R> loss(A), grad(N), sloss(A), sgrad(N);
    xk::softmax_cross_entropy_with_logits(q.data(), x.data(), A, C, 1, loss.data(), grad.data());
    xk::sparse_softmax_cross_entropy_with_logits(y.data(), x.data(), A, C, sloss.data(),
                                                 sgrad.data());
    Dev<S> dx(xs), dq(qs), dloss(A), dgrad(N), dsloss(A), dsgrad(N);
    Dev<int32_t> dy(y);
    xc::softmax_cross_entropy_with_logits(dq.p, dx.p, A, 1 * C, 1, dloss.p, dgrad.p, g_launch);
    xc::sparse_softmax_cross_entropy_with_logits(dy.p, dx.p, A, C, dsloss.p, dsgrad.p, g_launch);
    EXPECT_NO_THROW(xc::check(g_launch));
    expect_close<S>("softmax loss", dloss.get(), loss);
    expect_close<S>("softmax grad", dgrad.get(), grad);
    expect_close<S>("sparse loss", dsloss.get(), sloss);
    expect_close<S>("sparse grad", dsgrad.get(), sgrad);
  }
  {
    // (outer, C, inner) probability targets.
    const int64_t A = 3, C = 17, B = 7, N = A * C * B;
    auto x = normal<R>(rng, N, 3.0);
    auto q = simplex<R>(rng, A, C, B);
    const auto xs = round_to<S>(x), qs = round_to<S>(q);
    std::vector<R> loss(A * B), grad(N);
    xk::softmax_cross_entropy_with_logits(q.data(), x.data(), A, C, B, loss.data(), grad.data());
    Dev<S> dx(xs), dq(qs), dloss(A * B), dgrad(N);
    xc::softmax_cross_entropy_with_logits(dq.p, dx.p, A, C, B, dloss.p, dgrad.p, g_launch);
    expect_close<S>("softmax loss (inner 7)", dloss.get(), loss);
    expect_close<S>("softmax grad (inner 7)", dgrad.get(), grad);
  }
}

// ---- errors found on the device -----------------------------------------------------------------

template <typename F>
std::string cpu_label_error(F&& f) {
  try {
    f();
  } catch (const xk::label_error& e) {
    return e.what();
  }
  return "(no error)";
}

template <typename S, typename L>
void bad_label_case(L bad, bool caffe) {
  using R = Ref<S>;
  SCOPED_TRACE(std::string(caffe ? "softmax_with_loss" : "cross_entropy") + " label " +
               std::to_string(static_cast<double>(bad)));
  std::mt19937_64 rng(9);
  const int64_t A = 16, C = 10, i = 11;
  auto x = normal<R>(rng, A * C, 2.0);
  const auto xs = round_to<S>(x);
  std::vector<L> y(A);
  for (int64_t k = 0; k < A; ++k) y[k] = static_cast<L>(k % C);
  y[i] = bad;
  y[13] = bad;  // a second one: the first is reported
  std::vector<R> g(A * C);
  xk::SoftmaxWithLossOptions so;
  so.ignore_label = 7;
  const std::string expected = cpu_label_error([&] {
    if (caffe) {
      xk::softmax_with_loss(x.data(), y.data(), A, C, 1, g.data(), static_cast<R*>(nullptr), so);
    } else {
      if constexpr (std::is_integral_v<L>) {
        xk::cross_entropy(x.data(), y.data(), A, C, 1, static_cast<const R*>(nullptr),
                          static_cast<R*>(nullptr), g.data(), xk::CrossEntropyOptions{});
      }
    }
  });
  Dev<S> dx(xs), dloss(A), dgrad(A * C), dred(1);
  Dev<L> dy(y);
  if (caffe) {
    xc::softmax_with_loss(dx.p, dy.p, A, C, 1, dgrad.p, static_cast<S*>(nullptr), dred.p, so,
                          g_launch);
  } else {
    if constexpr (std::is_integral_v<L>) {
      xc::cross_entropy(dx.p, dy.p, A, C, 1, static_cast<const S*>(nullptr), dloss.p, dgrad.p,
                        dred.p, xk::CrossEntropyOptions{}, g_launch);
    }
  }
  const xc::Status s = xc::status(g_launch);
  EXPECT_EQ(s.kind, xc::Status::bad_label);
  EXPECT_EQ(s.index, i);
  try {
    xc::check(g_launch);
    ADD_FAILURE() << "check() did not throw";
  } catch (const xk::label_error& e) {
    EXPECT_EQ(std::string(e.what()), expected);
    EXPECT_EQ(e.index(), i);
  }
  EXPECT_TRUE(std::isnan(static_cast<double>(Storage<S>::to(dred.get()[0]))));
  const auto grad = dgrad.get();
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_TRUE(std::isnan(static_cast<double>(Storage<S>::to(grad[i * C + c]))));
  }
  if (!caffe) {
    EXPECT_TRUE(std::isnan(static_cast<double>(Storage<S>::to(dloss.get()[i]))));
  }
  // The next clean call clears the record.
  std::vector<L> clean(A, L(1));
  Dev<L> dclean(clean);
  if (caffe) {
    xc::softmax_with_loss(dx.p, dclean.p, A, C, 1, dgrad.p, static_cast<S*>(nullptr), dred.p, so,
                          g_launch);
  } else {
    if constexpr (std::is_integral_v<L>) {
      xc::cross_entropy(dx.p, dclean.p, A, C, 1, static_cast<const S*>(nullptr), dloss.p,
                        dgrad.p, dred.p, xk::CrossEntropyOptions{}, g_launch);
    }
  }
  EXPECT_NO_THROW(xc::check(g_launch));
  EXPECT_EQ(xc::status(g_launch).kind, xc::Status::ok);
  EXPECT_TRUE(std::isfinite(static_cast<double>(Storage<S>::to(dred.get()[0]))));
}

TYPED_TEST(CudaDevice, BadLabels) {
  using S = TypeParam;
  bad_label_case<S, int64_t>(10, false);
  bad_label_case<S, int64_t>(-3, false);
  bad_label_case<S, uint8_t>(200, false);
  bad_label_case<S, int32_t>(-100 - 1, false);
  bad_label_case<S, float>(-2.5f, true);
  bad_label_case<S, double>(std::nan(""), true);
  bad_label_case<S, int16_t>(12, true);
}

TYPED_TEST(CudaDevice, BadProbabilities) {
  using S = TypeParam;
  using R = Ref<S>;
  std::mt19937_64 rng(10);
  const int64_t N = 5000;
  for (const bool input_bad : {true, false}) {
    auto x = uniform<R>(rng, N, 0.0, 1.0);
    auto t = uniform<R>(rng, N, 0.0, 1.0);
    (input_bad ? x : t)[4321] = R(1.25);
    (input_bad ? x : t)[4400] = R(-1);
    const auto xs = round_to<S>(x), ts = round_to<S>(t);
    std::string expected = "(no error)";
    try {
      xk::binary_cross_entropy(x.data(), t.data(), N, Broadcast<R>{}, static_cast<R*>(nullptr),
                               static_cast<R*>(nullptr), xk::BinaryCrossEntropyOptions{});
    } catch (const xk::value_error& e) {
      expected = e.what();
    }
    Dev<S> dx(xs), dt(ts), dloss(N), dgrad(N), dred(1);
    xc::binary_cross_entropy(dx.p, dt.p, N, Broadcast<S>{}, dloss.p, dgrad.p, dred.p,
                             xk::BinaryCrossEntropyOptions{}, g_launch);
    const xc::Status s = xc::status(g_launch);
    EXPECT_EQ(s.kind, xc::Status::bad_probability);
    EXPECT_EQ(s.index, 4321);
    EXPECT_EQ(s.value, 1.25);
    try {
      xc::check(g_launch);
      ADD_FAILURE() << "check() did not throw";
    } catch (const xk::label_error&) {
      ADD_FAILURE() << "a label_error for a probability";
    } catch (const xk::value_error& e) {
      EXPECT_EQ(std::string(e.what()), expected);
    }
    EXPECT_TRUE(std::isnan(static_cast<double>(Storage<S>::to(dred.get()[0]))));
  }
}

// ---- the first device run: launch layouts, in-place gradients, concurrency --------------------

/// cross_entropy (or nll_loss) with grad written over the input itself, against the CPU; two
/// runs on fresh copies give the same bits.
template <typename S>
void in_place_case(std::mt19937_64& rng, bool nll, int64_t A, int64_t C, int64_t B) {
  using R = Ref<S>;
  SCOPED_TRACE(std::string(nll ? "in-place nll_loss" : "in-place cross_entropy") + " A=" +
               std::to_string(A) + " C=" + std::to_string(C) + " B=" + std::to_string(B));
  const int64_t P = A * B, N = P * C;
  auto x = nll ? uniform<R>(rng, N, -12.0, 0.0) : normal<R>(rng, N, 3.0);
  auto w = uniform<R>(rng, C, 0.2, 2.0);
  const auto xs = round_to<S>(x);
  const auto ws = round_to<S>(w);
  std::vector<int64_t> y(P);
  std::uniform_int_distribution<int64_t> cls(0, C - 1);
  for (auto& v : y) v = cls(rng);
  std::vector<R> loss(P), grad(N);
  xk::CrossEntropyOptions co;
  co.label_smoothing = 0.1;
  xk::NllLossOptions no;
  const R red = nll ? xk::nll_loss(x.data(), y.data(), A, C, B, w.data(), loss.data(),
                                   grad.data(), no)
                    : xk::cross_entropy(x.data(), y.data(), A, C, B, w.data(), loss.data(),
                                        grad.data(), co);
  Dev<S> dw(ws), dloss(P), dred(1);
  Dev<int64_t> dy(y);
  std::vector<S> first;
  for (int run = 0; run < 2; ++run) {
    Dev<S> dx(xs);
    if (nll) {
      xc::nll_loss(dx.p, dy.p, A, C, B, dw.p, dloss.p, dx.p, dred.p, no, g_launch);
    } else {
      xc::cross_entropy(dx.p, dy.p, A, C, B, dw.p, dloss.p, dx.p, dred.p, co, g_launch);
    }
    EXPECT_NO_THROW(xc::check(g_launch));
    const auto g = dx.get();
    if (run == 0) {
      expect_close<S>("grad", g, grad);
      expect_close<S>("loss", dloss.get(), loss);
      expect_close<S>("reduced", dred.get()[0], red);
      first = g;
    } else {
      EXPECT_TRUE(same_bits(first, g)) << "in-place grad not deterministic";
    }
  }
}

template <typename S>
void softmax_case(std::mt19937_64& rng, int64_t A, int64_t C, int64_t B) {
  using R = Ref<S>;
  SCOPED_TRACE("softmax A=" + std::to_string(A) + " C=" + std::to_string(C) + " B=" +
               std::to_string(B));
  const int64_t N = A * C * B;
  auto x = normal<R>(rng, N, 4.0);
  const auto xs = round_to<S>(x);
  std::vector<R> p(N), lp(N);
  xk::softmax(x.data(), A, C, B, p.data());
  xk::log_softmax(x.data(), A, C, B, lp.data());
  Dev<S> dx(xs), dp(N), dlp(N);
  xc::softmax(dx.p, A, C, B, dp.p, g_launch);
  xc::log_softmax(dx.p, A, C, B, dlp.p, g_launch);
  expect_close<S>("softmax", dp.get(), p);
  expect_close<S>("log_softmax", dlp.get(), lp);
}

/// The staged kernel's rows just under, at and over 48 KiB less its static shared memory (the
/// launch needed the opt-in there and had none before).
TYPED_TEST(CudaDevice, StagingWindowAroundTheDefaultSharedLimit) {
  using S = TypeParam;
  std::mt19937_64 rng(21);
  std::vector<int64_t> classes;
  if (sizeof(S) == 4) classes = {12128, 12129, 12288};
  if (sizeof(S) == 2) classes = {24256, 24257, 24576};
  if (sizeof(S) == 8) classes = {6048, 6049, 6144};
  for (const int64_t C : classes) {
    class_index_case<S>(rng, false, 5, C, 1, true, 0.1, 0.1, xk::Reduction::mean);
    class_index_case<S>(rng, true, 5, C, 1, true, 0.1, 0.0, xk::Reduction::mean);
    in_place_case<S>(rng, false, 4, C, 1);
    softmax_case<S>(rng, 3, C, 1);
  }
}

/// Every row layout's edges: warp rows (K = 1..32), the block kernels, the positions kernels
/// (thread and warp per position), in place.
TYPED_TEST(CudaDevice, LayoutEdges) {
  using S = TypeParam;
  std::mt19937_64 rng(22);
  for (const int64_t C : {1, 31, 32, 33, 511, 512, 513, 1023, 1024, 1025}) {
    for (const int64_t B : {1, 3}) {
      class_index_case<S>(rng, false, 7, C, B, true, 0.1, 0.1, xk::Reduction::mean);
      in_place_case<S>(rng, false, 5, C, B);
      in_place_case<S>(rng, true, 5, C, B);
    }
  }
  // A long class axis that is not last, few positions: one warp per position.
  class_index_case<S>(rng, false, 2, 4096, 16, true, 0.1, 0.1, xk::Reduction::sum);
  probabilities_case<S>(rng, 2, 2048, 8, true, 0.1, xk::Reduction::mean);
  softmax_case<S>(rng, 1, 3000, 33);
}

/// Long rows: the cluster path on sm_90 (the sweeping block kernel elsewhere), odd C (unaligned
/// rows, scalar staging), in place, with weights, smoothing and probability targets.
TYPED_TEST(CudaDevice, LongRows) {
  using S = TypeParam;
  std::mt19937_64 rng(23);
  std::vector<int64_t> classes;
  if (std::is_same_v<S, float>) classes = {24577, 81921, 100003, 128256, 262144};
  if (std::is_same_v<S, bfloat16>) classes = {128256};
  if (std::is_same_v<S, double>) classes = {20000};
  for (const int64_t C : classes) {
    class_index_case<S>(rng, false, 3, C, 1, true, 0.0, 0.1, xk::Reduction::mean);
    probabilities_case<S>(rng, 3, C, 1, true, 0.1, xk::Reduction::mean);
    class_index_case<S>(rng, true, 3, C, 1, true, 0.0, 0.0, xk::Reduction::sum);
    in_place_case<S>(rng, false, 3, C, 1);
    in_place_case<S>(rng, true, 3, C, 1);
  }
}

/// Two host threads calling with different long rows at once get the bits of a solo run (the
/// launch limits are decided once per device, never changed by another call).
TEST(CudaDeviceConcurrency, TwoThreadsKeepTheSoloBits) {
  struct Job {
    int64_t A, C;
    std::vector<float> x;
    std::vector<int64_t> y;
    std::vector<float> solo_grad, solo_red;
  };
  std::mt19937_64 rng(24);
  std::vector<Job> jobs;
  for (const int64_t C : {81921, 128256}) {
    Job j{4, C, normal<float>(rng, static_cast<std::size_t>(4 * C), 3.0), {}, {}, {}};
    std::uniform_int_distribution<int64_t> cls(0, C - 1);
    for (int i = 0; i < 4; ++i) j.y.push_back(cls(rng));
    jobs.push_back(std::move(j));
  }
  xk::CrossEntropyOptions co;
  co.label_smoothing = 0.1;
  auto run = [&co](Job& j, xc::Launch launch, std::vector<float>* grad, std::vector<float>* red,
                   int times) {
    Dev<float> dx(j.x), dg(j.x.size()), dr(1);
    Dev<int64_t> dy(j.y);
    for (int t = 0; t < times; ++t) {
      xc::cross_entropy(dx.p, dy.p, j.A, j.C, int64_t{1}, static_cast<const float*>(nullptr),
                        static_cast<float*>(nullptr), dg.p, dr.p, co, launch);
    }
    xc::check(launch);
    grad->resize(j.x.size());
    red->resize(1);
    cudaMemcpy(grad->data(), dg.p, grad->size() * sizeof(float), cudaMemcpyDeviceToHost);
    cudaMemcpy(red->data(), dr.p, sizeof(float), cudaMemcpyDeviceToHost);
  };
  for (auto& j : jobs) run(j, g_launch, &j.solo_grad, &j.solo_red, 1);
  std::vector<xc::Launch> launches;
  for (int i = 0; i < 2; ++i) {
    cudaStream_t s = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    void* ws = nullptr;
    CUDA_OK(cudaMalloc(&ws, xc::kWorkspaceBytes));
    launches.push_back(xc::Launch{ws, reinterpret_cast<xc::stream_t>(s)});
  }
  std::vector<float> grads[2], reds[2];
  std::string errors[2];
  std::thread threads[2];
  for (int i = 0; i < 2; ++i) {
    threads[i] = std::thread([&, i] {
      try {
        run(jobs[i], launches[i], &grads[i], &reds[i], 8);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(errors[i], "");
    EXPECT_TRUE(same_bits(grads[i], jobs[i].solo_grad)) << "thread " << i;
    EXPECT_TRUE(same_bits(reds[i], jobs[i].solo_red)) << "thread " << i;
    cudaFree(launches[i].workspace);
    cudaStreamDestroy(reinterpret_cast<cudaStream_t>(launches[i].stream));
  }
}

/// Elementwise tails and misaligned bases (x + 1, t + 1: the scalar path), in place.
TYPED_TEST(CudaDevice, ElementwiseTails) {
  using S = TypeParam;
  using R = Ref<S>;
  std::mt19937_64 rng(25);
  std::vector<int64_t> sizes;
  for (int64_t n = 1; n <= 17; ++n) sizes.push_back(n);
  sizes.push_back(4099);
  for (const int64_t n : sizes) {
    for (const bool logits : {false, true}) {
      SCOPED_TRACE("n=" + std::to_string(n) + (logits ? " logits" : " probabilities"));
      auto x = logits ? normal<R>(rng, n + 1, 3.0) : uniform<R>(rng, n + 1, 0.01, 0.99);
      auto t = uniform<R>(rng, n + 1, 0.0, 1.0);
      const auto xs = round_to<S>(x), ts = round_to<S>(t);
      std::vector<R> loss(n), grad(n);
      xk::BinaryCrossEntropyOptions o;
      o.reduction = xk::Reduction::sum;
      const R red = logits ? xk::binary_cross_entropy_with_logits(
                                 x.data() + 1, t.data() + 1, n, Broadcast<R>{}, Broadcast<R>{},
                                 loss.data(), grad.data(), o)
                           : xk::binary_cross_entropy(x.data() + 1, t.data() + 1, n,
                                                      Broadcast<R>{}, loss.data(), grad.data(), o);
      Dev<S> dx(xs), dt(ts), dloss(n), dred(1);
      S* gx = dx.p + 1;  // in place, misaligned
      if (logits) {
        xc::binary_cross_entropy_with_logits(gx, dt.p + 1, n, Broadcast<S>{}, Broadcast<S>{},
                                             dloss.p, gx, dred.p, o, g_launch);
      } else {
        xc::binary_cross_entropy(gx, dt.p + 1, n, Broadcast<S>{}, dloss.p, gx, dred.p, o,
                                 g_launch);
      }
      EXPECT_NO_THROW(xc::check(g_launch));
      auto g = dx.get();
      g.erase(g.begin());
      expect_close<S>("grad", g, grad);
      expect_close<S>("loss", dloss.get(), loss);
      expect_close<S>("reduced", dred.get()[0], red);
    }
  }
}

// ---- memory and stream helpers ----------------------------------------------------------------

TEST(CudaDeviceHelpers, MemoryAndStreams) {
  const int device = xc::current_device();
  EXPECT_GE(device, 0);
  xc::set_device(device);
  cudaStream_t other = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  const xc::stream_t s1 = g_launch.stream;
  const xc::stream_t s2 = reinterpret_cast<xc::stream_t>(other);
  void* p = xc::allocate(1 << 20, s1);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(xc::device_of(p), device);
  int host = 0;
  EXPECT_EQ(xc::device_of(&host), -1);
  EXPECT_EQ(xc::device_of(nullptr), -1);
  CUDA_OK(cudaMemsetAsync(p, 0x3c, 1 << 20, reinterpret_cast<cudaStream_t>(s1)));
  xc::stream_wait(s2, s1);  // s2 sees the memset
  std::vector<unsigned char> back(1 << 20);
  xc::copy_to_host(back.data(), p, back.size(), s2);
  EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](unsigned char c) { return c == 0x3c; }));
  xc::synchronize(s1);
  xc::release(p, s1);
  xc::synchronize(s1);
  xc::release(nullptr, s1);
  CUDA_OK(cudaStreamDestroy(other));
  // A workspace that is not 256-byte aligned is refused before anything is enqueued.
  std::vector<float> xv(8);
  Dev<float> dx(xv), dout(8);
  const xc::Launch odd{static_cast<unsigned char*>(g_launch.workspace) + 64, g_launch.stream};
  EXPECT_THROW(xc::softmax(dx.p, 2, 4, 1, dout.p, odd), xk::value_error);
  EXPECT_THROW(xc::softmax(dx.p, 2, 4, 1, dout.p, xc::Launch{nullptr, g_launch.stream}),
               xk::value_error);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (!xk::cuda_available()) {
    std::printf("no usable CUDA device: skipped\n");
    return 77;
  }
  if (const char* problem = xc::kernel_image_problem(); *problem != '\0') {
    std::printf("%s\n", problem);  // a device, but this build's kernels do not load on it
    return 1;
  }
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  // A blocking stream: it waits for the legacy default stream that the test's copies use.
  if (cudaStreamCreate(&stream) != cudaSuccess ||
      cudaMalloc(&workspace, xc::kWorkspaceBytes) != cudaSuccess) {
    std::printf("could not set up a stream and a workspace\n");
    return 1;
  }
  g_launch = xc::Launch{workspace, reinterpret_cast<xc::stream_t>(stream)};
  const int rc = RUN_ALL_TESTS();
  cudaFree(workspace);
  cudaStreamDestroy(stream);
  return rc;
}
