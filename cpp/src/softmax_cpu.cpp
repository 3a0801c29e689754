// The softmax cross-entropy kernel family on the CPU. Scores are viewed as (outer, C, inner): the
// softmax runs over C with stride `inner`. Work is cut into tiles of up to kTile positions that
// share (o, and a run of inner indices), so every sweep over the C channels is a run of
// contiguous loads. Per tile, three sweeps while the tile is in cache:
//   A: running max (and its first index) per position;
//   B: e = exp(x - max) once per element, summed in double; the sums of the classes other than
//      the label and other than the argmax are kept apart, and so are the weighted sums the
//      smoothing and probability-target losses need; e is stored in an output buffer when there
//      is one;
//   C: the outputs: p = e / sum, the gradient, log p.
// The labelled entry of the gradient is written as -sum_other / sum, and log(sum) as
// log1p(sum_other_than_argmax) (the argmax has e = 1 exactly), so both keep their relative
// precision when p rounds to 1.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.hpp"
#include "half_bits.hpp"
#include "kernels.hpp"
#include "simd/fast.hpp"
#include "xentkit/half.hpp"
#include "xentkit/detail/labels.hpp"
#include "xentkit/detail/parallel.hpp"

namespace xentkit::detail {
namespace {

constexpr int64_t kTile = 256;                 // positions per tile along `inner`
constexpr int64_t kBlockElements = 1 << 15;    // target elements per deterministic block
constexpr double kInf = std::numeric_limits<double>::infinity();

/// Per-call constants shared by every tile.
struct Shared {
  double total_weight;  // sum of the class weights (C without weights)
  double keep;          // 1 - eps
  double spread;        // eps / C
};

template <typename T>
inline double class_weight(const T* w, int64_t c) noexcept {
  return w ? static_cast<double>(w[c]) : 1.0;
}

/// w * v, where a zero weight removes an infinite term (0 * inf = 0: the limit) but not a NaN.
inline double weighted(double w, double v) noexcept {
  return (w == 0.0 && std::isinf(v)) ? 0.0 : w * v;
}

/// Runs one softmax tile: positions s0 .. s0+w-1 of outer index o. Returns the sum of its losses.
/// kLogSum: the call needs log(sum) (smoothing, probability targets, log-softmax, z-loss); without
/// it the sweeps keep only what a plain class-index loss needs.
/// kCap: soft-capping (pb.softcap > 0): every logit x is read as x' = s tanh(x / s). The max of
/// the capped logits is s tanh(max / s) (tanh is monotonic); sweep B stores t = tanh(x / s) where
/// e would go, sweep C recomputes e = exp(s t - max') from it (so an in-place gradient works) and
/// multiplies the gradient by dx'/dx = 1 - t^2. log_prob is not soft-capped (no caller asks).
template <bool kLogSum, bool kCap = false, typename T, typename L>
double xent_tile(const SoftmaxProblem<T, L>& pb, const Shared& sh, int64_t o, int64_t s0,
                 int64_t w) {
  const int64_t C = pb.channels, inner = pb.inner;
  const int64_t off = o * C * inner + s0;
  const T* base = pb.x + off;
  const L* lab = pb.labels ? pb.labels + o * inner + s0 : nullptr;
  const T* soft = pb.soft ? pb.soft + off : nullptr;
  const T* cw = pb.class_weight;
  T* store = pb.diff ? pb.diff : pb.prob;
  T* sbase = store ? store + off : nullptr;
  const bool smooth = lab && pb.smoothing > 0.0;
  const T cap_s = static_cast<T>(kCap ? pb.softcap : 1.0);
  const auto capped = [cap_s](T v) -> T { return cap_s * std::tanh(v / cap_s); };

  int64_t y[kTile], am[kTile];
  T m[kTile];
  double zy[kTile], sum[kTile], other_y[kTile], other_m[kTile], wsum[kTile], qsum[kTile];
  bool posinf[kTile];

  // Sweep A: the max per position and its first index.
  for (int64_t j = 0; j < w; ++j) {
    y[j] = lab ? classify_label(lab[j], C, pb.has_ignore, pb.ignore) : kIgnored;
    m[j] = base[j];
    am[j] = 0;
  }
  for (int64_t c = 1; c < C; ++c) {
    const T* row = base + c * inner;
    for (int64_t j = 0; j < w; ++j) {
      const T v = row[j];
      if (v > m[j]) {
        m[j] = v;
        am[j] = c;
      }
    }
  }
  // The labelled logit relative to the max, read before sweep B may overwrite x (in place).
  // With a +inf logit the limit is taken: the +inf entries share the probability mass (capped
  // logits are finite or NaN).
  for (int64_t j = 0; j < w; ++j) {
    if constexpr (kCap) m[j] = capped(m[j]);
    posinf[j] = (static_cast<double>(m[j]) == kInf);
    sum[j] = other_y[j] = other_m[j] = wsum[j] = qsum[j] = 0.0;
    zy[j] = 0.0;
    if (y[j] >= 0) {
      const T raw = base[y[j] * inner + j];
      const double v = static_cast<double>(kCap ? capped(raw) : raw);
      zy[j] = posinf[j] ? (v == kInf ? 0.0 : (std::isnan(v) ? v : -kInf))
                        : v - static_cast<double>(m[j]);
    }
  }
  // Sweep B: exp once per element, in the input's precision; sums in double.
  for (int64_t c = 0; c < C; ++c) {
    const T* row = base + c * inner;
    const T* qrow = soft ? soft + c * inner : nullptr;
    T* srow = sbase ? sbase + c * inner : nullptr;
    const double wc = class_weight(cw, c);
    for (int64_t j = 0; j < w; ++j) {
      T v = row[j];
      T t = T(0);
      if constexpr (kCap) {
        t = std::tanh(v / cap_s);
        v = cap_s * t;
      }
      const bool at_inf = posinf[j] && v == static_cast<T>(kInf);
      const T e = at_inf ? T(1) : std::exp(v - m[j]);
      const double ed = static_cast<double>(e);
      sum[j] += ed;
      if (c != y[j]) other_y[j] += ed;
      if constexpr (kLogSum) {
        if (c != am[j]) other_m[j] += ed;
      }
      if (kLogSum && (smooth || qrow)) {
        // x - max in double, with the +inf limit; a zero coefficient removes a -inf term.
        const double d = at_inf ? 0.0
                         : posinf[j] ? (std::isnan(static_cast<double>(v)) ? NAN : -kInf)
                                     : static_cast<double>(v) - static_cast<double>(m[j]);
        if (smooth) {
          wsum[j] += weighted(wc, d);
        } else {
          const double qw = wc * (sh.keep * static_cast<double>(qrow[j]) + sh.spread);
          qsum[j] += qw;
          wsum[j] += weighted(qw, d);
        }
      }
      if (srow) srow[j] = kCap ? t : e;
    }
  }
  // Losses. -log p_y = log(sum / e_y) = log1p(sum_other * exp(-(x_y - max))), which keeps its
  // relative precision when p_y rounds to 1; capped, NaN stays NaN. log(sum) =
  // log1p(sum_other_than_argmax).
  double acc = 0.0;
  double coef_y[kTile], coef_z[kTile];
  for (int64_t j = 0; j < w; ++j) {
    double l = 0.0;
    coef_y[j] = 0.0;
    coef_z[j] = 0.0;
    if (lab) {
      if (y[j] >= 0) {
        const double a = sh.keep * class_weight(cw, y[j]);
        coef_y[j] = a;
        // When sum_other / e_y overflows, the label is far below the max, so sum_other >= 1 (it
        // holds the max's e = 1) and log(sum_other + e_y) - zy loses nothing.
        const double ratio = other_y[j] * std::exp(-zy[j]);
        double nll = std::isinf(ratio) ? std::log(other_y[j] + std::exp(zy[j])) - zy[j]
                                       : std::log1p(ratio);
        if (nll > pb.cap) nll = pb.cap;
        l = weighted(a, nll);
        if (smooth) l += sh.spread * (sh.total_weight * std::log1p(other_m[j]) - wsum[j]);
        if (kLogSum && pb.z_loss > 0.0) {
          // z-loss: z w[y] lse^2, lse = max + log(sum); its gradient is 2 z w[y] lse softmax.
          const double wy = class_weight(cw, y[j]);
          const double lse = static_cast<double>(m[j]) + std::log1p(other_m[j]);
          l += weighted(wy, pb.z_loss * lse * lse);
          coef_z[j] = 2.0 * pb.z_loss * wy * lse;
        }
      }
    } else if (soft) {
      l = qsum[j] * std::log1p(other_m[j]) - wsum[j];
    }
    if (pb.loss) pb.loss[o * inner + s0 + j] = static_cast<T>(l);
    acc += l;
  }
  if (!store && !pb.log_prob) return acc;

  // Sweep C: probabilities, gradient and log-probabilities, with one division per position.
  double inv[kTile], logsum[kTile];
  for (int64_t j = 0; j < w; ++j) {
    inv[j] = 1.0 / sum[j];
    logsum[j] = kLogSum ? std::log1p(other_m[j]) : 0.0;
    coef_y[j] *= pb.grad_scale;
    coef_z[j] *= pb.grad_scale;
  }
  const double spread_scale = sh.spread * pb.grad_scale;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t roff = off + c * inner;
    const T* srow = sbase ? sbase + c * inner : nullptr;
    T* prow = pb.prob ? pb.prob + roff : nullptr;
    T* drow = pb.diff ? pb.diff + roff : nullptr;
    T* lrow = pb.log_prob ? pb.log_prob + roff : nullptr;
    const T* xrow = base + c * inner;
    const T* qrow = soft ? soft + c * inner : nullptr;
    const double wc = class_weight(cw, c);
    for (int64_t j = 0; j < w; ++j) {
      if (lrow) {
        const T v = xrow[j];
        const double d = posinf[j] ? (v == static_cast<T>(kInf) ? 0.0 : static_cast<double>(v) - kInf)
                                   : static_cast<double>(v) - static_cast<double>(m[j]);
        lrow[j] = static_cast<T>(d - logsum[j]);
      }
      if (!srow) continue;
      double e, dcap = 1.0;
      if constexpr (kCap) {
        const T t = srow[j];
        e = static_cast<double>(std::exp(cap_s * t - m[j]));  // the bits of sweep B's e
        dcap = 1.0 - static_cast<double>(t) * static_cast<double>(t);
      } else {
        e = static_cast<double>(srow[j]);
      }
      const double p = e * inv[j];
      if (prow) prow[j] = static_cast<T>(p);
      if (!drow) continue;
      double g;
      if (lab) {
        if (y[j] < 0) {
          g = 0.0;
        } else {
          g = (c == y[j]) ? -(other_y[j] * inv[j]) * coef_y[j] : p * coef_y[j];
          if (smooth) g += spread_scale * (sh.total_weight * p - wc);
          if (kLogSum) g += coef_z[j] * p;
        }
      } else {
        const double qw = wc * (sh.keep * static_cast<double>(qrow[j]) + sh.spread);
        // Q p - qw; at the argmax, (Q - qw) - Q (1 - p) with 1 - p = sum_other / sum.
        g = (c == am[j]) ? (qsum[j] - qw) - qsum[j] * (other_m[j] * inv[j]) : qsum[j] * p - qw;
        g *= pb.grad_scale;
      }
      if constexpr (kCap) g *= dcap;
      drow[j] = static_cast<T>(g);
    }
  }
  return acc;
}

/// xent_tile with the sweeps the problem needs (log_sum: see softmax_xent) and soft-capping when
/// the problem asks for it; one branch per tile.
template <typename T, typename L>
double scalar_tile(const SoftmaxProblem<T, L>& pb, const Shared& sh, bool log_sum, int64_t o,
                   int64_t s0, int64_t w) {
  if (pb.softcap > 0.0) {
    return log_sum ? xent_tile<true, true>(pb, sh, o, s0, w)
                   : xent_tile<false, true>(pb, sh, o, s0, w);
  }
  return log_sum ? xent_tile<true>(pb, sh, o, s0, w) : xent_tile<false>(pb, sh, o, s0, w);
}

/// nll over one tile: l = -w[y] * x[y]; the gradient is -scale * w[y] at the label, 0 elsewhere.
template <typename T, typename L>
double nll_tile(const SoftmaxProblem<T, L>& pb, int64_t o, int64_t s0, int64_t w) {
  const int64_t C = pb.channels, inner = pb.inner;
  const int64_t off = o * C * inner + s0;
  const L* lab = pb.labels + o * inner + s0;
  int64_t y[kTile];
  double wy[kTile];
  double acc = 0.0;
  for (int64_t j = 0; j < w; ++j) {
    y[j] = classify_label(lab[j], C, pb.has_ignore, pb.ignore);
    wy[j] = y[j] >= 0 ? class_weight(pb.class_weight, y[j]) : 0.0;
    double l = 0.0;
    if (y[j] >= 0) l = weighted(-wy[j], static_cast<double>(pb.x[off + y[j] * inner + j]));
    if (pb.loss) pb.loss[o * inner + s0 + j] = static_cast<T>(l);
    acc += l;
  }
  if (pb.diff) {
    for (int64_t c = 0; c < C; ++c) {
      T* drow = pb.diff + off + c * inner;
      for (int64_t j = 0; j < w; ++j) {
        drow[j] = (c == y[j]) ? static_cast<T>(-pb.grad_scale * wy[j]) : T(0);
      }
    }
  }
  return acc;
}

// The label loops (the check before a call, the kernels' view of them) read 8 bytes per int64
// label, as many as a row of two logits: 64-bit vector comparisons (SSE4.2 and up) make them
// a fraction of a cycle per label.
// GCC on x86-64 Linux builds it for AVX2 as well as the baseline and picks one at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define XENTKIT_LABEL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define XENTKIT_LABEL_CLONES
#endif

/// kernel_labels' loop for validated integer labels without class weights (vectorised).
template <typename L>
XENTKIT_LABEL_CLONES void plain_labels(const L* lab, int64_t n, bool use_ignore, L ign,
                                       int32_t* y, double* a) {
  for (int64_t j = 0; j < n; ++j) {
    const bool skip = use_ignore && lab[j] == ign;
    y[j] = skip ? fast::kSkip : static_cast<int32_t>(lab[j]);
    a[j] = skip ? 0.0 : 1.0;
  }
}

/// The sum of loss[0 .. n) in four interleaved partial sums, combined in a fixed order (one
/// chain of dependent additions would cost a few cycles per row of a narrow call).
inline double chunk_sum(const double* loss, int64_t n) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    for (int k = 0; k < 4; ++k) s[k] += loss[j + k];
  }
  for (; j < n; ++j) s[0] += loss[j];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

