// The host side of the CUDA entry points, tested without a device: bad shapes, options and buffers
// throw what the CPU function throws, with its message, before anything is enqueued; valid calls
// without a usable device throw unavailable_error and touch nothing; every loss maps onto the
// device plan the CPU's mapping implies; and a workspace's error record turns into the CPU's exact
// label_error / value_error.

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_host.hpp"
#include "xentkit/cuda.hpp"
#include "xentkit/detail/labels.hpp"
#include "xentkit/device.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/half.hpp"
#include "xentkit/losses.hpp"

namespace {

namespace xk = xentkit;
namespace xc = xentkit::cuda;
namespace xd = xentkit::cuda::detail;
using xk::bfloat16;
using xk::Broadcast;
using xk::half;

struct Outcome {
  std::string kind;  // none, label, value, type, unavailable, other
  std::string what;
  bool operator==(const Outcome& o) const { return kind == o.kind && what == o.what; }
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  return os << o.kind << ": " << o.what;
}

template <typename F>
Outcome outcome(F&& f) {
  try {
    f();
  } catch (const xk::label_error& e) {
    return {"label", e.what()};
  } catch (const xk::value_error& e) {
    return {"value", e.what()};
  } catch (const xk::type_error& e) {
    return {"type", e.what()};
  } catch (const xk::unavailable_error& e) {
    return {"unavailable", e.what()};
  } catch (const std::exception& e) {
    return {"other", e.what()};
  }
  return {"none", ""};
}

/// A launch that can never reach a kernel: with no device it is unavailable, with one the null
/// workspace is refused before anything is enqueued.
const xc::Launch kNoLaunch{nullptr, nullptr};

/// The CPU call fails, and the CUDA call fails the same way.
#define EXPECT_SAME_ERROR(cpu_call, cuda_call)                  \
  do {                                                          \
    const Outcome cpu_ = outcome([&] { (void)(cpu_call); });    \
    const Outcome cuda_ = outcome([&] { (cuda_call); });        \
    EXPECT_NE(cpu_.kind, "none") << #cpu_call;                  \
    EXPECT_EQ(cpu_, cuda_) << #cuda_call;                       \
  } while (0)

template <typename T>
struct Buffers {
  explicit Buffers(std::size_t n) : a(n, T(0.25)), b(n, T(0.5)), c(n), d(n), w(n, T(1)) {}
  std::vector<T> a, b, c, d, w;
};

constexpr int64_t kBig = int64_t{1} << 40;

// ---- the CPU's checks, in its order and with its messages ---------------------------------------

template <typename T>
class CudaHostChecks : public ::testing::Test {};
using RealTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CudaHostChecks, RealTypes);

TYPED_TEST(CudaHostChecks, SigmoidCrossEntropyLoss) {
  using T = TypeParam;
  Buffers<T> m(64);
  T out{};
  xk::SigmoidCrossEntropyLossOptions o;
  auto cpu = [&](const T* s, const T* t, int64_t outer, int64_t count) {
    return xk::sigmoid_cross_entropy_loss(s, t, outer, count, m.c.data(), o);
  };
  auto gpu = [&](const T* s, const T* t, int64_t outer, int64_t count) {
    xc::sigmoid_cross_entropy_loss(s, t, outer, count, m.c.data(), &out, o, kNoLaunch);
  };
  EXPECT_SAME_ERROR(cpu(m.a.data(), m.b.data(), -1, 4), gpu(m.a.data(), m.b.data(), -1, 4));
  EXPECT_SAME_ERROR(cpu(m.a.data(), m.b.data(), 2, -4), gpu(m.a.data(), m.b.data(), 2, -4));
  EXPECT_SAME_ERROR(cpu(m.a.data(), m.b.data(), 3, 7), gpu(m.a.data(), m.b.data(), 3, 7));
  EXPECT_SAME_ERROR(cpu(m.a.data(), m.b.data(), 0, 5), gpu(m.a.data(), m.b.data(), 0, 5));
  EXPECT_SAME_ERROR(cpu(nullptr, m.b.data(), 2, 4), gpu(nullptr, m.b.data(), 2, 4));
  EXPECT_SAME_ERROR(cpu(m.a.data(), nullptr, 2, 4), gpu(m.a.data(), nullptr, 2, 4));
}

TYPED_TEST(CudaHostChecks, SoftmaxWithLoss) {
  using T = TypeParam;
  Buffers<T> m(64);
  std::vector<int32_t> labels(16, 1);
  T out{};
  xk::SoftmaxWithLossOptions o;
  auto cpu = [&](const T* s, const int32_t* l, int64_t a, int64_t c, int64_t b, T* diff, T* prob) {
    return xk::softmax_with_loss(s, l, a, c, b, diff, prob, o);
  };
  auto gpu = [&](const T* s, const int32_t* l, int64_t a, int64_t c, int64_t b, T* diff, T* prob) {
    xc::softmax_with_loss(s, l, a, c, b, diff, prob, &out, o, kNoLaunch);
  };
  const T* s = m.a.data();
  const int32_t* l = labels.data();
  T* diff = m.c.data();
  T* prob = m.d.data();
  EXPECT_SAME_ERROR(cpu(s, l, -1, 4, 1, diff, prob), gpu(s, l, -1, 4, 1, diff, prob));
  EXPECT_SAME_ERROR(cpu(s, l, 2, -4, 1, diff, prob), gpu(s, l, 2, -4, 1, diff, prob));
  EXPECT_SAME_ERROR(cpu(s, l, 2, 4, -1, diff, prob), gpu(s, l, 2, 4, -1, diff, prob));
  EXPECT_SAME_ERROR(cpu(s, l, kBig, 4, kBig, diff, prob), gpu(s, l, kBig, 4, kBig, diff, prob));
  EXPECT_SAME_ERROR(cpu(s, l, kBig, kBig, 1 << 20, diff, prob),
                    gpu(s, l, kBig, kBig, 1 << 20, diff, prob));
  EXPECT_SAME_ERROR(cpu(nullptr, l, 2, 4, 1, diff, prob), gpu(nullptr, l, 2, 4, 1, diff, prob));
  EXPECT_SAME_ERROR(cpu(s, nullptr, 2, 4, 1, diff, prob), gpu(s, nullptr, 2, 4, 1, diff, prob));
  EXPECT_SAME_ERROR(cpu(s, l, 2, 4, 1, diff, m.a.data()), gpu(s, l, 2, 4, 1, diff, m.a.data()));
  EXPECT_SAME_ERROR(cpu(s, l, 2, 4, 1, diff, diff), gpu(s, l, 2, 4, 1, diff, diff));
}

