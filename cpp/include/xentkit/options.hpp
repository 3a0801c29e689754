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

}  // namespace xentkit
