#pragma once
// bfloat16 storage with float32 arithmetic, the twin of half.hpp: the functions here take and
// return bfloat16 arrays (the upper 16 bits of an IEEE binary32), widen them to float32 in
// cache-sized chunks, compute with the float32 kernels and round every output once to bfloat16
// (to nearest, ties to even; NaN stays a quiet NaN, +-inf stays +-inf). The reduced loss is
// returned as a float. The same type is the bfloat16 of the CUDA entry points (cuda.hpp).

#include <cstdint>

#include "xentkit/options.hpp"

namespace xentkit {

/// A bfloat16 value (its bit pattern: the upper half of a float32).
struct bfloat16 {
  uint16_t bits;
};

/// Exact widening (a 16-bit shift; NaN made quiet).
float to_float(bfloat16 b) noexcept;
/// Rounding to nearest, ties to even; overflow gives +-inf, NaN stays NaN (quiet, sign kept).
bfloat16 to_bfloat16(float f) noexcept;
/// The same over arrays (vectorised where the CPU allows).
void to_float(const bfloat16* in, float* out, int64_t n) noexcept;
void to_bfloat16(const float* in, bfloat16* out, int64_t n) noexcept;

/// cross_entropy on bfloat16 logits (class indices); weight is float32. See losses.hpp.
template <typename L>
float cross_entropy(const bfloat16* input, const L* target, int64_t outer, int64_t channels,
                    int64_t inner, const float* weight, bfloat16* loss, bfloat16* grad,
                    const CrossEntropyOptions& options = {});

/// softmax_with_loss on bfloat16 scores. See losses.hpp.
template <typename L>
float softmax_with_loss(const bfloat16* scores, const L* labels, int64_t outer, int64_t channels,
                        int64_t inner, bfloat16* diff, bfloat16* prob,
                        const SoftmaxWithLossOptions& options = {});

/// binary_cross_entropy_with_logits on bfloat16 inputs and targets; weights are float32.
float binary_cross_entropy_with_logits(const bfloat16* input, const bfloat16* target,
                                       int64_t count, Broadcast<float> weight,
                                       Broadcast<float> pos_weight, bfloat16* loss,
                                       bfloat16* grad,
                                       const BinaryCrossEntropyOptions& options = {});

/// sigmoid_cross_entropy_loss on bfloat16 scores and targets.
float sigmoid_cross_entropy_loss(const bfloat16* scores, const bfloat16* targets, int64_t outer,
                                 int64_t count, bfloat16* diff,
                                 const SigmoidCrossEntropyLossOptions& options = {});

}  // namespace xentkit