TYPED_TEST(CudaHostChecks, BinaryCrossEntropy) {
  using T = TypeParam;
  Buffers<T> m(64);
  T red{};
  for (const bool logits : {false, true}) {
    SCOPED_TRACE(logits ? "with_logits" : "probabilities");
    auto cpu = [&](const T* x, const T* t, int64_t n, Broadcast<T> w, Broadcast<T> pw, T* grad,
                   xk::BinaryCrossEntropyOptions o) {
      return logits ? xk::binary_cross_entropy_with_logits(x, t, n, w, pw, m.c.data(), grad, o)
                    : xk::binary_cross_entropy(x, t, n, w, m.c.data(), grad, o);
    };
    auto gpu = [&](const T* x, const T* t, int64_t n, Broadcast<T> w, Broadcast<T> pw, T* grad,
                   xk::BinaryCrossEntropyOptions o) {
      if (logits) {
        xc::binary_cross_entropy_with_logits(x, t, n, w, pw, m.c.data(), grad, &red, o, kNoLaunch);
      } else {
        xc::binary_cross_entropy(x, t, n, w, m.c.data(), grad, &red, o, kNoLaunch);
      }
    };
    const T* x = m.a.data();
    const T* t = m.b.data();
    T* g = m.d.data();
    xk::BinaryCrossEntropyOptions o, bad;
    bad.reduction = static_cast<xk::Reduction>(7);
    const Broadcast<T> none{}, zero_stride{m.w.data(), 0, 4}, zero_period{m.w.data(), 1, 0};
    EXPECT_SAME_ERROR(cpu(x, t, 8, none, none, g, bad), gpu(x, t, 8, none, none, g, bad));
    EXPECT_SAME_ERROR(cpu(x, t, -8, none, none, g, o), gpu(x, t, -8, none, none, g, o));
    EXPECT_SAME_ERROR(cpu(nullptr, t, 8, none, none, g, o), gpu(nullptr, t, 8, none, none, g, o));
    EXPECT_SAME_ERROR(cpu(x, nullptr, 8, none, none, g, o), gpu(x, nullptr, 8, none, none, g, o));
    EXPECT_SAME_ERROR(cpu(x, t, 8, zero_stride, none, g, o),
                      gpu(x, t, 8, zero_stride, none, g, o));
    EXPECT_SAME_ERROR(cpu(x, t, 8, zero_period, none, g, o),
                      gpu(x, t, 8, zero_period, none, g, o));
    EXPECT_SAME_ERROR(cpu(x, t, 8, none, none, m.a.data() + 1, o),
                      gpu(x, t, 8, none, none, m.a.data() + 1, o));
    if (logits) {
      EXPECT_SAME_ERROR(cpu(x, t, 8, none, zero_stride, g, o),
                        gpu(x, t, 8, none, zero_stride, g, o));
    }
  }
}

template <typename T, typename L>
void class_index_checks() {
  Buffers<T> m(64);
  std::vector<L> labels(16, L(1));
  T red{};
  for (const bool nll : {false, true}) {
    SCOPED_TRACE(nll ? "nll_loss" : "cross_entropy");
    auto cpu = [&](const T* x, const L* y, int64_t a, int64_t c, int64_t b, T* grad,
                   xk::Reduction r, double eps) {
      if (nll) {
        xk::NllLossOptions o;
        o.reduction = r;
        return xk::nll_loss(x, y, a, c, b, m.w.data(), m.c.data(), grad, o);
      }
      xk::CrossEntropyOptions o;
      o.reduction = r;
      o.label_smoothing = eps;
      return xk::cross_entropy(x, y, a, c, b, m.w.data(), m.c.data(), grad, o);
    };
    auto gpu = [&](const T* x, const L* y, int64_t a, int64_t c, int64_t b, T* grad,
                   xk::Reduction r, double eps) {
      if (nll) {
        xk::NllLossOptions o;
        o.reduction = r;
        xc::nll_loss(x, y, a, c, b, m.w.data(), m.c.data(), grad, &red, o, kNoLaunch);
        return;
      }
      xk::CrossEntropyOptions o;
      o.reduction = r;
      o.label_smoothing = eps;
      xc::cross_entropy(x, y, a, c, b, m.w.data(), m.c.data(), grad, &red, o, kNoLaunch);
    };
    const T* x = m.a.data();
    const L* y = labels.data();
    T* g = m.d.data();
    const auto mean = xk::Reduction::mean;
    const auto bad = static_cast<xk::Reduction>(-1);
    const double nan = std::nan("");
    EXPECT_SAME_ERROR(cpu(x, y, 2, 4, 1, g, bad, 0.0), gpu(x, y, 2, 4, 1, g, bad, 0.0));
    if (!nll) {
      EXPECT_SAME_ERROR(cpu(x, y, 2, 4, 1, g, mean, 1.5), gpu(x, y, 2, 4, 1, g, mean, 1.5));
      EXPECT_SAME_ERROR(cpu(x, y, 2, 4, 1, g, mean, nan), gpu(x, y, 2, 4, 1, g, mean, nan));
      EXPECT_SAME_ERROR(cpu(x, y, 2, 4, 1, g, bad, 2.0), gpu(x, y, 2, 4, 1, g, bad, 2.0));
    }
    EXPECT_SAME_ERROR(cpu(x, y, -2, 4, 1, g, mean, 0.0), gpu(x, y, -2, 4, 1, g, mean, 0.0));
    EXPECT_SAME_ERROR(cpu(x, y, 2, -4, 1, g, mean, 0.0), gpu(x, y, 2, -4, 1, g, mean, 0.0));
    EXPECT_SAME_ERROR(cpu(x, y, 2, 4, -1, g, mean, 0.0), gpu(x, y, 2, 4, -1, g, mean, 0.0));
    EXPECT_SAME_ERROR(cpu(x, y, kBig, 4, kBig, g, mean, 0.0),
                      gpu(x, y, kBig, 4, kBig, g, mean, 0.0));
    EXPECT_SAME_ERROR(cpu(x, y, kBig, kBig, 1 << 20, g, mean, 0.0),
                      gpu(x, y, kBig, kBig, 1 << 20, g, mean, 0.0));
    EXPECT_SAME_ERROR(cpu(nullptr, y, 2, 4, 1, g, mean, 0.0),
                      gpu(nullptr, y, 2, 4, 1, g, mean, 0.0));
    EXPECT_SAME_ERROR(cpu(x, nullptr, 2, 4, 1, g, mean, 0.0),
                      gpu(x, nullptr, 2, 4, 1, g, mean, 0.0));
    EXPECT_SAME_ERROR(cpu(x, y, 2, 4, 1, m.a.data() + 3, mean, 0.0),
                      gpu(x, y, 2, 4, 1, m.a.data() + 3, mean, 0.0));
  }
}

TYPED_TEST(CudaHostChecks, CrossEntropyAndNllLoss) {
  class_index_checks<TypeParam, int64_t>();
  class_index_checks<TypeParam, uint8_t>();
}

TYPED_TEST(CudaHostChecks, CrossEntropyProbabilities) {
  using T = TypeParam;
  Buffers<T> m(64);
  T red{};
  auto cpu = [&](const T* x, const T* q, int64_t a, int64_t c, int64_t b, T* grad,
                 xk::Reduction r, double eps) {
    xk::CrossEntropyOptions o;
    o.reduction = r;
    o.label_smoothing = eps;
    return xk::cross_entropy(x, q, a, c, b, m.w.data(), m.c.data(), grad, o);
  };
  auto gpu = [&](const T* x, const T* q, int64_t a, int64_t c, int64_t b, T* grad,
                 xk::Reduction r, double eps) {
    xk::CrossEntropyOptions o;
    o.reduction = r;
    o.label_smoothing = eps;
    xc::cross_entropy(x, q, a, c, b, m.w.data(), m.c.data(), grad, &red, o, kNoLaunch);
  };
  const T* x = m.a.data();
  const T* q = m.b.data();
  T* g = m.d.data();
  const auto mean = xk::Reduction::mean;
  const auto bad = static_cast<xk::Reduction>(3);
  EXPECT_SAME_ERROR(cpu(x, q, 2, 4, 1, g, bad, 2.0), gpu(x, q, 2, 4, 1, g, bad, 2.0));
  EXPECT_SAME_ERROR(cpu(x, q, 2, 4, 1, g, mean, 2.0), gpu(x, q, 2, 4, 1, g, mean, 2.0));
  EXPECT_SAME_ERROR(cpu(x, q, 2, -4, 1, g, mean, 0.0), gpu(x, q, 2, -4, 1, g, mean, 0.0));
  EXPECT_SAME_ERROR(cpu(x, q, kBig, 4, kBig, g, mean, 0.0),
                    gpu(x, q, kBig, 4, kBig, g, mean, 0.0));
  EXPECT_SAME_ERROR(cpu(nullptr, q, 2, 4, 1, g, mean, 0.0),
                    gpu(nullptr, q, 2, 4, 1, g, mean, 0.0));
  EXPECT_SAME_ERROR(cpu(x, nullptr, 2, 4, 1, g, mean, 0.0),
                    gpu(x, nullptr, 2, 4, 1, g, mean, 0.0));
  EXPECT_SAME_ERROR(cpu(x, q, 2, 4, 1, m.a.data() + 1, mean, 0.0),
                    gpu(x, q, 2, 4, 1, m.a.data() + 1, mean, 0.0));
}

