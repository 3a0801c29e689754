// The vectorised float32 kernels, compiled once per instruction set: a translation unit defines
// XENTKIT_ISA (its namespace) and includes this file. See fast.hpp for the contracts.
//
// Softmax, per row (or per group of 16 positions), while the row is in cache:
//   A: the max (a NaN or infinite max, or any NaN, hands the row back untouched);
//   B: e = exp(x - max) once per element, stored where the gradient or softmax goes; the sum of
//      e over the classes other than the label is accumulated in double, e[label] kept apart;
//   finish (vectorised over up to 16 rows): -log p[y] = log1p(sum_other / e[y]), 1 / sum;
//   C: p = e / sum, gradient e * (w grad_scale / sum) and, at the label,
//      -(sum_other / sum) w grad_scale, which keeps its precision when p[y] rounds to 1.
// z-loss (job.z_loss > 0): finish adds w z lse^2, lse = max + log(sum), and scales the gradient
// by 1 + 2 z lse off the label (at the label: (2 z lse e[y] - sum_other) w grad_scale / sum).
// Soft-capping (job.softcap = s > 0, a template parameter of the sweeps): the max becomes
// s tanh(max / s); sweep B reads x' = s tanh(x / s) and stores t = tanh(x / s) where e would go;
// sweep C recomputes e = exp(s t - max') and multiplies the gradient by 1 - t^2.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "half_bits.hpp"
#include "simd/fast.hpp"

#ifndef XENTKIT_ISA
#error "define XENTKIT_ISA before including kernels_impl.hpp"
#endif