/// The vector kernels' view of n labels: y = class, kSkip (ignored) or kNoLabel (no labels at
/// all), and a = the weight of the class.
template <typename L>
void kernel_labels(const SoftmaxProblem<float, L>& pb, const L* lab, int64_t n, int32_t* y,
                   double* a) {
  if constexpr (std::is_integral_v<L>) {
    // Validated integer labels are class indices as they stand, or the ignored label: a loop
    // without branches that the compiler vectorises.
    if (lab && !pb.class_weight) {
      const L ign = static_cast<L>(pb.ignore);
      plain_labels(lab, n, pb.has_ignore && static_cast<int64_t>(ign) == pb.ignore, ign, y, a);
      return;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = lab ? classify_label(lab[j], pb.channels, pb.has_ignore, pb.ignore) : -2;
    y[j] = c >= 0 ? static_cast<int32_t>(c) : (lab ? fast::kSkip : fast::kNoLabel);
    a[j] = c >= 0 ? class_weight(pb.class_weight, c) : 0.0;
  }
}

/// One tile (positions s0 .. s0+wt-1 of outer index o, class stride pb.inner) on the
/// vectorised positions kernel; a group it hands back and the last wt % 16 positions go to
/// xent_tile.
template <typename L>
double fast_tile(const SoftmaxProblem<float, L>& pb, const Shared& sh, const fast::Kernels& k,
                 fast::SoftmaxJob& job, int32_t* y, double* a, double* loss, int64_t o,
                 int64_t s0, int64_t wt) {
  const int64_t C = pb.channels, inner = pb.inner;
  const int64_t groups = wt / fast::kLanes;
  kernel_labels(pb, pb.labels ? pb.labels + o * inner + s0 : nullptr, wt, y, a);
  const int64_t off = o * C * inner + s0;
  job.inner = inner;
  double acc = 0.0;
  int64_t g = 0;
  while (g < groups) {
    const int64_t j = g * fast::kLanes;
    job.x = pb.x + off + j;
    job.diff = pb.diff ? pb.diff + off + j : nullptr;
    job.prob = pb.prob ? pb.prob + off + j : nullptr;
    job.count = groups - g;
    job.y = y + j;
    job.a = a + j;
    job.loss = loss + j;
    const int64_t done = k.softmax_positions(job);
    const int64_t n = done * fast::kLanes;
    if (pb.loss) {
      for (int64_t q = j; q < j + n; ++q) pb.loss[o * inner + s0 + q] = static_cast<float>(loss[q]);
    }
    // In four interleaved sums, as the rows' (one chain of dependent additions, one per
    // position, took a fifth of the time of two classes on the class axis).
    acc += chunk_sum(loss + j, n);
    g += done;
    if (g < groups) {  // a group with a NaN or infinite logit
      acc += scalar_tile(pb, sh, pb.z_loss > 0.0, o, s0 + g * fast::kLanes, fast::kLanes);
      ++g;
    }
  }
  if (groups * fast::kLanes < wt) {
    acc += scalar_tile(pb, sh, pb.z_loss > 0.0, o, s0 + groups * fast::kLanes,
                       wt - groups * fast::kLanes);
  }
  return acc;
}

/// The tasks [t0, t1) of a float32 class-index (or target-free) call on the vectorised kernels;
/// rows or groups they hand back, and the positions left over at the end of a tile, go to
/// xent_tile. The sum runs position by position (rows: in sums of four, see chunk_sum), in an
/// order fixed by the tasks, never by the thread count.
template <typename L>
double fast_tasks(const SoftmaxProblem<float, L>& pb, const Shared& sh, const fast::Kernels& k,
                  int64_t t0, int64_t t1, int64_t w_max, int64_t tiles_per_outer) {
  constexpr int64_t kChunk = 256;
  const int64_t C = pb.channels, inner = pb.inner;
  int32_t y[kChunk];
  double a[kChunk], loss[kChunk];
  fast::SoftmaxJob job;
  job.channels = C;
  job.inner = inner;
  job.y = y;
  job.a = a;
  job.loss = loss;
  job.grad_scale = pb.grad_scale;
  job.cap = pb.cap;
  job.z_loss = pb.z_loss;
  job.softcap = pb.softcap;
  double acc = 0.0;
  if (inner == 1) {
    for (int64_t r0 = t0; r0 < t1;) {
      const int64_t n = std::min(kChunk, t1 - r0);
      kernel_labels(pb, pb.labels ? pb.labels + r0 : nullptr, n, y, a);
      int64_t i = 0;
      while (i < n) {
        job.x = pb.x + (r0 + i) * C;
        job.diff = pb.diff ? pb.diff + (r0 + i) * C : nullptr;
        job.prob = pb.prob ? pb.prob + (r0 + i) * C : nullptr;
        job.count = n - i;
        job.y = y + i;
        job.a = a + i;
        job.loss = loss + i;
        const int64_t done = k.softmax_rows(job);
        if (pb.loss) {
          for (int64_t j = i; j < i + done; ++j) pb.loss[r0 + j] = static_cast<float>(loss[j]);
        }
        acc += chunk_sum(loss + i, done);
        i += done;
        if (i < n) {  // a row with a NaN or infinite logit
          acc += scalar_tile(pb, sh, pb.z_loss > 0.0, r0 + i, 0, 1);
          ++i;
        }
      }
      r0 += n;
    }
    return acc;
  }
  // Class stride `inner`: each tile (C x wt positions, wt <= 64) is copied into a contiguous
  // scratch tile first. Rows of the tile sit `inner` floats apart in memory, and with strides near
  // a multiple of 4 KiB they would all fall into one set of the L1 cache and evict each other
  // between the sweeps; in the scratch tile they do not.
  thread_local std::vector<float> scratch;
  // (Up to 256 classes the kernel packs each group itself.)
  const bool stage = inner > w_max && C > 256 && C * w_max <= (int64_t{1} << 20);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t o = t / tiles_per_outer;
    const int64_t s0 = (t % tiles_per_outer) * w_max;
    const int64_t wt = std::min(w_max, inner - s0);
    const int64_t off = o * C * inner + s0;
    if (!stage) {
      acc += fast_tile(pb, sh, k, job, y, a, loss, o, s0, wt);
      continue;
    }
    const size_t tile = static_cast<size_t>(C * wt);
    if (scratch.size() < 2 * tile) scratch.resize(2 * tile);
    float* xs = scratch.data();
    float* ps = xs + tile;
    for (int64_t c = 0; c < C; ++c) {
      std::memcpy(xs + c * wt, pb.x + off + c * inner, static_cast<size_t>(wt) * sizeof(float));
    }
    SoftmaxProblem<float, L> lp = pb;
    lp.x = xs;
    lp.labels = pb.labels ? pb.labels + o * inner + s0 : nullptr;
    lp.outer = 1;
    lp.inner = wt;
    lp.diff = pb.diff ? xs : nullptr;
    lp.prob = pb.prob ? ps : nullptr;
    lp.loss = pb.loss ? pb.loss + o * inner + s0 : nullptr;
    acc += fast_tile(lp, sh, k, job, y, a, loss, 0, 0, wt);
    for (int64_t c = 0; c < C; ++c) {
      const size_t bytes = static_cast<size_t>(wt) * sizeof(float);
      if (pb.diff) std::memcpy(pb.diff + off + c * inner, xs + c * wt, bytes);
      if (pb.prob) std::memcpy(pb.prob + off + c * inner, ps + c * wt, bytes);
    }
  }
  return acc;
}