TYPED_TEST(CudaHostChecks, SoftmaxAndLogSoftmax) {
  using T = TypeParam;
  Buffers<T> m(64);
  for (const bool log : {false, true}) {
    auto cpu = [&](const T* x, int64_t a, int64_t c, int64_t b, T* out) {
      if (log) return xk::log_softmax(x, a, c, b, out);
      return xk::softmax(x, a, c, b, out);
    };
    auto gpu = [&](const T* x, int64_t a, int64_t c, int64_t b, T* out) {
      if (log) return xc::log_softmax(x, a, c, b, out, kNoLaunch);
      return xc::softmax(x, a, c, b, out, kNoLaunch);
    };
    const T* x = m.a.data();
    EXPECT_SAME_ERROR(cpu(x, -1, 4, 2, m.c.data()), gpu(x, -1, 4, 2, m.c.data()));
    EXPECT_SAME_ERROR(cpu(x, kBig, 4, kBig, m.c.data()), gpu(x, kBig, 4, kBig, m.c.data()));
    EXPECT_SAME_ERROR(cpu(nullptr, 2, 4, 2, m.c.data()), gpu(nullptr, 2, 4, 2, m.c.data()));
    EXPECT_SAME_ERROR(cpu(x, 2, 4, 2, nullptr), gpu(x, 2, 4, 2, nullptr));
    EXPECT_SAME_ERROR(cpu(x, 2, 4, 2, m.a.data()), gpu(x, 2, 4, 2, m.a.data()));
    EXPECT_SAME_ERROR(cpu(x, 2, 4, 2, m.a.data() + 5), gpu(x, 2, 4, 2, m.a.data() + 5));
  }
}

TYPED_TEST(CudaHostChecks, TensorFlow) {
  using T = TypeParam;
  Buffers<T> m(64);
  const T* t = m.b.data();
  const T* x = m.a.data();
  T* loss = m.c.data();
  // sigmoid_cross_entropy_with_logits
  auto cpu_s = [&](const T* lab, const T* lo, int64_t n, T* g) {
    xk::sigmoid_cross_entropy_with_logits(lab, lo, n, loss, g);
  };
  auto gpu_s = [&](const T* lab, const T* lo, int64_t n, T* g) {
    xc::sigmoid_cross_entropy_with_logits(lab, lo, n, loss, g, kNoLaunch);
  };
  EXPECT_SAME_ERROR(cpu_s(t, x, -3, nullptr), gpu_s(t, x, -3, nullptr));
  EXPECT_SAME_ERROR(cpu_s(nullptr, x, 3, nullptr), gpu_s(nullptr, x, 3, nullptr));
  EXPECT_SAME_ERROR(cpu_s(t, nullptr, 3, nullptr), gpu_s(t, nullptr, 3, nullptr));
  EXPECT_SAME_ERROR(cpu_s(t, x, 8, m.a.data() + 2), gpu_s(t, x, 8, m.a.data() + 2));
  // softmax_cross_entropy_with_logits
  auto cpu_d = [&](const T* lab, const T* lo, int64_t a, int64_t c, int64_t b, T* g) {
    xk::softmax_cross_entropy_with_logits(lab, lo, a, c, b, loss, g);
  };
  auto gpu_d = [&](const T* lab, const T* lo, int64_t a, int64_t c, int64_t b, T* g) {
    xc::softmax_cross_entropy_with_logits(lab, lo, a, c, b, loss, g, kNoLaunch);
  };
  EXPECT_SAME_ERROR(cpu_d(t, x, 2, -4, 1, nullptr), gpu_d(t, x, 2, -4, 1, nullptr));
  EXPECT_SAME_ERROR(cpu_d(t, x, kBig, 4, kBig, nullptr), gpu_d(t, x, kBig, 4, kBig, nullptr));
  EXPECT_SAME_ERROR(cpu_d(t, x, kBig, kBig, kBig, nullptr),
                    gpu_d(t, x, kBig, kBig, kBig, nullptr));
  EXPECT_SAME_ERROR(cpu_d(nullptr, x, 2, 4, 1, nullptr), gpu_d(nullptr, x, 2, 4, 1, nullptr));
  EXPECT_SAME_ERROR(cpu_d(t, nullptr, 2, 4, 1, nullptr), gpu_d(t, nullptr, 2, 4, 1, nullptr));
  EXPECT_SAME_ERROR(cpu_d(t, x, 2, 4, 1, m.a.data() + 1), gpu_d(t, x, 2, 4, 1, m.a.data() + 1));
  // sparse_softmax_cross_entropy_with_logits
  std::vector<int32_t> labels(8, 2);
  auto cpu_p = [&](const int32_t* lab, const T* lo, int64_t r, int64_t c, T* g) {
    xk::sparse_softmax_cross_entropy_with_logits(lab, lo, r, c, loss, g);
  };
  auto gpu_p = [&](const int32_t* lab, const T* lo, int64_t r, int64_t c, T* g) {
    xc::sparse_softmax_cross_entropy_with_logits(lab, lo, r, c, loss, g, kNoLaunch);
  };
  const int32_t* y = labels.data();
  EXPECT_SAME_ERROR(cpu_p(y, x, -2, 4, nullptr), gpu_p(y, x, -2, 4, nullptr));
  EXPECT_SAME_ERROR(cpu_p(y, x, 2, -4, nullptr), gpu_p(y, x, 2, -4, nullptr));
  EXPECT_SAME_ERROR(cpu_p(y, x, kBig, kBig, nullptr), gpu_p(y, x, kBig, kBig, nullptr));
  EXPECT_SAME_ERROR(cpu_p(nullptr, x, 2, 4, nullptr), gpu_p(nullptr, x, 2, 4, nullptr));
  EXPECT_SAME_ERROR(cpu_p(y, nullptr, 2, 4, nullptr), gpu_p(y, nullptr, 2, 4, nullptr));
  EXPECT_SAME_ERROR(cpu_p(y, x, 2, 4, m.a.data() + 1), gpu_p(y, x, 2, 4, m.a.data() + 1));
  EXPECT_SAME_ERROR(cpu_p(y, x, 3, 0, nullptr), gpu_p(y, x, 3, 0, nullptr));
}

