#pragma once
// Options of the loss functions. Defaults follow the framework each function comes from.

#include <cstdint>
#include <optional>
#include <string_view>

namespace xentkit {

/// Caffe's LossParameter.NormalizationMode (same numbering as caffe.proto). The loss is divided by
/// max(1, Z) with Z = outer*inner (full), the number of non-ignored positions (valid), outer
/// (batch_size) or 1 (none).
enum class Normalization : int { full = 0, valid = 1, batch_size = 2, none = 3 };

/// Parses "full", "valid", "batch_size" or "none", in any letter case (Caffe's FULL, VALID, ...).
/// Throws value_error for anything else.
Normalization parse_normalization(std::string_view name);

/// The lower-case name of a mode ("full", "valid", "batch_size", "none").
const char* normalization_name(Normalization mode) noexcept;

/// Caffe's SigmoidCrossEntropyLoss layer.
struct SigmoidCrossEntropyLossOptions {
  /// Elements whose target, truncated toward zero, equals this value add nothing and get diff 0.
  std::optional<int64_t> ignore_label;
  /// Caffe's default for this layer is BATCH_SIZE (not VALID).
  Normalization normalization = Normalization::batch_size;
  /// Scales the diff (the gradient of loss_weight * loss); the returned loss is unweighted.
  double loss_weight = 1.0;
};

/// Caffe's SoftmaxWithLoss layer.
struct SoftmaxWithLossOptions {
  /// Positions whose label, truncated toward zero, equals this value add nothing and get diff 0
  /// on all channels. It may lie outside [0, C) (e.g. 255).
  std::optional<int64_t> ignore_label;
  Normalization normalization = Normalization::valid;
  double loss_weight = 1.0;
};

/// PyTorch's reduction of per-element losses (same numbering as at::Reduction).
enum class Reduction : int { none = 0, mean = 1, sum = 2 };

/// Parses "none", "mean" or "sum" (exactly, as PyTorch). Throws value_error for anything else.
Reduction parse_reduction(std::string_view name);

/// The name of a reduction ("none", "mean", "sum").
const char* reduction_name(Reduction reduction) noexcept;

/// An array broadcast against the elements of a loss (PyTorch's `weight`/`pos_weight`): element i
/// reads data[(i / stride) % period]. A scalar is {p, 1, 1}; a (C,) vector over the last axis of
/// an (N, C) input is {p, 1, C}; a (C, 1, 1) vector over (N, C, H, W) is {p, H*W, C}; an array of
/// the input's own shape is {p, 1, count}. data == nullptr means absent (a weight of 1).
template <typename T>
struct Broadcast {
  const T* data = nullptr;
  int64_t stride = 1;
  int64_t period = 1;
};

/// PyTorch's binary_cross_entropy and binary_cross_entropy_with_logits.
struct BinaryCrossEntropyOptions {
  Reduction reduction = Reduction::mean;
  /// The upstream gradient: the returned gradient is that of grad_output * loss (for
  /// Reduction::none, of grad_output times the sum of the per-element losses).
  double grad_output = 1.0;
};

/// PyTorch's cross_entropy (class indices or class probabilities).
struct CrossEntropyOptions {
  /// Class-index targets equal to this value add nothing (any value; it may be a real class).
  /// Not used with probability targets.
  int64_t ignore_index = -100;
  Reduction reduction = Reduction::mean;
  /// Epsilon in [0, 1] (values above 1 throw; negative values act as 0, as in PyTorch).
  double label_smoothing = 0.0;
  double grad_output = 1.0;
  /// z-loss coefficient (>= 0): adds z_loss * lse^2 per non-ignored position, weighted and
  /// reduced as that position's cross-entropy term. Class indices only.
  double z_loss = 0.0;
  /// Logit soft-capping: every logit x becomes softcap * tanh(x / softcap) before the softmax
  /// (> 0; 0 means none).
  double softcap = 0.0;
};

/// PyTorch's nll_loss.
struct NllLossOptions {
  int64_t ignore_index = -100;
  Reduction reduction = Reduction::mean;
  double grad_output = 1.0;
};

}  // namespace xentkit
