#pragma once
// float16 storage with float32 arithmetic. The functions here take and return IEEE binary16
// arrays: inputs are widened to float32 in cache-sized chunks, computed by the float32 kernels,
// and the outputs are rounded to float16 (to nearest, ties to even) as they are written, so no
// float32 copy of a whole array is ever made. The reduced loss is returned as a float.

#include <cstdint>

#include "xentkit/options.hpp"

namespace xentkit {

/// An IEEE binary16 value (its bit pattern).
struct half {
  uint16_t bits;
};

/// Exact widening (NaN payloads kept, quiet).
float to_float(half h) noexcept;
/// Rounding to nearest, ties to even; overflow gives +-inf, NaN stays NaN.
half to_half(float f) noexcept;
/// The same over arrays (vectorised where the CPU allows).
void to_float(const half* in, float* out, int64_t n) noexcept;
void to_half(const float* in, half* out, int64_t n) noexcept;

/// cross_entropy on float16 logits (class indices); weight is float32. See losses.hpp.
template <typename L>
float cross_entropy(const half* input, const L* target, int64_t outer, int64_t channels,
                    int64_t inner, const float* weight, half* loss, half* grad,
                    const CrossEntropyOptions& options = {});

/// softmax_with_loss on float16 scores. See losses.hpp.
template <typename L>
float softmax_with_loss(const half* scores, const L* labels, int64_t outer, int64_t channels,
                        int64_t inner, half* diff, half* prob,
                        const SoftmaxWithLossOptions& options = {});

/// binary_cross_entropy_with_logits on float16 inputs and targets; weights are float32.
float binary_cross_entropy_with_logits(const half* input, const half* target, int64_t count,
                                       Broadcast<float> weight, Broadcast<float> pos_weight,
                                       half* loss, half* grad,
                                       const BinaryCrossEntropyOptions& options = {});

/// sigmoid_cross_entropy_loss on float16 scores and targets.
float sigmoid_cross_entropy_loss(const half* scores, const half* targets, int64_t outer,
                                 int64_t count, half* diff,
                                 const SigmoidCrossEntropyLossOptions& options = {});

}  // namespace xentkit