namespace xentkit::detail::fast::XENTKIT_ISA {
namespace {

using ::xentkit::detail::float_to_half_bits;
using ::xentkit::detail::half_bits_to_float;
using ::xentkit::detail::bf16_bits_to_float;
using ::xentkit::detail::float_to_bf16_bits;

#include "simd/vec.hpp"

static_assert(W == kLanes, "lane count");

constexpr float kFloatInf = std::numeric_limits<float>::infinity();

/// tanh(u) in float32: u (1 + u^2 q(u^2)) for |u| < 0.625 (q of degree 4, fitted to tanh(u)/u),
/// else (1 - e) / (1 + e) with e = exp(-2|u|), the sign put back. Max error against np.tanh in
/// float64, measured on the AVX2 build over u = k * 5e-6 in [-20, 20] and every float32 in
/// [1e-30, 1e-3] and [0.6, 0.7]: 1.5e-7 relative (about 2.5 ulp, worst near u = 0.64) where
/// |tanh u| < 0.99, 9e-8 absolute elsewhere. |u| >= 9.01 gives exactly +-1 (and so do +-inf and
/// 1e4); NaN in, NaN out.
XK_INLINE vf tanh_v(vf u) noexcept {
  const vi neg = u < splat(0.0f);
  const vf a = sel(neg, -u, u);
  const vf a2 = a * a;
  vf q = splat(-0.005697567947208881f);
  q = q * a2 + 0.020630355924367905f;
  q = q * a2 + -0.0537358820438385f;
  q = q * a2 + 0.13331365585327148f;
  q = q * a2 + -0.33333274722099304f;
  const vf small = a + a * (a2 * q);
  // Soft-capped logits are mostly well inside the cap: a vector with every lane below 0.625
  // (NaN included) skips the exp and the division (the same value lane by lane either way).
  if (!any(a >= splat(0.625f))) return sel(neg, -small, small);
  const vf e = exp_nonpos(a * -2.0f);
  const vf big = (1.0f - e) / (1.0f + e);
  const vf r = sel(a < splat(0.625f), small, big);
  // NaN: a < 0.625 is false, and (1 - NaN) / (1 + NaN) is NaN.
  return sel(neg, -r, r);
}

/// log1p(e) for e in [0, 1]: e q(e), q a degree-9 polynomial fitted to log1p(e) / e on [0, 1]
/// (within 1.9e-7 relative in float32, no division).
XK_INLINE vf log1p_unit(vf e) noexcept {
  vf q = splat(-0.0032140363473445177f);
  q = q * e + 0.019649166613817215f;
  q = q * e + -0.056435029953718185f;
  q = q * e + 0.10533228516578674f;
  q = q * e + -0.1525145173072815f;
  q = q * e + 0.19651491940021515f;
  q = q * e + -0.24947808682918549f;
  q = q * e + 0.3332909941673279f;
  q = q * e + -0.4999985098838806f;
  q = q * e + 1.0f;
  return e * q;
}

/// A per-lane sum in float partial sums of 8 terms, each added to a double sum: for terms of
/// one sign a partial sum is within 8 float roundings (5e-7 relative) of its exact value, and the
/// double sum adds no error of its own that matters. (A row's or a position's exps over its
/// classes, every one in [0, 1]; the element losses of BCE, >= 0 for targets in [0, 1].) The
/// same terms in the same order give the same bits.
struct PartialSum {
  Acc total_;
  vf part = splat(0.0f);
  int n = 0;
  XK_INLINE void add(vf e) noexcept {
    part = part + e;
    if (++n == 8) {
      total_.add(part);
      part = splat(0.0f);
      n = 0;
    }
  }
  /// The 16 lanes' sums (the last partial sum added; adding 0 changes nothing).
  XK_INLINE void lanes(double* out) const noexcept {
    Acc t = total_;
    t.add(part);
    t.lanes(out);
  }
  /// The sum of all lanes, in a fixed order (the last partial sum added first).
  XK_INLINE double total() noexcept {
    total_.add(part);
    part = splat(0.0f);
    n = 0;
    return total_.total();
  }
};

/// Losses, 1/sum and the gradient scales of `n` <= W rows from their sums.
struct Finish {
  float pinv[W];   // 1 / sum, for the softmax
  float scale[W];  // w grad_scale / sum, for the gradient off the label (0 when ignored)
  float gy[W];     // the gradient at the label
};

/// other: the sum of e over the classes other than the label (all classes without a label);
/// ey: e at the label; zy: x[label] - max (read before any in-place write).
/// mx: the (soft-capped) max per row, read only when z_loss > 0 (lse = max + log(sum)).
XK_INLINE void finish_rows(int n, const double* other, const float* ey, const float* zy,
                        const int32_t* y, const double* a, double grad_scale, double cap,
                        double* loss, Finish& f, const float* mx = nullptr,
                        double z_loss = 0.0) noexcept {
  double o_buf[W], a_buf[W];
  float ey_buf[W];
  int32_t y_buf[W];
  if (n < W) {  // pad the group: the missing lanes are skipped positions
    for (int k = 0; k < W; ++k) {
      const bool in = k < n;
      o_buf[k] = in ? other[k] : 1.0;
      ey_buf[k] = in ? ey[k] : 1.0f;
      y_buf[k] = in ? y[k] : kSkip;
      a_buf[k] = in ? a[k] : 0.0;
    }
    other = o_buf;
    ey = ey_buf;
    y = y_buf;
    a = a_buf;
  }
  const vd vo = load_d(other);
  const vf vey = load(ey);
  const vi vy = load_i(y);
  const vi labelled = vy >= splat_i(0);
  const vl labelled_d = wide_mask(labelled);
  const vd sum = vo + sel(labelled_d, widen(vey), splat_d(0.0));
  const vd inv = 1.0 / sum;
  const vd va = load_d(a);
  const vd coef = va * grad_scale;
  // -log p[y] = log1p(other / e[y]) in float; exact enough when e[y] is not tiny (the ratio
  // stays below 2^127); tiny e[y] lanes are redone below in double.
  const vi usable = vey > splat(0x1p-100f);
  const vf ratio = narrow(vo) / sel(usable, vey, splat(1.0f));
  const vd nll = widen(log1p_nonneg(ratio));
  const vd lv = sel(labelled_d, sel(nll > splat_d(cap), splat_d(cap), nll) * va, splat_d(0.0));
  double lbuf[W];
  store_d(lbuf, lv);
  store(f.pinv, narrow(inv));
  store(f.scale, sel(labelled, narrow(inv * coef), splat(0.0f)));
  store(f.gy, sel(labelled, narrow(-(vo * inv) * coef), splat(0.0f)));
  if (z_loss > 0.0) {
    // z-loss, per labelled row in double: + a z lse^2; the gradient off the label becomes
    // a gs (1 + 2 z lse) e / sum, at the label a gs (2 z lse e[y] - other) / sum.
    for (int k = 0; k < n; ++k) {
      if (y[k] < 0) continue;
      const double s = other[k] + static_cast<double>(ey[k]);
      const double lse = static_cast<double>(mx[k]) + std::log(s);
      const double g = a[k] * grad_scale / s;
      const double zl = 2.0 * z_loss * lse;
      lbuf[k] += a[k] * z_loss * lse * lse;
      f.scale[k] = static_cast<float>(g * (1.0 + zl));
      f.gy[k] = static_cast<float>(g * (zl * static_cast<double>(ey[k]) - other[k]));
    }
  }
  if (!any(labelled & (usable == splat_i(0)))) {
    for (int k = 0; k < n; ++k) loss[k] = lbuf[k];
    return;
  }
  for (int k = 0; k < n; ++k) {
    if (y[k] >= 0 && !(ey[k] > 0x1p-100f)) {
      // e[y] tiny or 0: the label sits far below the max, other >= 1 holds the max's e = 1.
      const double z = static_cast<double>(zy[k]);
      const double r = other[k] * std::exp(-z);
      double l = std::isinf(r) ? std::log(other[k] + std::exp(z)) - z : std::log1p(r);
      if (l > cap) l = cap;
      double zl = 0.0;
      if (z_loss > 0.0) {
        const double lse = static_cast<double>(mx[k]) + std::log(other[k] + ey[k]);
        zl = a[k] * z_loss * lse * lse;
      }
      lbuf[k] = ((a[k] == 0.0 && std::isinf(l)) ? 0.0 : a[k] * l) + zl;
    }
    loss[k] = lbuf[k];
  }
}

/// True when the vector holds a NaN or an infinity.
XK_INLINE vi nonfinite(vf v) noexcept { return (v - v) != splat(0.0f); }

int64_t softmax_positions(const SoftmaxJob& jb);
int64_t softmax_rows_wide(const SoftmaxJob& jb);

/// Rows of at most W classes, any C: 16 rows at a time are transposed into a (C, 16) block and
/// run as one group of positions, so nothing is reduced across lanes. Returns the rows done.
/// (Soft-capped rows, C = 1 and the last count % 16 rows of the others; narrow_rows below does
/// the rest.)
int64_t softmax_rows_narrow_any(const SoftmaxJob& jb) {
  const int64_t C = jb.channels;
  alignas(64) float xt[W * W], dt[W * W], pt[W * W];
  int32_t y[W];
  double a[W], loss[W];
  for (int64_t r0 = 0; r0 < jb.count; r0 += W) {
    const int n = static_cast<int>(std::min<int64_t>(W, jb.count - r0));
    const float* x = jb.x + r0 * C;
    for (int64_t c = 0; c < C; ++c) {
      for (int k = 0; k < W; ++k) xt[c * W + k] = k < n ? x[k * C + c] : 0.0f;
    }
    for (int k = 0; k < W; ++k) {
      y[k] = k < n ? jb.y[r0 + k] : kSkip;
      a[k] = k < n ? jb.a[r0 + k] : 0.0;
    }
    SoftmaxJob g = jb;
    g.x = xt;
    g.diff = jb.diff ? dt : nullptr;
    g.prob = jb.prob ? pt : nullptr;
    g.count = 1;
    g.inner = W;
    g.y = y;
    g.a = a;
    g.loss = loss;
    if (softmax_positions(g) == 0) {  // a NaN or infinite logit among these rows
      SoftmaxJob rows = jb;
      rows.x = x;
      rows.diff = jb.diff ? jb.diff + r0 * C : nullptr;
      rows.prob = jb.prob ? jb.prob + r0 * C : nullptr;
      rows.count = n;
      rows.y = jb.y + r0;
      rows.a = jb.a + r0;
      rows.loss = jb.loss + r0;
      rows.channels = C;
      const int64_t done = softmax_rows_wide(rows);
      if (done < n) return r0 + done;
      continue;
    }
    for (int k = 0; k < n; ++k) jb.loss[r0 + k] = loss[k];
    if (jb.diff) {
      float* d = jb.diff + r0 * C;
      for (int k = 0; k < n; ++k) {
        for (int64_t c = 0; c < C; ++c) d[k * C + c] = dt[c * W + k];
      }
    }
    if (jb.prob) {
      float* p = jb.prob + r0 * C;
      for (int k = 0; k < n; ++k) {
        for (int64_t c = 0; c < C; ++c) p[k * C + c] = pt[c * W + k];
      }
    }
  }
  return jb.count;
}


#if defined(__AVX2__) && !defined(__AVX512F__)
// The AVX2 build moves narrow rows in and out of the (C, 16) layout with 8x8 transposes in
// registers: per 16 rows, 16 or 32 unaligned loads (or stores) and 24 shuffles per 8x8 block,
// instead of 16 C scalar loads and stores through a buffer whose vector reloads cannot be
// forwarded from the scalar stores. (AVX-512 permutes lanes instead, below; the baseline build
// keeps the scalar copy.)
#define XK_NARROW_SHUFFLES 1

/// r[j] (lane i = element i of row j) becomes column j: lane i = r[i][j].
XK_INLINE void transpose8(__m256* r) noexcept {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/// v[c] (lane k = row k) from the 16 rows of C floats at x. Row k is read as 8 (C > 8: 16)
/// floats from x + k C, so the last rows read up to 16 floats past the block, which the caller
/// guarantees are readable.
template <int C>
XK_INLINE void rows_to_columns(const float* x, vf* v) noexcept {
  constexpr int H = C > 8 ? 2 : 1;
  __m256 b[H][W];
  for (int k = 0; k < W; ++k) {
    b[0][k] = _mm256_loadu_ps(x + k * C);
    if constexpr (H == 2) b[1][k] = _mm256_loadu_ps(x + k * C + 8);
  }
  for (int h = 0; h < H; ++h) {
    transpose8(b[h]);
    transpose8(b[h] + 8);
  }
  for (int c = 0; c < C; ++c) {
    v[c].p[0] = (nf)b[c / 8][c % 8];
    v[c].p[1] = (nf)b[c / 8][8 + c % 8];
  }
}

/// Rows of two: the 16 rows are 4 whole vectors, split into even and odd lanes (no load past
/// the block, no 8x8 transpose).
template <>
XK_INLINE void rows_to_columns<2>(const float* x, vf* v) noexcept {
  for (int h = 0; h < 2; ++h) {
    const __m256 a = _mm256_loadu_ps(x + 16 * h), b = _mm256_loadu_ps(x + 16 * h + 8);
    // shuffle_ps gives rows 0 1 4 5 2 3 6 7 of these 8; the 64-bit permute puts them in order.
    const auto order = [](__m256 t) {
      return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), 0xd8));
    };
    v[0].p[h] = (nf)order(_mm256_shuffle_ps(a, b, 0x88));
    v[1].p[h] = (nf)order(_mm256_shuffle_ps(a, b, 0xdd));
  }
}