/// The tasks [t0, t1) of one block, on the float pointers of pb.
template <typename T, typename L>
double plain_tasks(const SoftmaxProblem<T, L>& pb, const Shared& sh, const fast::Kernels* vec,
                   bool log_sum, int64_t t0, int64_t t1, int64_t w_max, int64_t tiles_per_outer) {
  if constexpr (std::is_same_v<T, float>) {
    if (vec) return fast_tasks(pb, sh, *vec, t0, t1, w_max, tiles_per_outer);
  }
  double acc = 0.0;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t o = t / tiles_per_outer;
    const int64_t s0 = (t % tiles_per_outer) * w_max;
    const int64_t wt = std::min(w_max, pb.inner - s0);
    if (pb.op == SoftmaxOp::nll) {
      acc += nll_tile(pb, o, s0, wt);
    } else {
      acc += scalar_tile(pb, sh, log_sum, o, s0, wt);
    }
  }
  return acc;
}


template <typename L>
double half_tasks(const SoftmaxProblem<float, L>& pb, const Shared& sh, const fast::Kernels* vec,
                  bool log_sum, int64_t t0, int64_t t1, int64_t w_max, int64_t tiles_per_outer);

/// Rows [t0, t1) of a float16 class-index (or target-free) problem with more than 16 classes,
/// read and written in float16 by the vectorised rows kernel (e in float32 scratch); a row it
/// hands back goes through the staged scalar path. Same sums and bits as the staged path.
template <typename L>
double half_rows_fused(const SoftmaxProblem<float, L>& pb, const Shared& sh,
                       const fast::Kernels& k, int64_t t0, int64_t t1) {
  constexpr int64_t kChunk = 256;
  const HalfSoftmaxIO& h = *pb.half;
  const int64_t C = pb.channels;
  int32_t y[kChunk];
  double a[kChunk], loss[kChunk];
  thread_local std::vector<float> scratch;
  const size_t need = static_cast<size_t>(fast::kLanes * C);
  if (scratch.size() < need) scratch.resize(need);
  fast::SoftmaxJob job;
  job.channels = C;
  job.grad_scale = pb.grad_scale;
  job.cap = pb.cap;
  job.z_loss = pb.z_loss;
  job.softcap = pb.softcap;
  job.scratch = scratch.data();
  double acc = 0.0;
  for (int64_t r0 = t0; r0 < t1;) {
    const int64_t n = std::min(kChunk, t1 - r0);
    kernel_labels(pb, pb.labels ? pb.labels + r0 : nullptr, n, y, a);
    int64_t i = 0;
    while (i < n) {
      const int64_t off = (r0 + i) * C;
      job.xh = h.x + off;
      job.diffh = h.diff ? h.diff + off : nullptr;
      job.probh = h.prob ? h.prob + off : nullptr;
      job.count = n - i;
      job.y = y + i;
      job.a = a + i;
      job.loss = loss + i;
      const int64_t done = k.softmax_rows_half(job);
      for (int64_t j = i; j < i + done; ++j) {
        if (h.loss) h.loss[r0 + j] = float_to_half_bits(static_cast<float>(loss[j]));
        acc += loss[j];
      }
      i += done;
      if (i < n) {  // a row with a NaN or infinite logit
        acc += half_tasks(pb, sh, nullptr, pb.z_loss > 0.0, r0 + i, r0 + i + 1, 1, 1);
        ++i;
      }
    }
    r0 += n;
  }
  return acc;
}

