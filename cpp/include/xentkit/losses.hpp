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

}  // namespace xentkit
