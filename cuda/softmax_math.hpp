#pragma once
// Scalar formulas of the softmax family, shared by the CUDA kernels (cuda/softmax.cu) and the
// host test that replays their per-row algorithm. They are the formulas of the CPU tile
// (cpp/src/softmax_cpu.cpp, xent_tile / nll_tile), written for a compute type R (float for
// float32, float16 and bfloat16 storage, double for float64). No CUDA header: g++ compiles it.
//
// Per row (position), with m the max logit and am its first index:
//   d[c] = x[c] - m (the +inf limit: 0 at +inf entries, -inf elsewhere, when m = +inf);
//   e[c] = exp(d[c]); sum, other_y = sum of e but the label's, other_m = sum of e but the argmax's
//   (so log(sum) = log1p(other_m) and 1 - p[y] = other_y / sum keep their relative precision);
//   wsum = sum of w[c] d[c] (smoothing) or of w[c] q'[c] d[c] (probability targets), qsum =
//   sum of w[c] q'[c].

#include <cmath>
#include <cstdint>

#include "xentkit/detail/labels.hpp"

namespace xentkit::cuda::detail::math {

template <typename R> XENTKIT_HD inline R inf();
template <> XENTKIT_HD inline float inf<float>() { return HUGE_VALF; }
template <> XENTKIT_HD inline double inf<double>() { return HUGE_VAL; }

template <typename R> XENTKIT_HD inline bool is_nan(R v) { return !(v == v); }
template <typename R> XENTKIT_HD inline bool is_inf(R v) { return v == inf<R>() || v == -inf<R>(); }

XENTKIT_HD inline float exp_r(float v) { return expf(v); }
XENTKIT_HD inline double exp_r(double v) { return exp(v); }
XENTKIT_HD inline float log_r(float v) { return logf(v); }
XENTKIT_HD inline double log_r(double v) { return log(v); }
XENTKIT_HD inline float log1p_r(float v) { return log1pf(v); }
XENTKIT_HD inline double log1p_r(double v) { return log1p(v); }
XENTKIT_HD inline float tanh_r(float v) { return tanhf(v); }
XENTKIT_HD inline double tanh_r(double v) { return tanh(v); }

/// Logit soft-capping (s > 0): x -> s tanh(x / s) with t = tanh(x / s) returned too, whose
/// 1 - t^2 is the derivative the gradient is multiplied by. s == 0: no capping (t unused).
template <typename R>
XENTKIT_HD inline R capped(R v, R s, R inv_s, R& t) {
  if (s == R(0)) return v;
  t = tanh_r(v * inv_s);
  return s * t;
}

/// The max-and-first-index order: NaN ranks above every number (so the combine is commutative
/// and associative and every thread of a tree agrees; a row with a NaN gives NaN outputs either
/// way); among equal values the smaller index wins.
template <typename R>
XENTKIT_HD inline bool takes_max(R v, int64_t c, R m, int64_t am) {
  const bool vn = is_nan(v), mn = is_nan(m);
  if (vn != mn) return vn;
  if (vn || v == m) return c < am;
  return v > m;
}

/// x - max, with the limit when the max is +inf (the +inf entries share the mass).
template <typename R>
XENTKIT_HD inline R shifted(R v, R m, bool posinf) {
  if (!posinf) return v - m;
  if (v == inf<R>()) return R(0);
  return is_nan(v) ? v : -inf<R>();
}

/// w * v, where a zero weight removes an infinite term (0 * inf = 0: the limit) but not a NaN.
template <typename R>
XENTKIT_HD inline R weighted(R w, R v) {
  return (w == R(0) && is_inf(v)) ? R(0) : w * v;
}

/// The z-loss term of one position: z w[y] lse^2 (a zero weight removes an infinite lse).
template <typename R>
XENTKIT_HD inline R z_term(R z, R wy, R lse) {
  return weighted(wy, z * lse * lse);
}

/// What a row's statistics sweep needs: smoothing sums (class indices with eps > 0) or
/// probability-target sums.
enum class Extra : int { none = 0, smooth = 1, soft = 2 };

template <typename R>
struct Stats {
  R sum = R(0), other_y = R(0), other_m = R(0), wsum = R(0), qsum = R(0);
};

/// Adds element c (shifted logit d, e = exp(d), class weight wc, target q) to a thread's sums.
template <typename R>
XENTKIT_HD inline void accumulate(Stats<R>& s, Extra extra, int64_t c, int64_t y, int64_t am,
                                  R d, R e, R wc, R q, R keep, R spread) {
  s.sum += e;
  if (c != y) s.other_y += e;
  if (c != am) s.other_m += e;
  if (extra == Extra::smooth) {
    s.wsum += weighted(wc, d);
  } else if (extra == Extra::soft) {
    const R qw = wc * (keep * q + spread);
    s.qsum += qw;
    s.wsum += weighted(qw, d);
  }
}

/// -log p[y] = log1p(other_y * exp(-zy)) (zy = x[y] - max), capped (NaN stays NaN). When the
/// ratio overflows the label is far below the max, so other_y >= 1 and log(other_y + e_y) - zy
/// loses nothing.
template <typename R>
XENTKIT_HD inline R label_nll(R other_y, R zy, R cap) {
  const R ratio = other_y * exp_r(-zy);
  R nll = is_inf(ratio) ? log_r(other_y + exp_r(zy)) - zy : log1p_r(ratio);
  if (nll > cap) nll = cap;
  return nll;
}

/// The class-index loss: the (1 - eps) w[y] nll term (a = (1 - eps) w[y]) plus the smoothing term
/// (eps / C) (W log(sum) - sum_c w[c] d[c]), W = the sum of the class weights.
template <typename R>
XENTKIT_HD inline R smoothing_term(R spread, R total_weight, R logsum, R wsum) {
  return spread * (total_weight * logsum - wsum);
}

/// The probability-target loss: -sum_c qw[c] log p[c] = Q log(sum) - sum_c qw[c] d[c].
template <typename R>
XENTKIT_HD inline R soft_loss(R qsum, R logsum, R wsum) {
  return qsum * logsum - wsum;
}

/// A class-index gradient entry (before the ignore rule): coef_y = scale (1 - eps) w[y],
/// spread_scale = scale eps / C. At the label -(other_y / sum) coef_y, elsewhere p coef_y.
template <typename R>
XENTKIT_HD inline R label_grad(bool at_label, R p, R inv, R other_y, R coef_y, bool smooth,
                               R spread_scale, R total_weight, R wc) {
  R g = at_label ? -(other_y * inv) * coef_y : p * coef_y;
  if (smooth) g += spread_scale * (total_weight * p - wc);
  return g;
}

/// A probability-target gradient entry, scale (Q p - qw); at the argmax (Q - qw) - Q (1 - p)
/// with 1 - p = other_m / sum.
template <typename R>
XENTKIT_HD inline R soft_grad(bool at_argmax, R p, R inv, R other_m, R qsum, R qw, R scale) {
  const R g = at_argmax ? (qsum - qw) - qsum * (other_m * inv) : qsum * p - qw;
  return g * scale;
}

/// nll: l = -w[y] x[y] (a zero weight removes an infinite log-probability).
template <typename R>
XENTKIT_HD inline R nll_loss(R wy, R xy) {
  return weighted(-wy, xy);
}

}  // namespace xentkit::cuda::detail::math