/// The tasks [t0, t1) of a 16-bit (float16 or bfloat16) problem: chunks of rows (or of a tile's
/// positions) are widened
/// into float32 scratch, run by plain_tasks, and their outputs rounded back. Same sum order.
template <typename L>
double half_tasks(const SoftmaxProblem<float, L>& pb, const Shared& sh, const fast::Kernels* vec,
                  bool log_sum, int64_t t0, int64_t t1, int64_t w_max, int64_t tiles_per_outer) {
  const HalfSoftmaxIO& h = *pb.half;
  const int64_t C = pb.channels, inner = pb.inner;
  if (inner == 1 && vec && C > fast::kLanes && h.format == Bits16::f16) {
    return half_rows_fused(pb, sh, *vec, t0, t1);
  }
  const auto widen = [&h](const uint16_t* in, float* out, int64_t n) {
    widen16(h.format, in, out, n);
  };
  const auto narrow = [&h](const float* in, uint16_t* out, int64_t n) {
    narrow16(h.format, in, out, n);
  };
  // Positions per chunk: about 8192 elements (rows), or a slice of a tile.
  const int64_t width = inner == 1 ? std::clamp<int64_t>(8192 / C, 1, 256)
                                   : std::min(w_max, std::max<int64_t>(16, 65536 / C));
  const int64_t span = width * C;
  const int64_t arrays = 1 + (h.soft != nullptr) + (h.prob != nullptr) + (h.log_prob != nullptr);
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(span * arrays + width);
  if (buf.size() < need) buf.resize(need);
  float* next = buf.data();
  auto take = [&](bool used) {
    float* p = used ? next : nullptr;
    if (used) next += span;
    return p;
  };
  float* xs = take(true);
  float* qs = take(h.soft != nullptr);
  float* ps = take(h.prob != nullptr);
  float* ls = take(h.log_prob != nullptr);
  float* loss = next;

  SoftmaxProblem<float, L> lp = pb;
  lp.half = nullptr;
  lp.soft = qs;
  lp.prob = ps;
  lp.log_prob = ls;
  lp.diff = h.diff ? xs : nullptr;
  lp.loss = h.loss ? loss : nullptr;
  lp.x = xs;
  double acc = 0.0;
  if (inner == 1) {
    for (int64_t r0 = t0; r0 < t1; r0 += width) {
      const int64_t n = std::min(width, t1 - r0);
      const int64_t off = r0 * C;
      widen(h.x + off, xs, n * C);
      if (qs) widen(h.soft + off, qs, n * C);
      lp.labels = pb.labels ? pb.labels + r0 : nullptr;
      lp.outer = n;
      acc += plain_tasks(lp, sh, vec, log_sum, 0, n, 1, 1);
      if (h.diff) narrow(xs, h.diff + off, n * C);
      if (ps) narrow(ps, h.prob + off, n * C);
      if (ls) narrow(ls, h.log_prob + off, n * C);
      if (h.loss) narrow(loss, h.loss + r0, n);
    }
    return acc;
  }
  lp.outer = 1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t o = t / tiles_per_outer;
    const int64_t s_end = std::min(inner, (t % tiles_per_outer) * w_max + w_max);
    for (int64_t s0 = (t % tiles_per_outer) * w_max; s0 < s_end; s0 += width) {
      const int64_t wt = std::min(width, s_end - s0);
      const int64_t off = o * C * inner + s0;
      for (int64_t c = 0; c < C; ++c) {
        widen(h.x + off + c * inner, xs + c * wt, wt);
        if (qs) widen(h.soft + off + c * inner, qs + c * wt, wt);
      }
      lp.labels = pb.labels ? pb.labels + o * inner + s0 : nullptr;
      lp.inner = wt;
      acc += plain_tasks(lp, sh, vec, log_sum, 0, 1, wt, 1);
      for (int64_t c = 0; c < C; ++c) {
        if (h.diff) narrow(xs + c * wt, h.diff + off + c * inner, wt);
        if (ps) narrow(ps + c * wt, h.prob + off + c * inner, wt);
        if (ls) narrow(ls + c * wt, h.log_prob + off + c * inner, wt);
      }
      if (h.loss) narrow(loss, h.loss + o * inner + s0, wt);
    }
  }
  return acc;
}

}  // namespace

