#pragma once
// The CPU loss functions. Every array is a C-contiguous buffer; shapes are passed as counts.
// All checks happen before any output is written: on an exception, outputs are untouched.

#include <cstdint>

#include "xentkit/options.hpp"

namespace xentkit {

/// Caffe's SigmoidCrossEntropyLoss (forward and backward in one pass).
///
/// scores, targets: `count` values each; outer = the first dimension of the scores (the batch),
/// so count must be a multiple of outer (count == 0 when outer == 0).
/// Per element: l = max(x, 0) - x*t + log1p(exp(-|x|)); loss = sum(l over non-ignored) / max(1, Z).
/// diff (nullable, may equal scores): loss_weight * (sigmoid(x) - t) / max(1, Z), 0 where ignored.
/// Returns the unweighted loss, rounded to T. Instantiated for float and double.
template <typename T>
T sigmoid_cross_entropy_loss(const T* scores, const T* targets, int64_t outer, int64_t count,
                             T* diff, const SigmoidCrossEntropyLossOptions& options = {});

/// Caffe's SoftmaxWithLoss (forward and backward in one pass).
///
/// scores: outer x channels x inner values (the softmax runs over `channels`, stride `inner`);
/// labels: outer x inner values of any integer type or float/double (truncated toward zero).
/// Per valid position: -log(max(p[label], FLT_MIN)) from the log-sum-exp; loss = sum / max(1, Z).
/// diff (nullable, may equal scores): loss_weight * (p - onehot(label)) / max(1, Z), all channels 0
/// at ignored positions. prob (nullable, must not overlap scores or diff): the softmax.
/// Throws label_error for a label outside [0, channels) that is not ignored, value_error when
/// channels == 0 with positions to score. Returns the unweighted loss, rounded to T.
/// Instantiated for T in {float, double} and L in {int8..int64, uint8..uint64, float, double}.
template <typename T, typename L>
T softmax_with_loss(const T* scores, const L* labels, int64_t outer, int64_t channels,
                    int64_t inner, T* diff, T* prob, const SoftmaxWithLossOptions& options = {});

// ---- PyTorch-compatible functions (torch.nn.functional) ------------------------------------
//
// Common conventions. `loss` (nullable) receives the per-element (per-position) losses, as
// PyTorch's reduction="none" returns them. `grad` (nullable, may be the input itself) receives the
// gradient of grad_output * (the reduced loss), or for Reduction::none of grad_output * (the sum
// of the per-element losses). The return value is the reduced loss: the mean (sum / divisor as
// PyTorch divides: NaN over nothing, with a gradient of 0 wherever nothing was scored), the sum,
// or for Reduction::none the sum. A zero weight removes an infinite term (0 * inf = 0, the
// limit), never a NaN. Sums are accumulated in double over fixed blocks (bit-identical for
// any thread count). Instantiated for T in {float, double}; class indices L in {int8..int64,
// uint8..uint64}.

/// -w * (t * max(log p, -100) + (1 - t) * max(log(1 - p), -100)) per element; the gradient is
/// w * (p - t) / max(p * (1 - p), 1e-12f). Throws value_error (before writing anything) when an
/// input or target value lies outside [0, 1] or is NaN. mean divides by `count`.
template <typename T>
T binary_cross_entropy(const T* input, const T* target, int64_t count, Broadcast<T> weight,
                       T* loss, T* grad, const BinaryCrossEntropyOptions& options = {});

/// w * ((1 - t) * x + (1 + (pw - 1) * t) * softplus(-x)) per element, with pw = pos_weight; the
/// gradient is w * ((1 + (pw - 1) * t) * sigmoid(x) - pw * t). Infinite logits give the limits
/// (0 for x = +inf, t = 1). mean divides by `count` (weights do not change it).
template <typename T>
T binary_cross_entropy_with_logits(const T* input, const T* target, int64_t count,
                                   Broadcast<T> weight, Broadcast<T> pos_weight, T* loss, T* grad,
                                   const BinaryCrossEntropyOptions& options = {});

/// Cross entropy with class-index targets. input: outer x channels x inner logits (PyTorch's
/// (N, C, d1..dK): outer = N, inner = d1*..*dK; a 1-D input is outer = inner = 1); target:
/// outer*inner class indices; weight: nullable, `channels` class weights. Per non-ignored position
///   l = (1 - eps) * w[y] * (-log p[y]) + (eps / C) * sum_c w[c] * (-log p[c]),
/// 0 at ignored positions. mean divides by the sum of w[y] over non-ignored positions. Throws
/// label_error for an index outside [0, C) that is not ignore_index.
template <typename T, typename L>
T cross_entropy(const T* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
                const T* weight, T* loss, T* grad, const CrossEntropyOptions& options = {});

/// Cross entropy with probability targets of the input's layout (ignore_index is not used).
/// With q' = (1 - eps) * q + eps / C, per position l = -sum_c w[c] * q'[c] * log p[c] (a term
/// whose w[c] * q'[c] is exactly 0 adds nothing, even at a -inf logit). mean divides by
/// outer*inner. The gradient is the true derivative, (sum_c w[c] q'[c]) * p - w * q', also for
/// rows that do not sum to 1.
template <typename T>
T cross_entropy(const T* input, const T* target, int64_t outer, int64_t channels, int64_t inner,
                const T* weight, T* loss, T* grad, const CrossEntropyOptions& options = {});

/// Negative log likelihood: l = -w[y] * input[y] per non-ignored position (input holds
/// log-probabilities; nothing is exponentiated). Layout, weights, mean and errors as cross_entropy.
template <typename T, typename L>
T nll_loss(const T* input, const L* target, int64_t outer, int64_t channels, int64_t inner,
           const T* weight, T* loss, T* grad, const NllLossOptions& options = {});

/// log(softmax(x)) over `channels` (stride `inner`), from the log-sum-exp. `out` must not overlap
/// `input`. A +inf logit gives the limit (the +inf entries share the mass).
template <typename T>
void log_softmax(const T* input, int64_t outer, int64_t channels, int64_t inner, T* out);

/// softmax(x) over `channels` (stride `inner`). `out` must not overlap `input`.
template <typename T>
void softmax(const T* input, int64_t outer, int64_t channels, int64_t inner, T* out);

// ---- TensorFlow-compatible functions (tf.nn) -------------------------------------------------
// Per-element (per-row) losses, no reduction; `grad` is the gradient of their sum.

/// max(x, 0) - x*z + log1p(exp(-|x|)) per element (`loss`: count values); grad = sigmoid(x) - z.
template <typename T>
void sigmoid_cross_entropy_with_logits(const T* labels, const T* logits, int64_t count, T* loss,
                                       T* grad);

/// -sum_c z[c] * log softmax(x)[c] over `channels` (stride `inner`); `loss`: outer*inner values.
/// grad = rowsum(z) * softmax(x) - z, the true derivative (TF's softmax - z assumes rows sum to 1).
template <typename T>
void softmax_cross_entropy_with_logits(const T* labels, const T* logits, int64_t outer,
                                       int64_t channels, int64_t inner, T* loss, T* grad);

/// -log softmax(x)[label] per row of `channels` logits (class axis last); `loss`: rows values;
/// grad = softmax(x) - onehot(label). Throws label_error for a label outside [0, channels).
template <typename T, typename L>
void sparse_softmax_cross_entropy_with_logits(const L* labels, const T* logits, int64_t rows,
                                              int64_t channels, T* loss, T* grad);

}  // namespace xentkit