/// float16 and bfloat16 calls check as the float32 CPU function does (the messages do not depend
/// on the value type).
template <typename S>
void narrow_checks() {
  std::vector<S> a(64), b(64), c(64), d(64);
  std::vector<float> fa(64), fb(64), fc(64), fd(64);
  std::vector<int64_t> y(8, 1);
  S red{};
  xk::CrossEntropyOptions ce;
  ce.label_smoothing = 3.0;
  EXPECT_SAME_ERROR(xk::cross_entropy(fa.data(), y.data(), 2, 4, 1, static_cast<const float*>(nullptr), fc.data(),
                                      fd.data(), ce),
                    xc::cross_entropy(a.data(), y.data(), 2, 4, 1, static_cast<const S*>(nullptr), c.data(), d.data(),
                                      &red, ce, kNoLaunch));
  EXPECT_SAME_ERROR(xk::softmax(fa.data(), 2, 4, 1, fa.data() + 1),
                    xc::softmax(a.data(), 2, 4, 1, a.data() + 1, kNoLaunch));
  xk::BinaryCrossEntropyOptions bo;
  EXPECT_SAME_ERROR(
      xk::binary_cross_entropy_with_logits(fa.data(), fb.data(), 8,
                                           Broadcast<float>{fb.data(), 0, 1}, Broadcast<float>{},
                                           static_cast<float*>(nullptr), static_cast<float*>(nullptr), bo),
      xc::binary_cross_entropy_with_logits(a.data(), b.data(), 8, Broadcast<S>{b.data(), 0, 1},
                                           Broadcast<S>{}, static_cast<S*>(nullptr),
                                           static_cast<S*>(nullptr), &red, bo, kNoLaunch));
  EXPECT_SAME_ERROR(xk::sigmoid_cross_entropy_loss(fa.data(), fb.data(), 3, 8, fc.data(), {}),
                    xc::sigmoid_cross_entropy_loss(a.data(), b.data(), 3, 8, c.data(), &red, {},
                                                   kNoLaunch));
}

TEST(CudaHostChecks, NarrowTypes) {
  narrow_checks<half>();
  narrow_checks<bfloat16>();
}

// ---- valid calls without a device -------------------------------------------------------------

template <typename T>
std::vector<T> poison(std::size_t n) {
  std::vector<T> v(n);
  std::memset(v.data(), 0x7d, n * sizeof(T));
  return v;
}

template <typename T>
bool poisoned(const std::vector<T>& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  for (std::size_t i = 0; i < v.size() * sizeof(T); ++i) {
    if (p[i] != 0x7d) return false;
  }
  return true;
}

template <typename T>
void unavailable_calls() {
  constexpr int64_t A = 3, C = 5, B = 2, N = A * C * B;
  std::vector<T> x(N), t(N), w(C);
  std::vector<int64_t> y(A * B, 1);
  std::vector<float> yf(A * B, 1.0f);
  auto out1 = poison<T>(N), out2 = poison<T>(N), out3 = poison<T>(N), red = poison<T>(1);
  // A workspace that is not even device memory: nothing may read or write it.
  auto ws = poison<unsigned char>(xc::kWorkspaceBytes + 256);
  void* aligned = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
  const xc::Launch launch{aligned, nullptr};
  auto expect_unavailable = [&](const char* name, auto&& call) {
    const Outcome o = outcome(call);
    EXPECT_EQ(o.kind, "unavailable") << name << ": " << o.what;
    EXPECT_EQ(o.what.rfind(std::string(name) + ": ", 0), 0u) << o.what;
  };
  expect_unavailable("sigmoid_cross_entropy_loss", [&] {
    xc::sigmoid_cross_entropy_loss(x.data(), t.data(), A, N, out1.data(), red.data(), {}, launch);
  });
  expect_unavailable("softmax_with_loss", [&] {
    xc::softmax_with_loss(x.data(), yf.data(), A, C, B, out1.data(), out2.data(), red.data(), {},
                          launch);
  });
  expect_unavailable("binary_cross_entropy", [&] {
    xc::binary_cross_entropy(x.data(), t.data(), N, Broadcast<T>{w.data(), 1, C}, out1.data(),
                             out2.data(), red.data(), {}, launch);
  });
  expect_unavailable("binary_cross_entropy_with_logits", [&] {
    xc::binary_cross_entropy_with_logits(x.data(), t.data(), N, Broadcast<T>{w.data(), 1, C},
                                         Broadcast<T>{w.data(), B, C}, out1.data(), out2.data(),
                                         red.data(), {}, launch);
  });
  expect_unavailable("cross_entropy", [&] {
    xc::cross_entropy(x.data(), y.data(), A, C, B, w.data(), out1.data(), out2.data(),
                      red.data(), {}, launch);
  });
  expect_unavailable("cross_entropy", [&] {
    xc::cross_entropy(x.data(), t.data(), A, C, B, w.data(), out1.data(), out2.data(),
                      red.data(), {}, launch);
  });
  expect_unavailable("nll_loss", [&] {
    xc::nll_loss(x.data(), y.data(), A, C, B, w.data(), out1.data(), out2.data(), red.data(), {},
                 launch);
  });
  expect_unavailable("log_softmax",
                     [&] { xc::log_softmax(x.data(), A, C, B, out3.data(), launch); });
  expect_unavailable("softmax", [&] { xc::softmax(x.data(), A, C, B, out3.data(), launch); });
  expect_unavailable("sigmoid_cross_entropy_with_logits", [&] {
    xc::sigmoid_cross_entropy_with_logits(t.data(), x.data(), N, out1.data(), out2.data(),
                                          launch);
  });
  expect_unavailable("softmax_cross_entropy_with_logits", [&] {
    xc::softmax_cross_entropy_with_logits(t.data(), x.data(), A, C, B, out1.data(), out2.data(),
                                          launch);
  });
  expect_unavailable("sparse_softmax_cross_entropy_with_logits", [&] {
    xc::sparse_softmax_cross_entropy_with_logits(y.data(), x.data(), A * B, C, out1.data(),
                                                 out2.data(), launch);
  });
  // Empty problems are calls too.
  expect_unavailable("cross_entropy", [&] {
    xc::cross_entropy(x.data(), y.data(), 0, C, B, w.data(), out1.data(), out2.data(),
                      red.data(), {}, xc::Launch{});
  });
  EXPECT_TRUE(poisoned(out1) && poisoned(out2) && poisoned(out3) && poisoned(red));
  EXPECT_TRUE(poisoned(ws));
}

TEST(CudaHostUnavailable, ValidCallsThrowAndTouchNothing) {
  if (xk::cuda_available()) GTEST_SKIP() << "a CUDA device is usable";
  unavailable_calls<float>();
  unavailable_calls<double>();
  unavailable_calls<half>();
  unavailable_calls<bfloat16>();
}