template <typename T, typename L>
double softmax_xent(const SoftmaxProblem<T, L>& pb) {
  if (pb.outer == 0 || pb.inner == 0) return 0.0;
  if (pb.channels == 0) {  // nothing to score: every position is ignored or has no classes
    if (pb.loss) std::fill(pb.loss, pb.loss + pb.outer * pb.inner, T(0));
    if (pb.half && pb.half->loss) std::fill(pb.half->loss, pb.half->loss + pb.outer * pb.inner, 0);
    return 0.0;
  }
  Shared sh;
  sh.total_weight = 0.0;
  for (int64_t c = 0; c < pb.channels; ++c) sh.total_weight += class_weight(pb.class_weight, c);
  const double eps = pb.smoothing > 0.0 ? pb.smoothing : 0.0;
  sh.keep = 1.0 - eps;
  sh.spread = pb.channels > 0 ? eps / static_cast<double>(pb.channels) : 0.0;

  const bool log_sum = pb.soft != nullptr || pb.log_prob != nullptr ||
                       (pb.labels != nullptr && (eps > 0.0 || pb.z_loss > 0.0));
  const int64_t w_max = std::min<int64_t>(pb.inner, kTile);
  const int64_t tiles_per_outer = (pb.inner + w_max - 1) / w_max;
  const int64_t tasks = pb.outer * tiles_per_outer;
  const int64_t per_task = std::max<int64_t>(1, pb.channels * w_max);
  const int64_t tasks_per_block = std::max<int64_t>(1, kBlockElements / per_task);
  const int64_t n_blocks = (tasks + tasks_per_block - 1) / tasks_per_block;
  Partials<double> part(n_blocks);
  const int64_t work = pb.outer * std::max<int64_t>(1, pb.channels) * pb.inner;
  const fast::Kernels* vec = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    // The vectorised kernels take class indices (or no target) without smoothing, z-loss and
    // soft-capping included; log_sum then only stands for the z-loss of the scalar fallbacks.
    const bool simd = pb.op == SoftmaxOp::xent && pb.soft == nullptr && pb.log_prob == nullptr &&
                      !(pb.labels != nullptr && eps > 0.0);
    if (simd) vec = fast::kernels();
  }
  parallel_blocks(n_blocks, threads_for(work, n_blocks), [&](int64_t b) {
    const int64_t t0 = b * tasks_per_block;
    const int64_t t1 = std::min(tasks, (b + 1) * tasks_per_block);
    if constexpr (std::is_same_v<T, float>) {
      if (pb.half) {
        part[b] =
            half_tasks(pb, sh, vec, log_sum, t0, t1, w_max, tiles_per_outer);
        return;
      }
    }
    part[b] = plain_tasks(pb, sh, vec, log_sum, t0, t1, w_max, tiles_per_outer);
  });
  return part.ordered_sum();
}

