#pragma once
// The two CPU kernel families (internal). Every public loss maps its conventions onto one of these
// problem descriptions: the Caffe layers today; the PyTorch/TensorFlow functions add fields here
// (class weights, smoothing, soft targets, per-position outputs), not kernels of their own.

#include <cstdint>
#include <optional>

/// Calls X(T, L) for every label type the softmax family reads (explicit instantiations).
#define XENTKIT_FOR_EACH_LABEL_TYPE(X, T)                                                \
  X(T, int8_t) X(T, int16_t) X(T, int32_t) X(T, int64_t) X(T, uint8_t) X(T, uint16_t) \
  X(T, uint32_t) X(T, uint64_t) X(T, float) X(T, double)

namespace xentkit::detail {

// ---- softmax family: scores viewed as (outer, channels, inner), softmax over channels ---------

template <typename T, typename L>
struct SoftmaxProblem {
  const T* x;          // outer*channels*inner scores
  const L* labels;     // outer*inner labels, already validated
  int64_t outer, channels, inner;
  bool has_ignore;
  int64_t ignore;
  T* diff;             // nullable; may alias x. grad_scale * (p - onehot), 0 at ignored positions
  T* prob;             // nullable; must not alias x or diff. The softmax
  double grad_scale;
  double cap;          // upper bound of a position's loss (+inf for none)
};

/// The sum over non-ignored positions of min(-log p[label], cap), with the outputs written in the
/// same pass. Deterministic for any thread count.
template <typename T, typename L>
double softmax_xent(const SoftmaxProblem<T, L>& pb);

/// Checks every label (throwing label_error for the first bad one, value_error when channels is 0
/// with positions to score) and returns the number of non-ignored positions.
template <typename L>
int64_t validate_labels(const L* labels, int64_t positions, int64_t channels,
                        const std::optional<int64_t>& ignore);

// ---- sigmoid family: elementwise -----------------------------------------------------------

template <typename T>
struct SigmoidProblem {
  const T* x;          // n scores (logits)
  const T* t;          // n targets
  int64_t n;
  bool has_ignore;     // ignore where the target truncated toward zero equals `ignore`
  int64_t ignore;
  T* diff;             // nullable; may alias x. grad_scale * (sigmoid(x) - t), 0 where ignored
  double grad_scale;
};

struct SigmoidSums {
  double loss = 0.0;   // sum of max(x, 0) - x*t + log1p(exp(-|x|)) over non-ignored elements
  int64_t valid = 0;   // their number
};

template <typename T>
SigmoidSums sigmoid_xent(const SigmoidProblem<T>& pb);

/// Elements whose target truncated toward zero differs from `ignore`.
template <typename T>
int64_t count_not_ignored(const T* t, int64_t n, int64_t ignore);

}  // namespace xentkit::detail
