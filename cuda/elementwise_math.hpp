#pragma once
// Per-element math of the CUDA elementwise family (cuda/elementwise.cu), shared with a host test
// that compares it with the CPU kernels. The formulas are those of cpp/src/elementwise_cpu.cpp:
// the core terms in the compute type R (float for float32/float16/bfloat16, double for float64),
// the weight and the gradient scale applied in double, the losses summed in double.
// Includes no CUDA header: g++ compiles it as well as nvcc.

#include <cmath>
#include <cstdint>
#include <limits>

#include "xentkit/detail/labels.hpp"

namespace xentkit::cuda::detail::elem {

// ---- the partition of the main kernel (depends only on n and the element size) ---------------

inline constexpr int kThreads = 256;   // threads per block of every elementwise kernel
inline constexpr int kMaxGrid = 512;   // = kMaxBlocks of device_plan.hpp

/// Elements per chunk: one 16-byte vector of the storage type. Chunk c holds elements
/// [c * V, min(n, (c + 1) * V)); the global thread g (block b, thread j: g = b * kThreads + j)
/// handles chunks g, g + G, g + 2G, ... (G = grid * kThreads) in that order, elements of a chunk in
/// order, whether or not the vector loads are used.
XENTKIT_HD inline constexpr int chunk_elements(int element_bytes) { return 16 / element_bytes; }

XENTKIT_HD inline int64_t chunk_count(int64_t n, int v) { return (n + v - 1) / v; }

/// Blocks of the main kernel (0 for n == 0).
XENTKIT_HD inline int grid_for(int64_t chunks) {
  const int64_t b = (chunks + kThreads - 1) / kThreads;
  return static_cast<int>(b < kMaxGrid ? b : kMaxGrid);
}

/// The block that handles element i.
XENTKIT_HD inline int owner_block(int64_t i, int v, int grid) {
  const int64_t g = (i / v) % (static_cast<int64_t>(grid) * kThreads);
  return static_cast<int>(g / kThreads);
}

// ---- math helpers: the CUDA functions on the device, the std ones on the host -----------------

XENTKIT_HD inline float m_exp(float v) {
#if defined(__CUDA_ARCH__)
  return ::expf(v);
#else
  return std::exp(v);
#endif
}
XENTKIT_HD inline double m_exp(double v) {
#if defined(__CUDA_ARCH__)
  return ::exp(v);
#else
  return std::exp(v);
#endif
}
XENTKIT_HD inline float m_log(float v) {
#if defined(__CUDA_ARCH__)
  return ::logf(v);
#else
  return std::log(v);
#endif
}
XENTKIT_HD inline double m_log(double v) {
#if defined(__CUDA_ARCH__)
  return ::log(v);
#else
  return std::log(v);
#endif
}
XENTKIT_HD inline float m_log1p(float v) {
#if defined(__CUDA_ARCH__)
  return ::log1pf(v);
#else
  return std::log1p(v);
#endif
}
XENTKIT_HD inline double m_log1p(double v) {
#if defined(__CUDA_ARCH__)
  return ::log1p(v);
#else
  return std::log1p(v);
#endif
}
XENTKIT_HD inline float m_abs(float v) {
#if defined(__CUDA_ARCH__)
  return ::fabsf(v);
#else
  return std::fabs(v);
#endif
}
XENTKIT_HD inline double m_abs(double v) {
#if defined(__CUDA_ARCH__)
  return ::fabs(v);
#else
  return std::fabs(v);
#endif
}
template <typename R>
XENTKIT_HD inline bool m_isinf(R v) {
#if defined(__CUDA_ARCH__)
  return isinf(v);
#else
  return std::isinf(v);
#endif
}
template <typename R> XENTKIT_HD inline R m_inf();
template <typename R> XENTKIT_HD inline R m_nan();
template <> XENTKIT_HD inline float m_inf<float>() {
#if defined(__CUDA_ARCH__)
  return __int_as_float(0x7f800000);
#else
  return std::numeric_limits<float>::infinity();
#endif
}
template <> XENTKIT_HD inline double m_inf<double>() {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(0x7ff0000000000000LL);
#else
  return std::numeric_limits<double>::infinity();
#endif
}
template <> XENTKIT_HD inline float m_nan<float>() {
#if defined(__CUDA_ARCH__)
  return __int_as_float(0x7fc00000);
#else
  return std::numeric_limits<float>::quiet_NaN();
#endif
}
template <> XENTKIT_HD inline double m_nan<double>() {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(0x7ff8000000000000LL);
#else
  return std::numeric_limits<double>::quiet_NaN();
#endif
}

// ---- the two ops --------------------------------------------------------------------------

/// Logits: l = (1 - t) x + L softplus(-x), L = 1 + (pw - 1) t, and dl/dx = L sigmoid(x) - pw t,
/// sharing one exp, formed per sign of x so that no term cancels for t in [0, 1]:
///   x >= 0: l = (1 - t) x + L log1p(e),   g = (1 - t) - L sigmoid(-x)
///   x <  0: l = -pw t x + L log1p(e),     g = L sigmoid(x) - pw t,      e = exp(-|x|).
/// Infinite x gives the limits (0 when the coefficient of |x| is 0).
template <typename R>
XENTKIT_HD inline void logit_terms(R x, R t, R pw, R& loss, R& grad) {
  const R e = m_exp(-m_abs(x));        // in [0, 1]; NaN for NaN x
  const R q = e / (R(1) + e);          // sigmoid(-|x|)
  const R big = pw * t;                // the coefficient of -x for x < 0
  const R L = R(1) + (pw - R(1)) * t;  // exactly 1 without pos_weight
  if (m_isinf(x)) {
    const R w = x > R(0) ? R(1) - t : big;  // the coefficient of |x|
    loss = (w == R(0)) ? R(0) : w * m_inf<R>();
  } else {
    loss = (x >= R(0) ? x * (R(1) - t) : -x * big) + L * m_log1p(e);
  }
  grad = x >= R(0) ? (R(1) - t) - L * q : L * q - big;
}

/// Probabilities (PyTorch's binary cross entropy): each log clamped at -100, the gradient's
/// denominator p (1 - p) floored at 1e-12 (as a float).
template <typename R>
XENTKIT_HD inline void probability_terms(R p, R t, R& loss, R& grad) {
  const R floor = static_cast<R>(1e-12f);
  R lp = m_log(p);
  lp = lp < R(-100) ? R(-100) : lp;
  R lq = m_log1p(-p);
  lq = lq < R(-100) ? R(-100) : lq;
  loss = -(t * lp + (R(1) - t) * lq);
  const R d = p * (R(1) - p);
  grad = (p - t) / (d < floor ? floor : d);
}

/// True when v is a probability (false for NaN).
template <typename R>
XENTKIT_HD inline bool is_probability(R v) {
  return v >= R(0) && v <= R(1);
}

/// True when the target truncated toward zero equals `ignore` (has_ignore only).
template <typename R>
XENTKIT_HD inline bool ignored_target(R t, bool has_ignore, int64_t ignore) {
  if (!has_ignore) return false;
  int64_t v = 0;
  return xentkit::detail::truncate_label(static_cast<double>(t), v) && v == ignore;
}

/// What one element gives.
struct Element {
  double loss = 0.0;  // weighted loss (0 where ignored, NaN for a bad probability)
  double grad = 0.0;  // weighted dl/dx, before the scale
  int counted = 0;    // 1 unless ignored
  int bad = 0;        // probabilities: 1 if x is not in [0, 1], 2 if t is not, 3 both
};

/// One element: x the input, t the target, w its weight and pw its pos_weight (1 when absent).
/// A zero weight removes an infinite loss (0 * inf = 0, the limit) but not a NaN.
template <typename R>
XENTKIT_HD inline Element element(bool probabilities, R x, R t, R w, R pw, bool has_ignore,
                                  int64_t ignore) {
  Element out;
  if (probabilities) {
    out.bad = (is_probability(x) ? 0 : 1) | (is_probability(t) ? 0 : 2);
    if (out.bad != 0) {
      out.loss = m_nan<double>();
      out.grad = m_nan<double>();
      out.counted = 1;
      return out;
    }
  }
  if (ignored_target(t, has_ignore, ignore)) return out;
  R lr, gr;
  if (probabilities) {
    probability_terms(x, t, lr, gr);
  } else {
    logit_terms(x, t, pw, lr, gr);
  }
  const double l = static_cast<double>(lr);
  const double wd = static_cast<double>(w);
  out.loss = (wd == 0.0 && m_isinf(l)) ? 0.0 : wd * l;
  out.grad = static_cast<double>(gr) * wd;
  out.counted = 1;
  return out;
}

/// The gradient entry in the compute type: scale * dl/dx, rounded once from double.
template <typename R>
XENTKIT_HD inline R scaled_grad(const Element& e, double scale) {
  return static_cast<R>(e.grad * scale);
}

// ---- broadcast views: element i reads data[(i / stride) % period] -----------------------------

/// Walks the broadcast index of consecutive elements with one division per seek.
struct BroadcastIndex {
  int64_t stride = 1, period = 1;
  int64_t r = 0;  // i % stride
  int64_t k = 0;  // (i / stride) % period

  XENTKIT_HD BroadcastIndex(int64_t stride_, int64_t period_) : stride(stride_), period(period_) {}

  XENTKIT_HD void seek(int64_t i) {
    if (((static_cast<uint64_t>(i) | static_cast<uint64_t>(stride) |
          static_cast<uint64_t>(period)) >> 32) == 0) {
      const uint32_t ui = static_cast<uint32_t>(i), us = static_cast<uint32_t>(stride);
      const uint32_t q = ui / us;
      r = static_cast<int64_t>(ui - q * us);
      k = static_cast<int64_t>(q % static_cast<uint32_t>(period));
    } else {
      const int64_t q = i / stride;
      r = i - q * stride;
      k = q % period;
    }
  }
  XENTKIT_HD void next() {
    if (++r == stride) {
      r = 0;
      if (++k == period) k = 0;
    }
  }
};

// ---- the reduction: the finalize kernel's combine of the per-block partials ------------------

/// Divisor of the reduced loss for Divide::caffe_valid: max(1, count).
XENTKIT_HD inline double valid_divisor(double count) { return count < 1.0 ? 1.0 : count; }

}  // namespace xentkit::cuda::detail::elem