/// The labels of [i, i + n) not ignored and in range, and (ignored) those equal to ign; a block
/// with a bad label has in range + ignored < n. A loop without branches.
template <typename L>
XENTKIT_LABEL_CLONES void count_labels(const L* labels, int64_t n, int64_t channels,
                                       bool has_ignore, int64_t ign, int64_t* in_range_out,
                                       int64_t* ignored_out) {
  int64_t in_range = 0, ignored = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t v = static_cast<int64_t>(labels[j]);
    const bool big = std::is_unsigned_v<L> && sizeof(L) == 8 &&
                     static_cast<uint64_t>(labels[j]) > 9223372036854775807ULL;
    const bool skip = has_ignore && v == ign && !big;
    ignored += skip;
    in_range += !skip && !big && static_cast<uint64_t>(v) < static_cast<uint64_t>(channels);
  }
  *in_range_out = in_range;
  *ignored_out = ignored;
}

template <typename L>
int64_t validate_labels(const L* labels, int64_t positions, int64_t channels,
                        const std::optional<int64_t>& ignore, const char* argument,
                        const char* scores) {
  const bool has_ignore = ignore.has_value();
  const int64_t ign = ignore.value_or(0);
  int64_t valid = 0;
  int64_t i = 0;
  if constexpr (std::is_integral_v<L>) {
    // Blocks without a bad label are counted by count_labels; a block with one is read again
    // below, label by label, to report the first.
    constexpr int64_t kBlock = 4096;
    for (; i + kBlock <= positions; i += kBlock) {
      int64_t in_range = 0, ignored = 0;
      count_labels(labels + i, kBlock, channels, has_ignore, ign, &in_range, &ignored);
      if (in_range + ignored != kBlock) break;
      valid += in_range;
    }
  }
  for (; i < positions; ++i) {
    const int64_t k = classify_label(labels[i], channels, has_ignore, ign);
    if (k == kInvalid) {
      if (channels == 0) {
        throw no_class_error(scores, argument, i);
      }
      throw make_label_error(argument, labels[i], i, channels, ignore);
    }
    valid += (k >= 0);
  }
  return valid;
}