/// The 16 rows of C floats at out from v[c] (lane k = row k). Row k is written as 8 (C > 8: 16)
/// floats in increasing k, so what spills into row k + 1 is overwritten by it; the rows whose
/// write would cross the block's end go through a buffer, and nothing past the block is touched.
template <int C>
XK_INLINE void columns_to_rows(const vf* v, float* out) noexcept {
  constexpr int H = C > 8 ? 2 : 1;
  __m256 b[H][W];
  for (int h = 0; h < H; ++h) {
    for (int j = 0; j < 8; ++j) {
      const int c = 8 * h + j;
      b[h][j] = c < C ? (__m256)v[c < C ? c : 0].p[0] : _mm256_setzero_ps();
      b[h][8 + j] = c < C ? (__m256)v[c < C ? c : 0].p[1] : _mm256_setzero_ps();
    }
    transpose8(b[h]);
    transpose8(b[h] + 8);
  }
  for (int k = 0; k < W; ++k) {
    float* row = out + k * C;
    if (k * C + 8 * H <= W * C) {
      _mm256_storeu_ps(row, b[0][k]);
      if constexpr (H == 2) _mm256_storeu_ps(row + 8, b[1][k]);
    } else {
      alignas(32) float t[8 * H];
      _mm256_store_ps(t, b[0][k]);
      if constexpr (H == 2) _mm256_store_ps(t + 8, b[1][k]);
      std::memcpy(row, t, sizeof(float) * C);
    }
  }
}

