#pragma once
// The plans of the two CUDA kernel families (internal), twins of the CPU families of
// cpp/src/kernels.hpp. The host side (cuda_host.hpp, cuda/api.cpp) maps every public loss onto one
// plan and calls launch(); the kernels (cuda/softmax.cu, cuda/elementwise.cu) never see a public
// type. This header sits between the two, so nothing under cpp/ includes a path under cuda/.
// Compiles under the host compiler and nvcc; includes no CUDA header.

#include <cstddef>
#include <cstdint>

struct CUstream_st;

namespace xentkit::cuda::detail {

using stream_t = CUstream_st*;

/// Element type of the scores, targets, weights and outputs of a call. float16 and bfloat16 are
/// computed in float32, float32 in float32 (sums of many terms in double), float64 in double.
enum class Storage : int32_t { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

/// Element type of class-index labels. Floating labels are truncated toward zero (Caffe).
enum class LabelKind : int32_t { i8, i16, i32, i64, u8, u16, u32, u64, f32, f64 };

/// How the reduced loss and the gradient are divided (the gradient is scaled by
/// grad_output / divisor). Data-dependent divisors are computed on the device by a pass over the
/// labels (or targets) before the main kernel, which then reads its scale from the workspace.
enum class Divide : int32_t {
  constant,     // by `divisor`, known on the host (1 for sums; PyTorch's mean over n; Caffe's
                // max(1, Z) for full, batch_size and none). A divisor of 0 gives NaN (0 / 0).
  caffe_valid,  // by max(1, number of non-ignored positions or elements)
  weight_sum,   // by the sum of w[y] over non-ignored positions (PyTorch's mean; without class
                // weights every w[y] is 1, so the count; 0 gives NaN, and the gradient scale
                // grad_output / 0 makes the non-ignored gradient rows non-finite, as PyTorch)
};

/// Which argument a recorded error names (for the message the host builds).
enum class Argument : int32_t { labels = 0, target = 1, input = 2 };

enum class SoftmaxOp : int32_t {
  xent,  // softmax over the channels, then cross entropy against labels, probabilities or nothing
  nll,   // scores are log-probabilities: l = -w[y] x[y]
};

/// One call of the softmax family, as SoftmaxProblem on the CPU. Scores are (outer, channels,
/// inner); the softmax runs over channels with stride inner. Per position (o, s):
///   class index:   l = (1 - eps) w[y] min(-log p[y], cap) + (eps / C) sum_c w[c] (-log p[c])
///   probabilities: l = -sum_c w[c] q'[c] log p[c], q' = (1 - eps) q + eps / C
///   nll:           l = -w[y] x[y]
/// Ignored positions give l = 0 and a zero gradient row. A label that is neither ignored nor in
/// [0, C) gives l = NaN and a NaN gradient row, NaN as the reduced loss, and an error record.
struct SoftmaxPlan {
  SoftmaxOp op = SoftmaxOp::xent;
  Storage storage = Storage::f32;
  const void* x = nullptr;            // scores
  const void* labels = nullptr;       // outer*inner class indices (or null)
  LabelKind label_kind = LabelKind::i64;
  Argument label_argument = Argument::labels;
  const void* soft = nullptr;         // probability targets in the layout of x (or null)
  int64_t outer = 0, channels = 0, inner = 0;
  bool has_ignore = false;
  int64_t ignore = 0;
  const void* class_weight = nullptr; // channels weights of `storage` (or null: all 1)
  double smoothing = 0.0;             // eps in [0, 1]
  double cap = 0.0;                   // upper bound of -log p[y] (+inf for none)
  double z_loss = 0.0;                // adds z_loss * w[y] * lse^2 per labelled position
  double softcap = 0.0;               // > 0: logits x -> softcap * tanh(x / softcap)
  void* diff = nullptr;               // gradient: scale * dl/dx; may alias x
  void* prob = nullptr;               // softmax; never aliases x or diff
  void* log_prob = nullptr;           // log-softmax; never aliases x or diff
  void* loss = nullptr;               // outer*inner per-position losses
  void* reduced = nullptr;            // one value: (sum of l) / divisor
  Divide divide = Divide::constant;
  double divisor = 1.0;               // for Divide::constant
  double grad_output = 1.0;           // scale = grad_output / divisor
  /// PyTorch's smoothed weighted mean divides its two terms separately: with a zero weight sum
  /// (1 - eps) nll / 0 is NaN even where the smoothing term alone would be inf.
  bool split_terms = false;
  void* workspace = nullptr;          // kWorkspaceBytes of device scratch
};

enum class ElementOp : int32_t {
  logits,         // l = (1 - t) x + (1 + (pw - 1) t) softplus(-x); grad (1 + (pw-1) t) s(x) - pw t
  probabilities,  // l = -(t max(log x, -100) + (1 - t) max(log(1 - x), -100));
                  // grad (x - t) / max(x (1 - x), 1e-12)
};

/// An array broadcast against the elements: element i reads data[(i / stride) % period].
struct BroadcastView {
  const void* data = nullptr;  // of the plan's storage type; null: 1
  int64_t stride = 1;
  int64_t period = 1;
};

/// One call of the elementwise family, as ElementProblem on the CPU. Each loss and gradient term
/// is multiplied by weight[i]. With has_ignore, elements whose target truncated toward zero equals
/// `ignore` give l = 0 and gradient 0, and are not counted. For probabilities, an input or target
/// outside [0, 1] (or NaN) gives NaN outputs for the call and an error record naming what the CPU
/// function would name: the first bad input element if there is one (Argument::input), else the
/// first bad target (Argument::target), with its value.
struct ElementPlan {
  ElementOp op = ElementOp::logits;
  Storage storage = Storage::f32;
  const void* x = nullptr;
  const void* t = nullptr;
  int64_t n = 0;
  bool has_ignore = false;
  int64_t ignore = 0;
  BroadcastView weight, pos_weight;
  void* diff = nullptr;      // scale * dl/dx; may alias x
  void* loss = nullptr;      // per-element losses
  void* reduced = nullptr;   // one value: (sum of l) / divisor
  Divide divide = Divide::constant;  // constant or caffe_valid
  double divisor = 1.0;
  double grad_output = 1.0;
  void* workspace = nullptr;
};

// ---- the workspace (device memory, kWorkspaceBytes) -------------------------------------------

inline constexpr int kMaxBlocks = 512;   // partial sums: the main kernels' grids are at most this

/// Layout of the workspace. `error` starts at 0 and holds ~index of the first bad element
/// (atomicMax of ~i, an integer atomic), so 0 means none. The finalize kernel fills the rest of the
/// record from it.
struct Workspace {
  double partial[kMaxBlocks][2];  // main kernel: per-block sums (term 0: all, term 1: nll part)
  double pre[kMaxBlocks][2];      // pre-pass: per-block (count, weight sum)
  double scale;                   // gradient scale (Divide::caffe_valid / weight_sum)
  double divisor;                 // the divisor used
  unsigned long long error;       // ~(flat index) of the first bad element, 0 if none
  int32_t kind;                   // Status::Kind, written by the finalize kernel
  int32_t argument;               // Argument
  int32_t label_kind;             // LabelKind of the offending label
  int32_t reserved;
  int64_t index;                  // flat index
  uint64_t raw;                   // the stored label's bits widened to 64 (int: value; float: double bits)
  double value;                   // its value as a double
  int64_t channels;               // for the message
  int64_t ignore;
  int32_t has_ignore;
  int32_t reserved2;
};
static_assert(sizeof(Workspace) <= 32768, "the workspace outgrew kWorkspaceBytes");

/// Enqueue a call on `stream` (checked by the host already; n and shapes may be 0). Throw
/// unavailable_error on a CUDA launch error (the message names the CUDA error).
void launch(const SoftmaxPlan& plan, stream_t stream);
void launch(const ElementPlan& plan, stream_t stream);

}  // namespace xentkit::cuda::detail