template <typename T, typename L>
double target_weight_sum(const L* labels, int64_t positions, int64_t channels,
                         const std::optional<int64_t>& ignore, const T* weight) {
  const bool has_ignore = ignore.has_value();
  const int64_t ign = ignore.value_or(0);
  double total = 0.0;
  for (int64_t i = 0; i < positions; ++i) {
    const int64_t k = classify_label(labels[i], channels, has_ignore, ign);
    if (k >= 0) total += class_weight(weight, k);
  }
  return total;
}

#define XENTKIT_SOFTMAX_XENT(T, L) template double softmax_xent<T, L>(const SoftmaxProblem<T, L>&);
#define XENTKIT_VALIDATE(T, L)                                                        \
  template int64_t validate_labels<L>(const L*, int64_t, int64_t,                     \
                                      const std::optional<int64_t>&, const char*, const char*);
#define XENTKIT_WEIGHT_SUM(T, L)                                                       \
  template double target_weight_sum<T, L>(const L*, int64_t, int64_t,                  \
                                          const std::optional<int64_t>&, const T*);
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_SOFTMAX_XENT, float)
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_SOFTMAX_XENT, double)
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_VALIDATE, void)
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_WEIGHT_SUM, float)
XENTKIT_FOR_EACH_INDEX_TYPE(XENTKIT_WEIGHT_SUM, double)

}  // namespace xentkit::detail
