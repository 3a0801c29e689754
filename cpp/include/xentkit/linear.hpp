#pragma once
// The per-chunk primitive of a fused linear cross-entropy (a language model's head:
// loss = cross_entropy(input @ W^T + b, target)), for callers that bring their own matrix
// products. The N x V logits are never held whole: the caller computes the logits of a chunk of
// rows with its GEMM, this primitive turns them into that chunk's losses and, in place, into the
// gradient of the whole call's loss with respect to them, and the caller's GEMMs finish the
// chunk (grad_input[chunk] = dlogits @ W, grad_W += dlogits^T @ input[chunk],
// grad_b += column sums of dlogits). The divisor of "mean" depends on the targets alone, so it
// is known before the first chunk: one plan, then the chunks in any order, each touched once.
//
//   auto plan = xentkit::plan_linear_cross_entropy<float>(target, N, V, weight, options);
//   double sum = 0;
//   for (int64_t r = 0; r < N; r += rows) {
//     const int64_t n = std::min(rows, N - r);
//     my_gemm(input + r * D, W, logits, n, V, D);         // logits = input[r:r+n] @ W^T (+ b)
//     sum += xentkit::linear_cross_entropy_chunk(plan, logits, target + r, n, weight,
//                                                 nullptr, true);
//     my_gemm(logits, W, grad_input + r * D, ...);       // and grad_W, grad_b
//   }
//   float loss = xentkit::linear_cross_entropy_result(plan, sum);
//
// examples/cpp/linear.cpp is the whole loop.

#include <cstdint>

#include "xentkit/bfloat16.hpp"
#include "xentkit/half.hpp"
#include "xentkit/options.hpp"

namespace xentkit {

/// What every chunk of one call shares, from the targets and the options alone.
struct LinearCrossEntropyPlan {
  int64_t rows = 0;         // N: positions (rows of the logits)
  int64_t classes = 0;      // V
  int64_t valid = 0;        // positions whose target is not ignore_index
  double divisor = 1.0;     // what "mean" divides by: the sum of weight[target] over the valid
                            // positions (their number without weights); 1 for "sum" and "none"
  double grad_scale = 1.0;  // options.grad_output / divisor: the scale of every chunk's gradient
  CrossEntropyOptions options;  // checked: label_smoothing read as PyTorch does, z_loss >= 0,
                                // softcap 0 or > 0
};

/// Checks the options and every target (label_error for the first index outside [0, classes)
/// that is not ignore_index, value_error for bad options or classes == 0 with a row to score) and
/// returns the plan. weight: nullable, `classes` class weights (float for the 16-bit chunks).
/// Nothing is written anywhere.
template <typename T, typename L>
LinearCrossEntropyPlan plan_linear_cross_entropy(const L* target, int64_t rows, int64_t classes,
                                                 const T* weight,
                                                 const CrossEntropyOptions& options = {});

/// One chunk of `n` rows: logits (n x classes, row-major) of those rows and their n targets.
/// Returns the sum of the chunk's losses (cross entropy with the plan's options, z-loss and
/// softcap included; weighted, not divided); `loss` (nullable) receives the n per-row losses.
/// With grad, the logits are replaced by plan.grad_scale * d(sum of all losses)/d(logits); a row
/// whose target is ignored gets zeros. Deterministic for any thread count.
template <typename T, typename L>
double linear_cross_entropy_chunk(const LinearCrossEntropyPlan& plan, T* logits, const L* target,
                                  int64_t n, const T* weight, T* loss, bool grad);

/// The same over 16-bit logits, computed in float32 (weight is float32).
template <typename L>
double linear_cross_entropy_chunk(const LinearCrossEntropyPlan& plan, half* logits,
                                  const L* target, int64_t n, const float* weight, half* loss,
                                  bool grad);
template <typename L>
double linear_cross_entropy_chunk(const LinearCrossEntropyPlan& plan, bfloat16* logits,
                                  const L* target, int64_t n, const float* weight,
                                  bfloat16* loss, bool grad);

/// The call's loss from the sum of its chunks' results: sum / divisor for "mean" (NaN when the
/// divisor is 0, as PyTorch), the sum otherwise (for "none" the per-row losses are the result).
double linear_cross_entropy_result(const LinearCrossEntropyPlan& plan, double sum) noexcept;

}  // namespace xentkit
