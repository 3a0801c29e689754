// The softmax cross-entropy kernel family on the CPU. Scores are viewed as (outer, C, inner): the
// softmax runs over C with stride `inner`. Work is cut into tiles of up to kTile positions that
// share (o, and a run of inner indices), so every sweep over the C channels is a run of
// contiguous loads. Per tile, three sweeps while the tile is in cache:
//   A: running max per position;
//   B: e = exp(x - max) once per element, summed (and, for the labelled class, the sum of the
//      *other* classes kept apart), e stored in the output buffer when there is one;
//   C: the outputs: p = e / sum, diff = scale * (p - onehot), the labelled entry written as
//      -scale * sum_other / sum so that it keeps its precision when p rounds to 1.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels.hpp"
#include "xentkit/detail/labels.hpp"
#include "xentkit/detail/parallel.hpp"

namespace xentkit::detail {
namespace {

constexpr int64_t kTile = 64;                  // positions per tile along `inner`
constexpr int64_t kBlockElements = 1 << 15;    // target elements per deterministic block


/// Runs one tile: positions s0 .. s0+w-1 of outer index o. Returns the sum of its losses.
template <typename T, typename L>
double softmax_tile(const SoftmaxProblem<T, L>& pb, int64_t o, int64_t s0, int64_t w) {
  const int64_t C = pb.channels, inner = pb.inner;
  const T* base = pb.x + o * C * inner + s0;
  const L* lab = pb.labels + o * inner + s0;
  T* store = pb.diff ? pb.diff : pb.prob;
  T* sbase = store ? store + o * C * inner + s0 : nullptr;

  int64_t y[kTile];
  T m[kTile];
  double zy[kTile], sum[kTile], other[kTile];
  bool posinf[kTile];
  constexpr double inf = std::numeric_limits<double>::infinity();

  // Sweep A: the max per position.
  for (int64_t j = 0; j < w; ++j) {
    y[j] = classify_label(lab[j], C, pb.has_ignore, pb.ignore);
    m[j] = base[j];
  }
  for (int64_t c = 1; c < C; ++c) {
    const T* row = base + c * inner;
    for (int64_t j = 0; j < w; ++j) {
      const T v = row[j];
      m[j] = v > m[j] ? v : m[j];
    }
  }
  // The labelled logit relative to the max, read before sweep B may overwrite x (in place).
  // With a +inf logit the limit is taken: the +inf entries share the probability mass.
  for (int64_t j = 0; j < w; ++j) {
    posinf[j] = (static_cast<double>(m[j]) == inf);
    sum[j] = 0.0;
    other[j] = 0.0;
    if (y[j] >= 0) {
      const double v = static_cast<double>(base[y[j] * inner + j]);
      zy[j] = posinf[j] ? (v == inf ? 0.0 : (std::isnan(v) ? v : -inf))
                        : v - static_cast<double>(m[j]);
    } else {
      zy[j] = 0.0;
    }
  }
  // Sweep B: exp once per element, in the input's precision; sums in double.
  for (int64_t c = 0; c < C; ++c) {
    const T* row = base + c * inner;
    T* srow = sbase ? sbase + c * inner : nullptr;
    for (int64_t j = 0; j < w; ++j) {
      const T v = row[j];
      const T e = (posinf[j] && v == static_cast<T>(inf)) ? T(1) : std::exp(v - m[j]);
      sum[j] += static_cast<double>(e);
      if (c != y[j]) other[j] += static_cast<double>(e);
      if (srow) srow[j] = e;
    }
  }
  // Losses: -log p_y = log(sum / e_y) = log1p(sum_other * exp(-(x_y - max))), which keeps its
  // relative precision when p_y rounds to 1 (log(sum) would give 0); capped, NaN stays NaN. An
  // overflow of exp(-zy) means a loss above 709, past the cap either way.
  double acc = 0.0;
  for (int64_t j = 0; j < w; ++j) {
    if (y[j] < 0) continue;
    double l = std::log1p(other[j] * std::exp(-zy[j]));
    if (l > pb.cap) l = pb.cap;
    acc += l;
  }
  // Sweep C: probabilities and gradient, with one division per position.
  if (store) {
    double inv[kTile];
    for (int64_t j = 0; j < w; ++j) inv[j] = 1.0 / sum[j];
    for (int64_t c = 0; c < C; ++c) {
      T* srow = sbase + c * inner;
      T* prow = pb.prob ? pb.prob + o * C * inner + s0 + c * inner : nullptr;
      T* drow = pb.diff ? pb.diff + o * C * inner + s0 + c * inner : nullptr;
      for (int64_t j = 0; j < w; ++j) {
        const double e = static_cast<double>(srow[j]);
        if (prow) prow[j] = static_cast<T>(e * inv[j]);
        if (drow) {
          if (y[j] < 0) {
            drow[j] = T(0);
          } else if (c == y[j]) {
            drow[j] = static_cast<T>(-(other[j] * inv[j]) * pb.grad_scale);
          } else {
            drow[j] = static_cast<T>(e * inv[j] * pb.grad_scale);
          }
        }
      }
    }
  }
  return acc;
}

}  // namespace

template <typename T, typename L>
double softmax_xent(const SoftmaxProblem<T, L>& pb) {
  const int64_t w_max = std::min<int64_t>(pb.inner, kTile);
  const int64_t tiles_per_outer = (pb.inner + w_max - 1) / w_max;
  const int64_t tasks = pb.outer * tiles_per_outer;
  const int64_t per_task = std::max<int64_t>(1, pb.channels * w_max);
  const int64_t tasks_per_block = std::max<int64_t>(1, kBlockElements / per_task);
  const int64_t n_blocks = (tasks + tasks_per_block - 1) / tasks_per_block;
  std::vector<double> part(static_cast<size_t>(n_blocks), 0.0);
  const int64_t work = pb.outer * pb.channels * pb.inner;
  parallel_blocks(n_blocks, threads_for(work, n_blocks), [&](int64_t b) {
    const int64_t t_end = std::min(tasks, (b + 1) * tasks_per_block);
    double acc = 0.0;
    for (int64_t t = b * tasks_per_block; t < t_end; ++t) {
      const int64_t o = t / tiles_per_outer;
      const int64_t s0 = (t % tiles_per_outer) * w_max;
      acc += softmax_tile(pb, o, s0, std::min(w_max, pb.inner - s0));
    }
    part[static_cast<size_t>(b)] = acc;
  });
  return ordered_sum(part);
}

template <typename L>
int64_t validate_labels(const L* labels, int64_t positions, int64_t channels,
                        const std::optional<int64_t>& ignore) {
  const bool has_ignore = ignore.has_value();
  const int64_t ign = ignore.value_or(0);
  int64_t valid = 0;
  for (int64_t i = 0; i < positions; ++i) {
    const int64_t k = classify_label(labels[i], channels, has_ignore, ign);
    if (k == kInvalid) {
      if (channels == 0) {
        throw value_error(
            "scores: expected at least one class along the softmax axis, got 0 classes with " +
            std::to_string(positions) + " label positions to score");
      }
      throw make_label_error("labels", labels[i], i, channels, ignore);
    }
    valid += (k >= 0);
  }
  return valid;
}


#define XENTKIT_SOFTMAX_XENT(T, L) template double softmax_xent<T, L>(const SoftmaxProblem<T, L>&);
#define XENTKIT_VALIDATE(T, L)                                                   \
  template int64_t validate_labels<L>(const L*, int64_t, int64_t, const std::optional<int64_t>&);
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_SOFTMAX_XENT, float)
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_SOFTMAX_XENT, double)
XENTKIT_FOR_EACH_LABEL_TYPE(XENTKIT_VALIDATE, void)

}  // namespace xentkit::detail