TEST(CudaHostUnavailable, HelpersThrow) {
  if (xk::cuda_available()) GTEST_SKIP() << "a CUDA device is usable";
  int host = 0;
  const xc::Launch launch{};
  EXPECT_EQ(outcome([&] { (void)xc::status(launch); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { xc::check(launch); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { (void)xc::allocate(256, nullptr); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { (void)xc::device_of(&host); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { (void)xc::current_device(); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { xc::set_device(0); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { xc::stream_wait(nullptr, nullptr); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { xc::synchronize(nullptr); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { xc::copy_to_host(&host, &host, 4, nullptr); }).kind, "unavailable");
  EXPECT_EQ(outcome([&] { (void)xc::record_event(nullptr); }).kind, "unavailable");
  xc::release(nullptr, nullptr);  // never throws
  xc::destroy_event(nullptr);     // never throws
  // The reason the kernels cannot run is a sentence, never empty without a device.
  const std::string problem = xc::kernel_image_problem();
  EXPECT_FALSE(problem.empty());
  EXPECT_NE(problem.find(xk::cuda_built() ? "no usable CUDA device" : "no CUDA kernels"),
            std::string::npos) << problem;
  const Outcome o = outcome([&] { xc::softmax<float>(nullptr, 0, 0, 0, nullptr, launch); });
  EXPECT_EQ(o.kind, "unavailable");
  if (xk::cuda_built()) {
    EXPECT_NE(o.what.find("no usable CUDA device"), std::string::npos) << o.what;
  } else {
    EXPECT_NE(o.what.find("no CUDA kernels"), std::string::npos) << o.what;
  }
}

TEST(CudaHostWorkspace, NullOrMisaligned) {
  unsigned char buffer[512];
  const auto base = reinterpret_cast<uintptr_t>(buffer);
  void* aligned = buffer + (256 - base % 256) % 256;
  EXPECT_NO_THROW(xd::check_workspace(aligned, "f"));
  const Outcome null = outcome([&] { xd::check_workspace(nullptr, "softmax"); });
  EXPECT_EQ(null.kind, "value");
  EXPECT_EQ(null.what,
            "softmax: expected a workspace of 32768 bytes of device memory (Launch::workspace), "
            "got a null pointer");
  const Outcome odd =
      outcome([&] { xd::check_workspace(static_cast<unsigned char*>(aligned) + 8, "nll_loss"); });
  EXPECT_EQ(odd.kind, "value");
  EXPECT_EQ(odd.what,
            "nll_loss: expected a workspace aligned to 256 bytes (as cudaMalloc returns), got an "
            "address 8 bytes past a multiple of 256");
  // With a device, the entry points refuse such a workspace before enqueuing anything (host
  // pointers: a launch would fault).
  if (xk::cuda_available()) {
    std::vector<float> x(8), out(8);
    const Outcome o = outcome([&] {
      xc::softmax(x.data(), 2, 4, 1, out.data(),
                  xc::Launch{static_cast<unsigned char*>(aligned) + 16, nullptr});
    });
    EXPECT_EQ(o.kind, "value") << o.what;
  }
}

// ---- the plans --------------------------------------------------------------------------------

TEST(CudaHostPlans, CaffeSigmoid) {
  std::vector<float> s(12), t(12), diff(12);
  float loss = 0;
  xk::SigmoidCrossEntropyLossOptions o;
  o.loss_weight = 2.5;
  auto p = xd::plan_sigmoid_cross_entropy_loss(s.data(), t.data(), 3, 12, diff.data(), &loss, o);
  EXPECT_EQ(p.op, xd::ElementOp::logits);
  EXPECT_EQ(p.storage, xd::Storage::f32);
  EXPECT_EQ(p.x, s.data());
  EXPECT_EQ(p.t, t.data());
  EXPECT_EQ(p.n, 12);
  EXPECT_EQ(p.diff, diff.data());
  EXPECT_EQ(p.loss, nullptr);
  EXPECT_EQ(p.reduced, &loss);
  EXPECT_FALSE(p.has_ignore);
  EXPECT_EQ(p.divide, xd::Divide::constant);
  EXPECT_EQ(p.divisor, 3.0);  // batch_size
  EXPECT_EQ(p.grad_output, 2.5);
  EXPECT_EQ(p.weight.data, nullptr);
  o.normalization = xk::Normalization::full;
  EXPECT_EQ(xd::plan_sigmoid_cross_entropy_loss(s.data(), t.data(), 3, 12, diff.data(), &loss, o)
                .divisor,
            12.0);
  o.normalization = xk::Normalization::valid;
  p = xd::plan_sigmoid_cross_entropy_loss(s.data(), t.data(), 3, 12, diff.data(), &loss, o);
  EXPECT_EQ(p.divide, xd::Divide::constant);
  EXPECT_EQ(p.divisor, 12.0);
  o.ignore_label = -1;
  p = xd::plan_sigmoid_cross_entropy_loss(s.data(), t.data(), 3, 12, diff.data(), &loss, o);
  EXPECT_EQ(p.divide, xd::Divide::caffe_valid);
  EXPECT_TRUE(p.has_ignore);
  EXPECT_EQ(p.ignore, -1);
  o.normalization = xk::Normalization::none;
  p = xd::plan_sigmoid_cross_entropy_loss(s.data(), t.data(), 3, 12, diff.data(), &loss, o);
  EXPECT_EQ(p.divide, xd::Divide::constant);
  EXPECT_EQ(p.divisor, 1.0);
  o.normalization = xk::Normalization::batch_size;
  p = xd::plan_sigmoid_cross_entropy_loss(s.data(), t.data(), 0, 0, diff.data(), &loss, o);
  EXPECT_EQ(p.divisor, 1.0);  // max(1, 0)
}

// A diff that partially overlaps the scores would race on the device (one row's gradient written
// over another row's scores while it is read): refused before anything is enqueued; the scores
// themselves (in place) are accepted.
TEST(CudaHostPlans, CaffeDiffPartiallyOverlappingScoresIsRefused) {
  std::mt19937 gen(7);
  const int64_t outer = 2 + static_cast<int64_t>(gen() % 4), channels = 3 + gen() % 5;
  const int64_t count = outer * channels;
  std::vector<float> s(2 * count), t(count), labels(outer);
  float loss = 0;
  const int64_t shift = 1 + static_cast<int64_t>(gen() % (count - 1));
  xk::SigmoidCrossEntropyLossOptions so;
  const Outcome a = outcome([&] {
    (void)xd::plan_sigmoid_cross_entropy_loss(s.data(), t.data(), outer, count, s.data() + shift,
                                              &loss, so);
  });
  EXPECT_EQ(a.kind, "value");
  EXPECT_NE(a.what.find("diff"), std::string::npos) << a.what;
  EXPECT_NO_THROW((void)xd::plan_sigmoid_cross_entropy_loss(s.data(), t.data(), outer, count,
                                                            s.data(), &loss, so));
  xk::SoftmaxWithLossOptions mo;
  const Outcome b = outcome([&] {
    (void)xd::plan_softmax_with_loss(s.data(), labels.data(), outer, channels, int64_t{1},
                                     s.data() + shift, static_cast<float*>(nullptr), &loss, mo);
  });
  EXPECT_EQ(b.kind, "value");
  EXPECT_NE(b.what.find("diff"), std::string::npos) << b.what;
  EXPECT_NO_THROW((void)xd::plan_softmax_with_loss(s.data(), labels.data(), outer, channels,
                                                   int64_t{1}, s.data(),
                                                   static_cast<float*>(nullptr), &loss, mo));
}

// binary_cross_entropy reads a bad target again after the gradient is written (for its message):
// a grad overlapping the target is refused; with logits nothing is read again, so it is allowed.
TEST(CudaHostPlans, BinaryGradOverlappingTargetIsRefused) {
  std::vector<double> x(8), t(16);
  xk::BinaryCrossEntropyOptions o;
  const Outcome a = outcome([&] {
    (void)xd::plan_binary_cross_entropy<double>(x.data(), t.data(), 8, Broadcast<double>{}, nullptr,
                                        t.data() + 3, nullptr, o);
  });
  EXPECT_EQ(a.kind, "value");
  EXPECT_NE(a.what.find("grad"), std::string::npos) << a.what;
  EXPECT_NE(a.what.find("target"), std::string::npos) << a.what;
  EXPECT_NO_THROW((void)xd::plan_binary_cross_entropy<double>(x.data(), t.data(), 8,
                                                              Broadcast<double>{},
                                                      nullptr, x.data(), nullptr, o));
  EXPECT_NO_THROW((void)xd::plan_binary_cross_entropy_with_logits<double>(
      x.data(), t.data(), 8, Broadcast<double>{}, Broadcast<double>{}, nullptr, t.data(),
      nullptr, o));
}

TEST(CudaHostPlans, CaffeSoftmax) {
  std::vector<half> s(24), diff(24), prob(24);
  std::vector<double> labels(6);
  half loss{};
  xk::SoftmaxWithLossOptions o;
  auto p = xd::plan_softmax_with_loss(s.data(), labels.data(), 2, 4, 3, diff.data(), prob.data(),
                                      &loss, o);
  EXPECT_EQ(p.op, xd::SoftmaxOp::xent);
  EXPECT_EQ(p.storage, xd::Storage::f16);
  EXPECT_EQ(p.label_kind, xd::LabelKind::f64);
  EXPECT_EQ(p.label_argument, xd::Argument::labels);
  EXPECT_EQ(p.outer, 2);
  EXPECT_EQ(p.channels, 4);
  EXPECT_EQ(p.inner, 3);
  EXPECT_EQ(p.divide, xd::Divide::constant);  // valid, nothing ignored: every position
  EXPECT_EQ(p.divisor, 6.0);
  EXPECT_EQ(p.cap, -std::log(static_cast<double>(FLT_MIN)));
  EXPECT_EQ(p.smoothing, 0.0);
  EXPECT_EQ(p.prob, prob.data());
  EXPECT_EQ(p.diff, diff.data());
  EXPECT_EQ(p.loss, nullptr);
  EXPECT_EQ(p.reduced, &loss);
  EXPECT_EQ(p.class_weight, nullptr);
  o.ignore_label = 255;
  o.loss_weight = 0.5;
  p = xd::plan_softmax_with_loss(s.data(), labels.data(), 2, 4, 3, diff.data(), prob.data(),
                                 &loss, o);
  EXPECT_EQ(p.divide, xd::Divide::caffe_valid);
  EXPECT_TRUE(p.has_ignore);
  EXPECT_EQ(p.ignore, 255);
  EXPECT_EQ(p.grad_output, 0.5);
  for (auto [mode, z] : {std::pair{xk::Normalization::full, 6.0},
                         std::pair{xk::Normalization::batch_size, 2.0},
                         std::pair{xk::Normalization::none, 1.0}}) {
    o.normalization = mode;
    p = xd::plan_softmax_with_loss(s.data(), labels.data(), 2, 4, 3, diff.data(), prob.data(),
                                   &loss, o);
    EXPECT_EQ(p.divide, xd::Divide::constant);
    EXPECT_EQ(p.divisor, z);
  }
}

TEST(CudaHostPlans, PyTorchClassIndex) {
  std::vector<bfloat16> x(40), w(5), loss(8), grad(40);
  std::vector<uint16_t> y(8);
  bfloat16 red{};
  xk::CrossEntropyOptions o;
  o.ignore_index = 7;
  o.grad_output = 3.0;
  auto p = xd::plan_cross_entropy(x.data(), y.data(), 2, 5, 4, w.data(), loss.data(), grad.data(),
                                  &red, o);
  EXPECT_EQ(p.storage, xd::Storage::bf16);
  EXPECT_EQ(p.label_kind, xd::LabelKind::u16);
  EXPECT_EQ(p.label_argument, xd::Argument::target);
  EXPECT_EQ(p.op, xd::SoftmaxOp::xent);
  EXPECT_TRUE(p.has_ignore);
  EXPECT_EQ(p.ignore, 7);
  EXPECT_EQ(p.class_weight, w.data());
  EXPECT_EQ(p.divide, xd::Divide::weight_sum);
  EXPECT_FALSE(p.split_terms);
  EXPECT_EQ(p.grad_output, 3.0);
  EXPECT_TRUE(std::isinf(p.cap) && p.cap > 0);
  EXPECT_EQ(p.loss, loss.data());
  EXPECT_EQ(p.diff, grad.data());
  EXPECT_EQ(p.reduced, &red);
  o.label_smoothing = 0.2;
  p = xd::plan_cross_entropy(x.data(), y.data(), 2, 5, 4, w.data(), loss.data(), grad.data(),
                             &red, o);
  EXPECT_EQ(p.smoothing, 0.2);
  EXPECT_TRUE(p.split_terms);  // the weighted smoothed mean divides its two terms
  p = xd::plan_cross_entropy(x.data(), y.data(), 2, 5, 4, static_cast<const bfloat16*>(nullptr),
                             loss.data(), grad.data(),
                             &red, o);
  EXPECT_EQ(p.divide, xd::Divide::weight_sum);  // every weight 1: the count (0 gives NaN)
  EXPECT_FALSE(p.split_terms);
  o.label_smoothing = -0.5;  // acts as 0
  o.reduction = xk::Reduction::sum;
  p = xd::plan_cross_entropy(x.data(), y.data(), 2, 5, 4, w.data(), loss.data(), grad.data(),
                             &red, o);
  EXPECT_EQ(p.smoothing, 0.0);
  EXPECT_EQ(p.divide, xd::Divide::constant);
  EXPECT_EQ(p.divisor, 1.0);
  xk::NllLossOptions n;
  n.reduction = xk::Reduction::none;
  auto q = xd::plan_nll_loss(x.data(), y.data(), 2, 5, 4, w.data(), loss.data(), grad.data(),
                             &red, n);
  EXPECT_EQ(q.op, xd::SoftmaxOp::nll);
  EXPECT_EQ(q.ignore, -100);
  EXPECT_EQ(q.divide, xd::Divide::constant);
  EXPECT_EQ(q.divisor, 1.0);
  n.reduction = xk::Reduction::mean;
  q = xd::plan_nll_loss(x.data(), y.data(), 2, 5, 4, w.data(), loss.data(), grad.data(), &red, n);
  EXPECT_EQ(q.divide, xd::Divide::weight_sum);
  EXPECT_FALSE(q.split_terms);
}

TEST(CudaHostPlans, PyTorchProbabilitiesAndSoftmax) {
  std::vector<double> x(24), q(24), w(4), loss(6), grad(24), out(24);
  double red = 0;
  xk::CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  auto p = xd::plan_cross_entropy_probabilities(x.data(), q.data(), 2, 4, 3, w.data(),
                                                loss.data(), grad.data(), &red, o);
  EXPECT_EQ(p.storage, xd::Storage::f64);
  EXPECT_EQ(p.soft, q.data());
  EXPECT_EQ(p.labels, nullptr);
  EXPECT_EQ(p.divide, xd::Divide::constant);
  EXPECT_EQ(p.divisor, 6.0);
  EXPECT_EQ(p.smoothing, 0.1);
  EXPECT_EQ(p.class_weight, w.data());
  // Rows over no classes with positions to score: ValueError (SPEC 1.5), as on the CPU.
  EXPECT_THROW(xd::plan_cross_entropy_probabilities(x.data(), q.data(), 2, 0, 3, w.data(),
                                                    loss.data(), grad.data(), &red, o),
               xentkit::value_error);
  auto s = xd::plan_softmax_output<double>(x.data(), 2, 4, 3, out.data(), nullptr);
  EXPECT_EQ(s.prob, out.data());
  EXPECT_EQ(s.log_prob, nullptr);
  EXPECT_EQ(s.diff, nullptr);
  EXPECT_EQ(s.loss, nullptr);
  EXPECT_EQ(s.reduced, nullptr);
  EXPECT_EQ(s.labels, nullptr);
  EXPECT_EQ(s.soft, nullptr);
  s = xd::plan_softmax_output<double>(x.data(), 2, 4, 3, nullptr, out.data());
  EXPECT_EQ(s.log_prob, out.data());
  EXPECT_EQ(s.prob, nullptr);
}

TEST(CudaHostPlans, PyTorchBinary) {
  std::vector<float> x(12), t(12), w(4), pw(3), loss(12), grad(12);
  float red = 0;
  xk::BinaryCrossEntropyOptions o;
  o.grad_output = 0.25;
  auto p = xd::plan_binary_cross_entropy_with_logits(
      x.data(), t.data(), 12, Broadcast<float>{w.data(), 3, 4}, Broadcast<float>{pw.data(), 1, 3},
      loss.data(), grad.data(), &red, o);
  EXPECT_EQ(p.op, xd::ElementOp::logits);
  EXPECT_EQ(p.weight.data, w.data());
  EXPECT_EQ(p.weight.stride, 3);
  EXPECT_EQ(p.weight.period, 4);
  EXPECT_EQ(p.pos_weight.data, pw.data());
  EXPECT_EQ(p.pos_weight.stride, 1);
  EXPECT_EQ(p.pos_weight.period, 3);
  EXPECT_EQ(p.divide, xd::Divide::constant);
  EXPECT_EQ(p.divisor, 12.0);
  EXPECT_EQ(p.grad_output, 0.25);
  EXPECT_FALSE(p.has_ignore);
  o.reduction = xk::Reduction::none;
  auto b = xd::plan_binary_cross_entropy(x.data(), t.data(), 12, Broadcast<float>{}, loss.data(),
                                         grad.data(), &red, o);
  EXPECT_EQ(b.op, xd::ElementOp::probabilities);
  EXPECT_EQ(b.divisor, 1.0);
  EXPECT_EQ(b.pos_weight.data, nullptr);
  EXPECT_EQ(b.reduced, &red);
}

TEST(CudaHostPlans, TensorFlow) {
  std::vector<float> x(12), t(12), loss(12), grad(12);
  std::vector<int8_t> y(3);
  auto e = xd::plan_sigmoid_cross_entropy_with_logits(t.data(), x.data(), 12, loss.data(),
                                                      grad.data());
  EXPECT_EQ(e.x, x.data());  // logits
  EXPECT_EQ(e.t, t.data());  // labels
  EXPECT_EQ(e.reduced, nullptr);
  EXPECT_EQ(e.divisor, 1.0);
  EXPECT_EQ(e.grad_output, 1.0);
  auto s = xd::plan_softmax_cross_entropy_with_logits(t.data(), x.data(), 1, 4, 3, loss.data(),
                                                      grad.data());
  EXPECT_EQ(s.soft, t.data());
  EXPECT_EQ(s.x, x.data());
  EXPECT_EQ(s.reduced, nullptr);
  EXPECT_TRUE(std::isinf(s.cap));
  auto p = xd::plan_sparse_softmax_cross_entropy_with_logits(y.data(), x.data(), 3, 4,
                                                             loss.data(), grad.data());
  EXPECT_EQ(p.labels, y.data());
  EXPECT_EQ(p.label_kind, xd::LabelKind::i8);
  EXPECT_EQ(p.label_argument, xd::Argument::labels);
  EXPECT_FALSE(p.has_ignore);
  EXPECT_EQ(p.outer, 3);
  EXPECT_EQ(p.inner, 1);
  EXPECT_EQ(p.reduced, nullptr);
  EXPECT_EQ(p.divisor, 1.0);
}

// ---- error records ----------------------------------------------------------------------------

/// The record the device writes for labels[index] (cuda/common.cuh record_label).
template <typename L>
std::unique_ptr<xd::Workspace> label_record(L raw, int64_t index, int64_t channels,
                                            xd::Argument argument, bool has_ignore,
                                            int64_t ignore) {
  auto w = std::make_unique<xd::Workspace>();
  w->error = ~static_cast<unsigned long long>(index);
  w->kind = xc::Status::bad_label;
  w->argument = static_cast<int32_t>(argument);
  w->label_kind = static_cast<int32_t>(xd::label_kind_of<L>());
  w->index = index;
  if constexpr (std::is_floating_point_v<L>) {
    const double d = static_cast<double>(raw);
    std::memcpy(&w->raw, &d, sizeof d);
    w->value = d;
  } else if constexpr (std::is_signed_v<L>) {
    w->raw = static_cast<uint64_t>(static_cast<int64_t>(raw));
    w->value = static_cast<double>(raw);
  } else {
    w->raw = static_cast<uint64_t>(raw);
    w->value = static_cast<double>(raw);
  }
  w->channels = channels;
  w->ignore = ignore;
  w->has_ignore = has_ignore ? 1 : 0;
  return w;
}

void expect_same_label_error(const std::function<void()>& cpu, const xd::Workspace& record) {
  std::string cpu_what, cpu_text;
  double cpu_value = 0;
  int64_t cpu_index = -7;
  try {
    cpu();
    ADD_FAILURE() << "the CPU call did not throw";
    return;
  } catch (const xk::label_error& e) {
    cpu_what = e.what();
    cpu_text = e.value_text();
    cpu_value = e.value();
    cpu_index = e.index();
  }
  try {
    xd::throw_recorded(record);
    ADD_FAILURE() << "no error thrown for " << cpu_what;
  } catch (const xk::label_error& e) {
    EXPECT_EQ(e.what(), cpu_what);
    EXPECT_EQ(e.value_text(), cpu_text);
    if (std::isnan(cpu_value)) {
      EXPECT_TRUE(std::isnan(e.value()));
    } else {
      EXPECT_EQ(e.value(), cpu_value);
    }
    EXPECT_EQ(e.index(), cpu_index);
  }
  const xc::Status s = xd::status_of(record);
  EXPECT_EQ(s.kind, xc::Status::bad_label);
  EXPECT_EQ(s.index, cpu_index);
}

template <typename L>
void label_records(std::mt19937& rng) {
  constexpr int64_t A = 3, C = 6, B = 4;
  std::vector<float> x(A * C * B, 0.5f), g(A * C * B);
  float* nf = nullptr;
  std::vector<L> y(A * B);
  std::uniform_int_distribution<int> cls(0, C - 1);
  std::uniform_int_distribution<int64_t> at(0, A * B - 1);
  std::vector<L> bad = {L(C), L(100)};
  if constexpr (std::is_signed_v<L> || std::is_floating_point_v<L>) bad.push_back(L(-3));
  if constexpr (std::is_floating_point_v<L>) {
    bad.push_back(L(6.75));
    bad.push_back(std::numeric_limits<L>::quiet_NaN());
    bad.push_back(std::numeric_limits<L>::infinity());
    bad.push_back(L(1e30));
    bad.push_back(L(-0.1) - L(6));
  } else {
    bad.push_back(std::numeric_limits<L>::max());
    bad.push_back(std::numeric_limits<L>::min() + (std::is_signed_v<L> ? 0 : C));
  }
  for (const L b : bad) {
    for (auto& v : y) v = L(cls(rng));
    const int64_t i = at(rng);
    y[i] = b;
    SCOPED_TRACE(xk::detail::label_text(b));
    // Caffe (any ignored label or none).
    xk::SoftmaxWithLossOptions so;
    expect_same_label_error(
        [&] { xk::softmax_with_loss(x.data(), y.data(), A, C, B, g.data(), nf, so); },
        *label_record(b, i, C, xd::Argument::labels, false, 0));
    so.ignore_label = 255;
    if (!(static_cast<double>(b) >= 255.0 && static_cast<double>(b) < 256.0)) {
      expect_same_label_error(
          [&] { xk::softmax_with_loss(x.data(), y.data(), A, C, B, g.data(), nf, so); },
          *label_record(b, i, C, xd::Argument::labels, true, 255));
    }
    if constexpr (std::is_integral_v<L>) {
      // PyTorch (always an ignored index) and TensorFlow (none).
      xk::CrossEntropyOptions co;
      co.ignore_index = -100;
      expect_same_label_error(
          [&] { xk::cross_entropy(x.data(), y.data(), A, C, B, nf, nf, g.data(), co); },
          *label_record(b, i, C, xd::Argument::target, true, -100));
      xk::NllLossOptions no;
      no.ignore_index = 2;
      if (b != L(2)) {
        expect_same_label_error(
            [&] { xk::nll_loss(x.data(), y.data(), A, C, B, nf, nf, g.data(), no); },
            *label_record(b, i, C, xd::Argument::target, true, 2));
      }
      expect_same_label_error(
          [&] {
            xk::sparse_softmax_cross_entropy_with_logits(y.data(), x.data(), A * B, C, nf,
                                                         g.data());
          },
          *label_record(b, i, C, xd::Argument::labels, false, 0));
    }
  }
}

TEST(CudaHostRecords, LabelErrorsMatchTheCpu) {
  std::mt19937 rng(20240611);
  label_records<int8_t>(rng);
  label_records<int16_t>(rng);
  label_records<int32_t>(rng);
  label_records<int64_t>(rng);
  label_records<uint8_t>(rng);
  label_records<uint16_t>(rng);
  label_records<uint32_t>(rng);
  label_records<uint64_t>(rng);
  label_records<float>(rng);
  label_records<double>(rng);
}

TEST(CudaHostRecords, NoClassesMatchTheCpu) {
  // A label to score over a class axis of length 0: the CPU's value_error, not a label_error.
  std::vector<float> x(1);
  std::vector<int64_t> y = {-100, 4, -100};
  float* nf = nullptr;
  auto expect_same = [](auto&& cpu, const xd::Workspace& record) {
    const Outcome a = outcome(cpu);
    const Outcome b = outcome([&] { xd::throw_recorded(record); });
    EXPECT_EQ(a.kind, "value");
    EXPECT_EQ(a, b);
  };
  xk::SoftmaxWithLossOptions so;
  so.ignore_label = -100;
  expect_same([&] { xk::softmax_with_loss(x.data(), y.data(), 1, 0, 3, nf, nf, so); },
              *label_record(int64_t{4}, 1, 0, xd::Argument::labels, true, -100));
  expect_same(
      [&] { xk::cross_entropy(x.data(), y.data(), 3, 0, 1, nf, nf, nf, xk::CrossEntropyOptions{}); },
      *label_record(int64_t{4}, 1, 0, xd::Argument::target, true, -100));
}

TEST(CudaHostRecords, ProbabilityErrorsMatchTheCpu) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto run = [&](auto zero, xd::Storage storage, bool input_bad, double bad) {
    using T = decltype(zero);
    std::vector<T> x(20), t(20);
    for (auto& v : x) v = static_cast<T>(u(rng));
    for (auto& v : t) v = static_cast<T>(u(rng));
    const int64_t i = static_cast<int64_t>(u(rng) * 19);
    (input_bad ? x : t)[i] = static_cast<T>(bad);
    const Outcome cpu = outcome([&] {
      xk::binary_cross_entropy(x.data(), t.data(), 20, Broadcast<T>{}, static_cast<T*>(nullptr),
                               static_cast<T*>(nullptr), xk::BinaryCrossEntropyOptions{});
    });
    auto w = std::make_unique<xd::Workspace>();
    w->error = ~static_cast<unsigned long long>(i);
    w->kind = xc::Status::bad_probability;
    w->argument = static_cast<int32_t>(input_bad ? xd::Argument::input : xd::Argument::target);
    w->label_kind = static_cast<int32_t>(xd::LabelKind::f64);
    w->index = i;
    w->value = static_cast<double>(static_cast<T>(bad));
    w->reserved = xd::storage_tag(storage);
    const Outcome gpu = outcome([&] { xd::throw_recorded(*w); });
    EXPECT_EQ(cpu.kind, "value");
    EXPECT_EQ(cpu, gpu);
    const xc::Status s = xd::status_of(*w);
    EXPECT_EQ(s.kind, xc::Status::bad_probability);
    EXPECT_EQ(s.index, i);
  };
  for (const double bad : {1.1, -0.3, 7.0, std::nan(""), -std::numeric_limits<double>::infinity(),
                           1.0000001}) {
    for (const bool input_bad : {true, false}) {
      run(0.0f, xd::Storage::f32, input_bad, bad);
      run(0.0, xd::Storage::f64, input_bad, bad);
      // float16 / bfloat16 values print as the float32 CPU function prints them.
      run(0.0f, xd::Storage::f16, input_bad, bad);
      run(0.0f, xd::Storage::bf16, input_bad, bad);
    }
  }
}

TEST(CudaHostRecords, CleanRecord) {
  auto w = std::make_unique<xd::Workspace>();
  EXPECT_NO_THROW(xd::throw_recorded(*w));
  const xc::Status s = xd::status_of(*w);
  EXPECT_EQ(s.kind, xc::Status::ok);
  EXPECT_EQ(s.index, -1);
  EXPECT_EQ(s.value, 0.0);
}

}  // namespace

// z_loss and softcap reach the device plan (class indices), with the CPU's checks and messages.
namespace {

TEST(CudaHostZLossSoftcap, PlanCarriesTheOptionsAndRefusesWhatTheCpuRefuses) {
  std::vector<float> x(12, 0.5f), g(12), loss(3), q(12, 0.25f);
  std::vector<int64_t> t = {0, 3, 1};
  float red = 0.0f;
  xk::CrossEntropyOptions o;
  o.z_loss = 1e-3;
  o.softcap = 30.0;
  auto p = xd::plan_cross_entropy(x.data(), t.data(), 3, 4, 1, static_cast<const float*>(nullptr),
                                  loss.data(), g.data(), &red, o);
  EXPECT_EQ(p.z_loss, 1e-3);
  EXPECT_EQ(p.softcap, 30.0);
  o.z_loss = 0.0;
  o.softcap = 0.0;
  p = xd::plan_cross_entropy(x.data(), t.data(), 3, 4, 1, static_cast<const float*>(nullptr),
                             loss.data(), g.data(), &red, o);
  EXPECT_EQ(p.z_loss, 0.0);
  EXPECT_EQ(p.softcap, 0.0);
  for (const auto& [z, s] : {std::pair{-1.0, 0.0}, std::pair{0.0, -2.0},
                             std::pair{std::nan(""), 0.0},
                             std::pair{0.0, std::numeric_limits<double>::infinity()}}) {
    xk::CrossEntropyOptions bad;
    bad.z_loss = z;
    bad.softcap = s;
    EXPECT_SAME_ERROR(xk::cross_entropy(x.data(), t.data(), 3, 4, 1,
                                        static_cast<const float*>(nullptr), loss.data(), g.data(),
                                        bad),
                      xc::cross_entropy(x.data(), t.data(), 3, 4, 1,
                                        static_cast<const float*>(nullptr), loss.data(), g.data(),
                                        &red, bad, kNoLaunch));
  }
  xk::CrossEntropyOptions capped;
  capped.softcap = 5.0;
  EXPECT_SAME_ERROR(xk::cross_entropy(x.data(), q.data(), 3, 4, 1,
                                      static_cast<const float*>(nullptr), loss.data(), g.data(),
                                      capped),
                    xc::cross_entropy(x.data(), q.data(), 3, 4, 1,
                                      static_cast<const float*>(nullptr), loss.data(), g.data(),
                                      &red, capped, kNoLaunch));
}

}  // namespace