template <>
XK_INLINE void columns_to_rows<2>(const vf* v, float* out) noexcept {
  for (int h = 0; h < 2; ++h) {
    const __m256 c0 = (__m256)v[0].p[h], c1 = (__m256)v[1].p[h];
    const __m256 lo = _mm256_unpacklo_ps(c0, c1);  // rows 0 1 | 4 5 of these 8
    const __m256 hi = _mm256_unpackhi_ps(c0, c1);  // rows 2 3 | 6 7
    _mm256_storeu_ps(out + 16 * h, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + 16 * h + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
}
#endif

#if defined(__AVX512F__)
// The AVX-512 build moves a block of 16 rows of C <= 16 floats (C whole vectors) into C columns
// with two-source lane permutes: column c lane k is float k C + c of the block, which lies in
// the pair of vectors (2p, 2p + 1) with p = (k C + c) / 32. Each column takes one permute per
// pair of input vectors, merged by lane masks, and each output vector one per pair of columns:
// C ceil(C/2) permutes each way (C = 2: two), no load or store past the block.
template <int C>
struct NarrowPermutes {
  static constexpr int P = (C + 1) / 2;  // pairs of vectors
  int32_t in[C][P][W] = {};              // column c from the pair p of input vectors
  uint16_t in_mask[C][P] = {};           // the lanes of column c that pair p holds
  int32_t out[C][P][W] = {};             // output vector j from the pair p of columns
  uint16_t out_mask[C][P] = {};
  constexpr NarrowPermutes() {
    for (int c = 0; c < C; ++c) {
      for (int k = 0; k < W; ++k) {
        const int q = k * C + c, p = q / 32;
        in[c][p][k] = q - 32 * p;
        in_mask[c][p] = static_cast<uint16_t>(in_mask[c][p] | (1u << k));
      }
    }
    for (int j = 0; j < C; ++j) {
      for (int i = 0; i < W; ++i) {
        const int q = 16 * j + i, row = q / C, c = q % C, p = c / 2;
        out[j][p][i] = row + 16 * (c - 2 * p);
        out_mask[j][p] = static_cast<uint16_t>(out_mask[j][p] | (1u << i));
      }
    }
  }
};
template <int C>
inline constexpr NarrowPermutes<C> kNarrowPermutes{};

/// Every pair (2p, 2p + 1) of v (the last one, for odd n, is (n - 1, n - 1)) permuted by
/// idx[p] and merged lane by lane under mask[p]; each lane comes from exactly one pair.
template <int n>
XK_INLINE __m512 gather_pairs(const __m512* v, const int32_t (*idx)[W],
                              const uint16_t* mask) noexcept {
  __m512 r = _mm512_permutex2var_ps(v[0], _mm512_loadu_si512(idx[0]), v[n > 1 ? 1 : 0]);
  for (int p = 1; p < (n + 1) / 2; ++p) {
    const __m512 t = _mm512_permutex2var_ps(v[2 * p], _mm512_loadu_si512(idx[p]),
                                            v[2 * p + 1 < n ? 2 * p + 1 : 2 * p]);
    r = _mm512_mask_blend_ps(static_cast<__mmask16>(mask[p]), r, t);
  }
  return r;
}

template <int C>
XK_INLINE void rows_to_columns(const float* x, vf* v) noexcept {
  constexpr const NarrowPermutes<C>& T = kNarrowPermutes<C>;
  __m512 in[C];
  for (int j = 0; j < C; ++j) in[j] = _mm512_loadu_ps(x + W * j);
  for (int c = 0; c < C; ++c) v[c].p[0] = (nf)gather_pairs<C>(in, T.in[c], T.in_mask[c]);
}

template <int C>
XK_INLINE void columns_to_rows(const vf* v, float* out) noexcept {
  constexpr const NarrowPermutes<C>& T = kNarrowPermutes<C>;
  __m512 col[C];
  for (int c = 0; c < C; ++c) col[c] = (__m512)v[c].p[0];
  for (int j = 0; j < C; ++j) {
    _mm512_storeu_ps(out + W * j, gather_pairs<C>(col, T.out[j], T.out_mask[j]));
  }
}
#define XK_NARROW_PERMUTES 1
#endif

/// The 16 rows of C floats at x as C columns (lane k = row k), and back, by scalar copies
/// through buf (C W floats).
template <int C>
XK_INLINE void rows_to_columns_copy(const float* x, vf* v, float* buf) noexcept {
  for (int k = 0; k < W; ++k) {
    for (int c = 0; c < C; ++c) buf[c * W + k] = x[k * C + c];
  }
  for (int c = 0; c < C; ++c) v[c] = load(buf + c * W);
}
template <int C>
XK_INLINE void columns_to_rows_copy(const vf* v, float* out, float* buf) noexcept {
  for (int c = 0; c < C; ++c) store(buf + c * W, v[c]);
  for (int k = 0; k < W; ++k) {
    for (int c = 0; c < C; ++c) out[k * C + c] = buf[c * W + k];
  }
}

// Rows of 16 (a vector each) keep the scalar copy on AVX-512: there the 128 permutes each way
// cost more (65536x16, one core of a Xeon with AVX-512: 0.77 ns per element copied, 1.06
// permuted).
template <int C>
inline constexpr bool kPermuteRows = C < 16;

/// The block of 16 rows of C floats at x (rows r0.. of the job) as C columns (lane k = row k),
/// by the fastest means of this build; reads nothing past the job's rows.
template <int C>
XK_INLINE void block_in([[maybe_unused]] const SoftmaxJob& jb, [[maybe_unused]] int64_t r0,
                        const float* x, vf* v, [[maybe_unused]] float* buf) noexcept {
#if defined(XK_NARROW_PERMUTES)
  if constexpr (kPermuteRows<C>) {
    rows_to_columns<C>(x, v);
  } else {
    rows_to_columns_copy<C>(x, v, buf);
  }
#elif defined(XK_NARROW_SHUFFLES)
  if (C == 2 || (jb.count - r0 - W) * C >= 16) {  // rows of two read exactly the block
    rows_to_columns<C>(x, v);
  } else {  // the job's last block: read through a buffer, nothing past the job is touched
    alignas(64) float padded[W * C + 16];
    std::memcpy(padded, x, sizeof(float) * W * C);
    rows_to_columns<C>(padded, v);
  }
#else
  rows_to_columns_copy<C>(x, v, buf);
#endif
}

/// C columns (lane k = row k) written as the block of 16 rows at out; nothing past it.
template <int C>
XK_INLINE void block_out(const vf* v, float* out, [[maybe_unused]] float* buf) noexcept {
#if defined(XK_NARROW_PERMUTES)
  if constexpr (kPermuteRows<C>) {
    columns_to_rows<C>(v, out);
  } else {
    columns_to_rows_copy<C>(v, out, buf);
  }
#elif defined(XK_NARROW_SHUFFLES)
  columns_to_rows<C>(v, out);
#else
  columns_to_rows_copy<C>(v, out, buf);
#endif
}

/// Sixteen rows of two classes (v[0], v[1]: lane k = row k; finite) with labels vy, as a
/// logistic loss: with d = x[other] - x[label], -log p[label] = max(d, 0) + log1p(exp(-|d|)) and
/// p[other] = sigmoid(d), from one exp, one division and a polynomial; p[other] keeps its
/// relative precision where it is tiny (the gradient at the label, -p[other], included).
/// Writes the rows' losses; returns false when no gradient is asked for, else true with the
/// gradients of the two classes in o (no z-loss, no softmax output). Rows or positions: the
/// caller writes o.
XK_INLINE bool binary_core(const SoftmaxJob& jb, int64_t r0, const vf* v, vi vy,
                           vf* o) noexcept {
  const vi one = vy == splat_i(1);
  const vi labelled = vy >= splat_i(0);
  const vf d = sel(one, v[0] - v[1], v[1] - v[0]);
  const vi pos = d > splat(0.0f);
  const vf e = exp_nonpos(sel(pos, -d, d));  // exp(-|d|)
  const vf r = 1.0f / (e + 1.0f);
  const vf p_other = sel(pos, r, e * r);
  const vf nll = sel(pos, d, splat(0.0f)) + log1p_unit(e);
  const vd va = load_d(jb.a + r0);
  const vd nd = widen(nll);
  const vd capped = sel(nd > splat_d(jb.cap), splat_d(jb.cap), nd);
  store_d(jb.loss + r0, sel(wide_mask(labelled), capped * va, splat_d(0.0)));
  if (!jb.diff) return false;
  const vf g = p_other * narrow(va * jb.grad_scale);
  o[0] = sel(labelled, sel(one, g, -g), splat(0.0f));
  o[1] = sel(labelled, sel(one, -g, g), splat(0.0f));
  return true;
}

/// binary_core for 16 rows of the job from r0, the gradient written back as rows.
XK_INLINE void binary_rows(const SoftmaxJob& jb, int64_t r0, const vf* v, vi vy) noexcept {
  vf o[2];
  if (!binary_core(jb, r0, v, vy, o)) return;
  alignas(64) float buf[2 * W];
  block_out<2>(o, jb.diff + r0 * 2, buf);
}

/// Two classes on the class axis (inner > 1) without z-loss, soft-capping or softmax output:
/// binary_core on each group of 16 positions, the two class rows read and written as they lie
/// (binary segmentation, Caffe's and PyTorch's (N, 2, H, W)). The same results as rows of two
/// bit for bit. Returns the groups done; stops before a group with a NaN or infinite logit.
int64_t binary_positions(const SoftmaxJob& jb) {
  const int64_t inner = jb.inner;
  for (int64_t g = 0; g < jb.count; ++g) {
    const int64_t j0 = g * W;
    vf v[2];
    v[0] = load(jb.x + j0);
    v[1] = load(jb.x + inner + j0);
    const vi bad = (v[0] != v[0]) | (v[1] != v[1]) | nonfinite(max_keep(v[0], v[1]));
    if (any(bad)) return g;
    vf o[2];
    if (binary_core(jb, j0, v, load_i(jb.y + j0), o)) {
      store(jb.diff + j0, o[0]);
      store(jb.diff + inner + j0, o[1]);
    }
  }
  return jb.count;
}

/// Rows of exactly C (2..16) classes, 16 rows at a time, C known to the compiler: the block is
/// transposed into C vectors (lane k = row k) that stay in registers through the max, the exps
/// and the gradient, which is transposed back once. For C >= 3 (and for C = 2 with z-loss or
/// softmax output) the same operations in the same order as position_groups, so the results
/// are those of softmax_rows_narrow_any bit for bit; other rows of two take binary_rows. Hands
/// the last count % 16 rows and blocks with a NaN or infinite logit to softmax_rows_narrow_any.
///
/// kPos: the same for C classes on the class axis (a stride of jb.inner between classes), a
/// group of 16 positions at a time, its C vectors read and written as the class rows lie (no
/// transposes); jb.count is then in groups, and the count of groups done is returned (it stops
/// before a group with a NaN or infinite logit, which the caller hands to the scalar kernel).
template <int C, bool kPos = false>
int64_t narrow_rows(const SoftmaxJob& jb) {
  [[maybe_unused]] alignas(64) float buf[C * W];
  const int64_t full = kPos ? jb.count * W : jb.count / W * W;
  [[maybe_unused]] const int64_t inner = jb.inner;
  // Two classes without z-loss or softmax output: the logistic form (binary_rows: one exp, one
  // division, no double-precision sums).
  [[maybe_unused]] const bool binary = C == 2 && jb.z_loss == 0.0 && jb.prob == nullptr;
  int64_t r0 = 0;
  for (; r0 < full; r0 += W) {
    vf v[C];
    if constexpr (kPos) {
      for (int c = 0; c < C; ++c) v[c] = load(jb.x + c * inner + r0);
    } else {
      block_in<C>(jb, r0, jb.x + r0 * C, v, buf);
    }
    vi bad = splat_i(0);
    for (int c = 0; c < C; ++c) bad |= (v[c] != v[c]);
    vf m = v[0];
    for (int c = 1; c < C; ++c) m = max_keep(m, v[c]);
    if (any(bad | nonfinite(m))) break;
    const vi vy = load_i(jb.y + r0);
    if constexpr (C == 2 && !kPos) {
      if (binary) {
        binary_rows(jb, r0, v, vy);
        continue;
      }
    }
    PartialSum acc;
    vf vey = splat(0.0f), vzy = splat(0.0f);
    vf z[C];
    for (int c = 0; c < C; ++c) z[c] = v[c] - m;
    if constexpr (C == 2) {
      // One of the two is the max, whose z is 0 and whose exp_nonpos is exactly 1: one exp
      // per row, the same values.
      const vf e = exp_nonpos(sel(z[0] < z[1], z[0], z[1]));
      for (int c = 0; c < C; ++c) v[c] = sel(z[c] == splat(0.0f), splat(1.0f), e);
    } else {
      for (int c = 0; c < C; ++c) v[c] = exp_nonpos(z[c]);
    }
    for (int c = 0; c < C; ++c) {
      const vi at = vy == splat_i(c);
      vey = sel(at, v[c], vey);
      vzy = sel(at, z[c], vzy);
      acc.add(sel(at, splat(0.0f), v[c]));
    }
    Finish f;
    double other[W];
    alignas(64) float ey[W], zy[W], mx[W];
    acc.lanes(other);
    store(ey, vey);
    store(zy, vzy);
    store(mx, m);
    finish_rows(W, other, ey, zy, jb.y + r0, jb.a + r0, jb.grad_scale, jb.cap, jb.loss + r0, f,
                mx, jb.z_loss);
    vf o[C];
    const auto put = [&](float* base) XK_INLINE_LAMBDA {
      if constexpr (kPos) {
        for (int c = 0; c < C; ++c) store(base + c * inner + r0, o[c]);
      } else {
        block_out<C>(o, base + r0 * C, buf);
      }
    };
    if (jb.prob) {
      const vf pinv = load(f.pinv);
      for (int c = 0; c < C; ++c) o[c] = v[c] * pinv;
      put(jb.prob);
    }
    if (jb.diff) {
      const vf sc = load(f.scale), gy = load(f.gy);
      const vi skip = vy == splat_i(kSkip);
      for (int c = 0; c < C; ++c) {
        const vf g = sel(vy == splat_i(c), gy, v[c] * sc);
        o[c] = sel(skip, splat(0.0f), g);
      }
      put(jb.diff);
    }
  }
  if constexpr (kPos) return r0 / W;
  if (r0 == jb.count) return r0;
  SoftmaxJob rest = jb;
  rest.x = jb.x + r0 * C;
  rest.diff = jb.diff ? jb.diff + r0 * C : nullptr;
  rest.prob = jb.prob ? jb.prob + r0 * C : nullptr;
  rest.count = jb.count - r0;
  rest.y = jb.y + r0;
  rest.a = jb.a + r0;
  rest.loss = jb.loss + r0;
  return r0 + softmax_rows_narrow_any(rest);
}

template <bool kPos, int... Cs>
int64_t narrow_dispatch(const SoftmaxJob& jb, std::integer_sequence<int, Cs...>) {
  int64_t done = -1;
  (void)((jb.channels == Cs + 2 ? (done = narrow_rows<Cs + 2, kPos>(jb), true) : false) || ...);
  return done;
}

/// Rows of at most W classes.
int64_t softmax_rows_narrow(const SoftmaxJob& jb) {
  if (jb.softcap > 0.0 || jb.channels < 2) return softmax_rows_narrow_any(jb);
  return narrow_dispatch<false>(jb, std::make_integer_sequence<int, W - 1>{});
}

// Loads and stores of float32 or float16 (uint16_t bits) storage.
XK_INLINE vf load_s(const float* p) noexcept { return load(p); }
XK_INLINE vf load_s(const uint16_t* p) noexcept { return load_half(p); }
XK_INLINE vf load_part_s(const float* p, int n, float fill) noexcept { return load_part(p, n, fill); }
XK_INLINE vf load_part_s(const uint16_t* p, int n, float fill) noexcept {
  return load_part_half(p, n, fill);
}
XK_INLINE void store_s(float* p, vf v) noexcept { store(p, v); }
XK_INLINE void store_s(uint16_t* p, vf v) noexcept { store_half(p, v); }
XK_INLINE void store_part_s(float* p, vf v, int n) noexcept { store_part(p, v, n); }
XK_INLINE void store_part_s(uint16_t* p, vf v, int n) noexcept { store_part_half(p, v, n); }
XK_INLINE float value_s(float v) noexcept { return v; }
XK_INLINE float value_s(uint16_t v) noexcept { return half_bits_to_float(v); }
XK_INLINE void put_s(float* p, float v) noexcept { *p = v; }
XK_INLINE void put_s(uint16_t* p, float v) noexcept { *p = float_to_half_bits(v); }

/// Rows of more than W classes, in storage S (float, or float16 bits with e kept in scratch).
/// kCap: soft-capped logits; t = tanh(x / s) is stored where e would go in sweep B and e is
/// recomputed from it in sweep C (so the gradient may alias x), times 1 - t^2.
template <typename S, bool kCap = false>
int64_t rows_wide(const SoftmaxJob& jb) {
  constexpr bool kHalf = std::is_same_v<S, uint16_t>;
  const S* xs = nullptr;
  S* ds = nullptr;
  S* ps = nullptr;
  if constexpr (kHalf) {
    xs = jb.xh;
    ds = jb.diffh;
    ps = jb.probh;
  } else {
    xs = jb.x;
    ds = jb.diff;
    ps = jb.prob;
  }
  const int64_t C = jb.channels;
  const int64_t full = C / W * W;
  const int tail = static_cast<int>(C - full);
  // Rows of at least W elements end with one full vector over their last W (see sweep B).
  const bool overlap = tail && C > W;
  // Rows per batch: the e of a batch stay in L1 between sweeps B and C.
  const int64_t batch = C >= 4096 ? 1 : (C >= 256 ? 4 : W);
  // float16 rows of a batch that fits in L1 as float32 are widened once, in sweep A, into the
  // scratch that later holds e, and sweep B reads them from there; longer rows are widened again.
  const bool widened = kHalf && batch * C <= 4096;
  const vi lanes = iota();
  const vf vcs = splat(static_cast<float>(kCap ? jb.softcap : 1.0));
  const vf vinv = splat(static_cast<float>(kCap ? 1.0 / jb.softcap : 1.0));
  for (int64_t r0 = 0; r0 < jb.count; r0 += batch) {
    int n = static_cast<int>(std::min<int64_t>(batch, jb.count - r0));
    double other[W];
    float ey[W], zy[W], mx[W], ty[W];
    alignas(64) float tails[W][W];
    // Sweep A for the whole batch first, so that a bad row is handed back untouched.
    bool stop = false;
    for (int k = 0; k < n; ++k) {
      const S* x = xs + (r0 + k) * C;
      vf vm = splat(-kFloatInf);
      vi bad = splat_i(0);
      float* const wide = widened ? jb.scratch + k * C : nullptr;
      for (int64_t c = 0; c < full; c += W) {
        const vf v = load_s(x + c);
        if (wide) store(wide + c, v);
        bad |= (v != v);
        vm = max_keep(vm, v);
      }
      if (tail) {  // overlapped: the row's last W logits; else the tail, padded with -inf
        const vf v = overlap ? load_s(x + C - W) : load_part_s(x + full, tail, -kFloatInf);
        if (wide && overlap) store(wide + C - W, v);
        bad |= (v != v);
        vm = max_keep(vm, v);
      }
      const float m = hmax(vm);
      if (any(bad) || !std::isfinite(m)) {
        n = k;
        stop = true;
        break;
      }
      mx[k] = kCap ? get(tanh_v(splat(m) * vinv) * vcs, 0) : m;
    }
    if (n == 0) return r0;
    for (int k = 0; k < n; ++k) {
      const int64_t r = r0 + k;
      const S* x = xs + r * C;
      // Where e goes between sweeps B and C: the float32 output, or scratch for float16.
      float* st = nullptr;
      if constexpr (kHalf) {
        st = (ds || ps) ? jb.scratch + k * C : nullptr;
      } else {
        st = ds ? ds + r * C : (ps ? ps + r * C : nullptr);
      }
      const int32_t y = jb.y[r];
      const float m = mx[k];
      ty[k] = 0.0f;
      if constexpr (kCap) {
        if (y >= 0) ty[k] = get(tanh_v(splat(value_s(x[y])) * vinv), 0);
        zy[k] = y >= 0 ? get(splat(ty[k]) * vcs, 0) - m : 0.0f;
      } else {
        zy[k] = y >= 0 ? value_s(x[y]) - m : 0.0f;
      }
      if (y == kSkip && !ps) {  // nothing to compute: loss 0, gradient 0
        other[k] = 1.0;
        ey[k] = 1.0f;
        continue;
      }
      const vf vm = splat(m);
      const int64_t ych = y >= 0 ? y / W * W : -1;
      PartialSum acc;
      float e_label = 0.0f;
      // While this batch is computed in cache, the next one is fetched: one line of its logits
      // per vector here (the same offset one batch on), so memory and arithmetic overlap.
      const S* ahead = r0 + batch < jb.count ? x + batch * C : nullptr;
      // float16 outputs are first touched in sweep C; their lines are fetched for writing here.
      S* const out_ahead = kHalf ? (ds ? ds + r * C : (ps ? ps + r * C : nullptr)) : nullptr;
      // An overlapped tail is read before the loop stores anything (the gradient may alias x,
      // and float16 rows' e overwrite the widened row in scratch).
      const vf last = !overlap ? splat(0.0f)
                               : (widened ? load(jb.scratch + k * C + C - W) : load_s(x + C - W));
      for (int64_t c = 0; c < full; c += W) {
        if (ahead) __builtin_prefetch(ahead + c);
        if (out_ahead) __builtin_prefetch(out_ahead + c, 1);
        vf v = widened ? load(jb.scratch + k * C + c) : load_s(x + c);
        vf t = v;
        if constexpr (kCap) {
          t = tanh_v(v * vinv);
          v = t * vcs;
        }
        vf e = exp_nonpos(v - vm);
        if (st) store(st + c, kCap ? t : e);
        if (c == ych) {
          e_label = get(e, static_cast<int>(y - c));
          e = sel(lanes == splat_i(static_cast<int32_t>(y - c)), splat(0.0f), e);
        }
        acc.add(e);
      }
      if (tail && overlap) {
        // Full-width loads and stores (masked stores are slow on several x86 cores): lanes
        // below W - tail repeat the loop's last elements, with the same values, and are left
        // out of the sum.
        vf v = last;
        vf t = v;
        if constexpr (kCap) {
          t = tanh_v(v * vinv);
          v = t * vcs;
        }
        vf e = exp_nonpos(v - vm);
        if (st) store(st + C - W, kCap ? t : e);
        if (y >= full) {
          e_label = get(e, static_cast<int>(y - (C - W)));
          e = sel(lanes == splat_i(static_cast<int32_t>(y - (C - W))), splat(0.0f), e);
        }
        acc.add(sel(lanes >= splat_i(W - tail), e, splat(0.0f)));
      } else if (tail) {
        // A row shorter than W (float16): its e stay in a local buffer (a masked store read
        // back by a masked load would not be forwarded and would stall sweep C).
        vf v = load_part_s(x + full, tail, -kFloatInf);
        vf t = v;
        if constexpr (kCap) {
          t = tanh_v(v * vinv);
          v = t * vcs;
        }
        // The padding lanes (-inf) give e = 0 (capped: -s, masked).
        vf e = exp_nonpos(v - vm);
        if constexpr (kCap) e = sel(splat_i(tail - 1) >= lanes, e, splat(0.0f));
        store(tails[k], kCap ? t : e);
        if (full == ych) {
          e_label = get(e, static_cast<int>(y - full));
          e = sel(lanes == splat_i(static_cast<int32_t>(y - full)), splat(0.0f), e);
        }
        acc.add(e);
      }
      other[k] = acc.total();
      ey[k] = e_label;
    }
    Finish f;
    finish_rows(n, other, ey, zy, jb.y + r0, jb.a + r0, jb.grad_scale, jb.cap, jb.loss + r0, f,
                mx, jb.z_loss);
    for (int k = 0; k < n; ++k) {
      const int64_t r = r0 + k;
      const int32_t y = jb.y[r];
      S* d = ds ? ds + r * C : nullptr;
      S* p = ps ? ps + r * C : nullptr;
      if (y == kSkip && !p) {
        if (d) std::memset(d, 0, static_cast<size_t>(C) * sizeof(S));
        continue;
      }
      const float* st = nullptr;
      if constexpr (kHalf) {
        st = (d || p) ? jb.scratch + k * C : nullptr;
      } else {
        st = d ? d : p;
      }
      if (!st) continue;
      const vf pinv = splat(f.pinv[k]);
      const vf sc = splat(f.scale[k]);
      const vf vm = splat(mx[k]);
      const vf last = overlap ? load(st + C - W) : splat(0.0f);  // before the loop's stores
      for (int64_t c = 0; c < full; c += W) {
        vf e = load(st + c);
        vf dsc = sc;
        if constexpr (kCap) {
          const vf t = e;
          e = exp_nonpos(t * vcs - vm);
          dsc = sc * (1.0f - t * t);
        }
        if (p) store_s(p + c, e * pinv);
        if (d) store_s(d + c, e * dsc);
      }
      if (tail) {
        vf e = overlap ? last : load(tails[k]);
        vf dsc = sc;
        if constexpr (kCap) {
          const vf t = e;
          e = exp_nonpos(t * vcs - vm);
          dsc = sc * (1.0f - t * t);
        }
        if (overlap) {
          if (p) store_s(p + C - W, e * pinv);
          if (d) store_s(d + C - W, e * dsc);
        } else {
          if (p) store_part_s(p + full, e * pinv, tail);
          if (d) store_part_s(d + full, e * dsc, tail);
        }
      }
      if (d && y >= 0) put_s(d + y, kCap ? f.gy[k] * (1.0f - ty[k] * ty[k]) : f.gy[k]);
    }
    if (stop) return r0 + n;
  }
  return jb.count;
}


int64_t softmax_rows_wide(const SoftmaxJob& jb) {
  return jb.softcap > 0.0 ? rows_wide<float, true>(jb) : rows_wide<float>(jb);
}

int64_t softmax_rows_half(const SoftmaxJob& jb) {
  return jb.softcap > 0.0 ? rows_wide<uint16_t, true>(jb) : rows_wide<uint16_t>(jb);
}

int64_t softmax_rows(const SoftmaxJob& jb) {
  return jb.channels <= W ? softmax_rows_narrow(jb) : softmax_rows_wide(jb);
}

// The fewest classes for which position_groups takes the labels out of its sweeps (`split`).
// That saves a comparison and a few selects per class vector and costs two scalar loops of 16
// positions per group. Measured on one Zen 5 core, both ways bit-identical
// (benchmarks/ab_builds.py): with AVX-512's mask registers the selects are cheap, and without
// the split 21 classes ran 11-16% faster, 40-64 3-9%, 100-256 even; on AVX2 and on 4-lane parts
// the split pays above the class counts the narrow kernels take (softmax_positions), so there
// every call that reaches position_groups uses it.
#if defined(__AVX512F__)
constexpr int64_t kSplitClasses = 65;
#else
constexpr int64_t kSplitClasses = 0;
#endif

/// G consecutive groups of W positions starting at group g0. When `packed`, sweep A copies the
/// logits into pack as a (C, G*W) block, so sweeps B and C read contiguous lines instead of C
/// lines `inner` floats apart (for strides near a multiple of 4 KiB those share one L1 set and
/// evict each other); several groups at once make each visit to a class row G lines long.
/// Returns false, having written nothing, when a logit is NaN or infinite.
/// kCap: soft-capped logits, as in rows_wide (t stored in sweep B, e recomputed in sweep C).
template <int G, bool kCap>
bool position_groups(const SoftmaxJob& jb, int64_t g0, float* pack, bool packed) {
  const int64_t C = jb.channels, inner = jb.inner;
  constexpr int S = G * W;
  const int64_t j0 = g0 * W;
  const float* x = jb.x + j0;
  vf vm[G];
  vi bad = splat_i(0);
  for (int q = 0; q < G; ++q) {
    vm[q] = load(x + q * W);
    bad |= (vm[q] != vm[q]);
    if (packed) store(pack + q * W, vm[q]);
  }
  for (int64_t c = 1; c < C; ++c) {
    for (int q = 0; q < G; ++q) {
      const vf v = load(x + c * inner + q * W);
      if (packed) store(pack + c * S + q * W, v);
      bad |= (v != v);
      vm[q] = max_keep(vm[q], v);
    }
  }
  for (int q = 0; q < G; ++q) bad |= nonfinite(vm[q]);
  if (any(bad)) return false;
  const vf vcs = splat(static_cast<float>(kCap ? jb.softcap : 1.0));
  const vf vinv = splat(static_cast<float>(kCap ? 1.0 / jb.softcap : 1.0));
  if constexpr (kCap) {
    for (int q = 0; q < G; ++q) vm[q] = tanh_v(vm[q] * vinv) * vcs;
  }
  float* st = jb.diff ? jb.diff + j0 : (jb.prob ? jb.prob + j0 : nullptr);
  PartialSum acc[G];
  vf vey[G], vzy[G];  // e and x - max at the label (x read before any in-place write)
  vi vy[G];
  for (int q = 0; q < G; ++q) {
    vey[q] = splat(0.0f);
    vzy[q] = splat(0.0f);
    vy[q] = load_i(jb.y + j0 + q * W);
  }
  // Packed (and not soft-capped), the labels are taken out of the sweeps: each position's
  // labelled logit is read from the pack and replaced there by -inf, whose e is 0, so sweep B
  // sums every e as it comes and sweep C writes e * scale everywhere; the label's e (from the
  // same z, so the same bits), the gradient and the softmax at the label are put in per
  // position. Per class vector that is one comparison and three selects fewer in sweep B and
  // one comparison and two selects fewer in sweep C; same results bit for bit.
  const bool split = !kCap && packed && C >= kSplitClasses;
  if (split) {
    for (int q = 0; q < G; ++q) {
      alignas(64) float xy[W];
      for (int k = 0; k < W; ++k) {
        const int32_t yk = jb.y[j0 + q * W + k];
        xy[k] = 0.0f;
        if (yk < 0) continue;
        float* const at = pack + static_cast<int64_t>(yk) * S + q * W + k;
        xy[k] = *at;
        *at = -kFloatInf;
      }
      const vi labelled = vy[q] >= splat_i(0);
      vzy[q] = sel(labelled, load(xy) - vm[q], splat(0.0f));
      vey[q] = sel(labelled, exp_nonpos(vzy[q]), splat(0.0f));
    }
  }
  // The next groups' lines of each class row are fetched while these are computed in cache.
  const bool ahead = packed && g0 + 2 * G <= jb.count;
  // Group by group over the classes (the pack is in L1): one group's sums, label values and
  // labels stay in registers (all G groups' would not fit); each lane sums its classes in the
  // same order either way.
  for (int q = 0; q < G && split; ++q) {
    const vf m = vm[q];
    PartialSum sum = acc[q];
    for (int64_t c = 0; c < C; ++c) {
      if (ahead) __builtin_prefetch(x + c * inner + S + q * W);
      if (jb.diff) __builtin_prefetch(jb.diff + j0 + c * inner + q * W, 1);
      float* const pc = pack + c * S + q * W;
      const vf e = exp_nonpos(load(pc) - m);
      if (st) store(pc, e);
      sum.add(e);
    }
    acc[q] = sum;
  }
  for (int q = 0; q < G && !split; ++q) {
    // This group's running values as locals (the compiler keeps them in registers; indexed by
    // q they went through memory every class, a store-to-load chain per add).
    const vf m = vm[q];
    const vi y = vy[q];
    vf ey = vey[q], zy = vzy[q];
    PartialSum sum = acc[q];
    for (int64_t c = 0; c < C; ++c) {
      const vi vc = splat_i(static_cast<int32_t>(c));
      if (ahead) __builtin_prefetch(x + c * inner + S + q * W);
      // The gradient's lines that sweep C writes, fetched for writing while the exps run.
      if (packed && jb.diff) __builtin_prefetch(jb.diff + j0 + c * inner + q * W, 1);
      vf v = load(packed ? pack + c * S + q * W : x + c * inner + q * W);
      vf t = v;
      if constexpr (kCap) {
        t = tanh_v(v * vinv);
        v = t * vcs;
      }
      const vf z = v - m;
      const vf e = exp_nonpos(z);
      if (st) store(packed ? pack + c * S + q * W : st + c * inner + q * W, kCap ? t : e);
      const vi at = y == vc;
      ey = sel(at, e, ey);
      zy = sel(at, z, zy);
      sum.add(sel(at, splat(0.0f), e));
    }
    vey[q] = ey;
    vzy[q] = zy;
    acc[q] = sum;
  }
  Finish f[G];
  for (int q = 0; q < G; ++q) {
    double other[W];
    float ey[W], zy[W], mx[W];
    acc[q].lanes(other);
    store(ey, vey[q]);
    store(zy, vzy[q]);
    store(mx, vm[q]);
    finish_rows(W, other, ey, zy, jb.y + j0 + q * W, jb.a + j0 + q * W, jb.grad_scale,
                jb.cap, jb.loss + j0 + q * W, f[q], mx, jb.z_loss);
  }
  if (!st) return true;
  float* d = jb.diff ? jb.diff + j0 : nullptr;
  float* p = jb.prob ? jb.prob + j0 : nullptr;
  vf pinv[G], sc[G], gy[G];
  vi skip[G];
  for (int q = 0; q < G; ++q) {
    pinv[q] = load(f[q].pinv);
    sc[q] = load(f[q].scale);
    gy[q] = load(f[q].gy);
    skip[q] = vy[q] == splat_i(kSkip);
  }
  // Class by class, the G groups' lines of each output row in order: each visit to a class row
  // writes G consecutive lines (group by group, every store went to another row, and the
  // write misses of the C rows queued behind each other).
  if (split) {
    for (int64_t c = 0; c < C; ++c) {
      for (int q = 0; q < G; ++q) {
        const vf e = load(pack + c * S + q * W);
        if (p) store(p + c * inner + q * W, e * pinv[q]);
        if (d) store(d + c * inner + q * W, e * sc[q]);  // 0 at the label; scale 0 if skipped
      }
    }
    for (int q = 0; q < G; ++q) {
      alignas(64) float pv[W];
      store(pv, vey[q] * pinv[q]);
      for (int k = 0; k < W; ++k) {
        const int32_t yk = jb.y[j0 + q * W + k];
        if (yk < 0) continue;
        const int64_t at = static_cast<int64_t>(yk) * inner + q * W + k;
        if (p) p[at] = pv[k];
        if (d) d[at] = f[q].gy[k];
      }
    }
    return true;
  }
  for (int64_t c = 0; c < C; ++c) {
    const vi vc = splat_i(static_cast<int32_t>(c));
    for (int q = 0; q < G; ++q) {
      vf e = load(packed ? pack + c * S + q * W : st + c * inner + q * W);
      vf dc = splat(1.0f);
      if constexpr (kCap) {
        const vf t = e;
        e = exp_nonpos(t * vcs - vm[q]);
        dc = 1.0f - t * t;
      }
      if (p) store(p + c * inner + q * W, e * pinv[q]);
      if (d) {
        vf gv = sel(vy[q] == vc, gy[q], e * sc[q]);
        if constexpr (kCap) gv = gv * dc;
        store(d + c * inner + q * W, sel(skip[q], splat(0.0f), gv));
      }
    }
  }
  return true;
}

// The pack of position_groups: at most 32768 floats (128 KiB, 8 groups of 16 positions for up
// to 256 classes). Up to 4096 floats it is on the stack; above, a buffer of the thread's, kept
// between calls (and if that cannot be allocated, fewer groups at a time on the stack).
constexpr int64_t kPackMax = 32768;
constexpr int64_t kPackStack = 4096;

float* thread_pack(int64_t floats) noexcept {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats + 16) {
    try {
      buf.resize(static_cast<size_t>(floats + 16));
    } catch (...) {
      return nullptr;
    }
  }
  const auto p = (reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63};
  return reinterpret_cast<float*>(p);
}

template <bool kCap>
int64_t positions_impl(const SoftmaxJob& jb) {
  alignas(64) float stack_pack[kPackStack];
  const int64_t C = jb.channels;
  // Eight groups at a time where their pack fits, each visit to a class row then reads (and
  // sweep C writes) 8 consecutive lines: with one line per visit, rows of 100-256 classes took
  // 1.5-3x as long (the lines of one group are C strides apart, and for strides that are a
  // multiple of 4 KiB they all fall into one L1 set and a few L2 sets).
  int64_t room = kPackStack;
  float* pack = stack_pack;
  if (C * 8 * W > kPackStack && C * W <= kPackMax) {
    const int64_t want = C * 8 * W <= kPackMax   ? C * 8 * W
                         : C * 4 * W <= kPackMax ? C * 4 * W
                                                 : C * W;
    if (float* p = thread_pack(want)) {
      pack = p;
      room = want;
    }
  }
  int64_t g = 0;
  while (g < jb.count) {
    if (g + 8 <= jb.count && C * 8 * W <= room && position_groups<8, kCap>(jb, g, pack, true)) {
      g += 8;
      continue;
    }
    if (g + 4 <= jb.count && C * 4 * W <= room && position_groups<4, kCap>(jb, g, pack, true)) {
      g += 4;
      continue;
    }
    if (!position_groups<1, kCap>(jb, g, pack, C * W <= room)) return g;
    ++g;
  }
  return jb.count;
}

constexpr int64_t kNarrowPositions = kNat == 4 ? 10 : W;

int64_t softmax_positions(const SoftmaxJob& jb) {
  if (jb.channels == 2 && jb.softcap == 0.0 && jb.z_loss == 0.0 && jb.prob == nullptr) {
    return binary_positions(jb);
  }
  // Up to 16 classes (10 on 4-lane parts, where 16 classes of 4 registers each spill), the
  // kernel compiled for the class count: 8-25% faster than position_groups on AVX2 and AVX-512
  // (3-16 classes, one Zen 5 core), 14% at 3 classes on 4 lanes, even at 10, 5% slower at 16.
  if (jb.softcap == 0.0 && jb.channels >= 2 && jb.channels <= kNarrowPositions) {
    return narrow_dispatch<true>(jb, std::make_integer_sequence<int, W - 1>{});
  }
  return jb.softcap > 0.0 ? positions_impl<true>(jb) : positions_impl<false>(jb);
}


int64_t sigmoid(const SigmoidJob& jb, double* sum) {
  const int64_t full = jb.n / W * W;
  // grad_scale = hi + lo in two floats: g hi + g lo is g grad_scale within a rounding or so,
  // without widening every gradient to double.
  const float hi = static_cast<float>(jb.grad_scale);
  const vf gs = splat(hi);
  const vf gs_lo = splat(static_cast<float>(jb.grad_scale - static_cast<double>(hi)));
  const bool exact_scale = static_cast<double>(hi) == jb.grad_scale;
  // One vector: its losses into acc, its outputs stored.
  const auto step = [&](int64_t i, vf x, PartialSum& acc) XK_INLINE_LAMBDA {
    const vf t = load(jb.t + i);
    const vi pos = x >= splat(0.0f);
    const vf ax = sel(pos, x, -x);
    const vf e = exp_nonpos(-ax);            // exp(-|x|) in (0, 1]
    const vf l = sel(pos, x * (1.0f - t), -x * t) + log1p_unit(e);
    acc.add(l);
    if (jb.loss) store(jb.loss + i, l);
    if (jb.diff) {
      const vf q = e / (e + 1.0f);            // sigmoid(-|x|)
      const vf g = sel(pos, (1.0f - t) - q, q - t);
      if (exact_scale) {
        store(jb.diff + i, g * gs);
      } else {
        store(jb.diff + i, g * gs + g * gs_lo);
      }
    }
  };
  // Two vectors per step, on two sums (combined in a fixed order), so that the long chains of
  // dependent operations of one vector overlap with those of the other.
  PartialSum acc[2];
  int64_t i = 0;
  for (; i + 2 * W <= full; i += 2 * W) {
    const vf x0 = load(jb.x + i);
    const vf x1 = load(jb.x + i + W);
    if (any(nonfinite(x0) | nonfinite(x1))) break;
    step(i, x0, acc[0]);
    step(i + W, x1, acc[1]);
  }
  for (; i < full; i += W) {
    const vf x = load(jb.x + i);
    if (any(nonfinite(x))) break;
    step(i, x, acc[0]);
  }
  *sum = acc[0].total() + acc[1].total();
  return i;
}

void half_to_float(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(
                                  reinterpret_cast<const __m256i*>(in + i))));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                  reinterpret_cast<const __m128i*>(in + i))));
  }
#endif
  for (; i < n; ++i) out[i] = half_bits_to_float(in[i]);
}

void float_to_half(const float* in, uint16_t* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; i < n; ++i) out[i] = float_to_half_bits(in[i]);
}

// bfloat16: native-width integer vectors (one instruction set's registers), scalar tails.
typedef uint32_t nu __attribute__((vector_size(kNat * 4)));
typedef uint16_t nu16 __attribute__((vector_size(kNat * 2)));

void bf16_to_float(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + kNat <= n; i += kNat) {
    nu16 h;
    std::memcpy(&h, in + i, sizeof h);
    nu u = __builtin_convertvector(h, nu) << 16;
    const nu nan = (nu)((u & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
    u |= nan & 0x00400000u;
    std::memcpy(out + i, &u, sizeof u);
  }
  for (; i < n; ++i) out[i] = bf16_bits_to_float(in[i]);
}

void float_to_bf16(const float* in, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + kNat <= n; i += kNat) {
    nu u;
    std::memcpy(&u, in + i, sizeof u);
    const nu nan = (nu)((u & 0x7fffffffu) > 0x7f800000u);
    const nu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const nu quiet = (u >> 16) | 0x0040u;
    const nu16 h = __builtin_convertvector((nan & quiet) | (~nan & rounded), nu16);
    std::memcpy(out + i, &h, sizeof h);
  }
  for (; i < n; ++i) out[i] = float_to_bf16_bits(in[i]);
}

const Kernels table = {XENTKIT_ISA_NAME, softmax_rows,    softmax_rows_half, softmax_positions,
                       sigmoid,          half_to_float,   float_to_half,     bf16_to_float,
                       float_to_bf16};

}  // namespace

const Kernels* get() noexcept { return &table; }

}  // namespace xentkit::detail::fast::XENTKIT_ISA
