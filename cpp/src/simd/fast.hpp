#pragma once
// The vectorised float32 kernels (internal) and the choice of instruction set at run time.
//
// The kernels cover the hot cases of the two families (class-index softmax cross entropy with
// z-loss and soft-capping included); everything else (float64, smoothing,
// probability targets, log-softmax outputs, non-finite rows, element weights) stays on the scalar
// kernels, which remain the reference. A kernel returns how far it got: it stops before touching
// a row or a group of positions it cannot take (a NaN or infinite logit), so the caller can hand
// exactly that one to the scalar kernel and resume after it.

#include <cstdint>

namespace xentkit::detail::fast {

/// Per-row (or per-position) labels as the kernels read them.
inline constexpr int32_t kNoLabel = -2;  // softmax only: no loss, no gradient
inline constexpr int32_t kSkip = -1;     // ignored: loss 0, gradient 0

/// A run of softmax rows (class axis innermost: row r holds x[r*C .. r*C+C)) or of groups of W
/// positions (class stride `inner`: position j of class c at x[c*inner + j]).
struct SoftmaxJob {
  const float* x = nullptr;   // first element of the run
  float* diff = nullptr;      // gradient (may alias x) or null
  float* prob = nullptr;      // softmax (distinct from x and diff) or null
  int64_t count = 0;          // rows, or groups of W positions
  int64_t channels = 0;       // C >= 1
  int64_t inner = 1;          // class stride (positions kernel only)
  const int32_t* y = nullptr; // label per row / position: class, kSkip or kNoLabel
  const double* a = nullptr;  // per row / position: the class weight of its label
  double grad_scale = 1.0;
  double cap = 0.0;           // upper bound of -log p[y]
  double z_loss = 0.0;        // > 0: adds a z lse^2 per labelled row (lse of the capped logits)
  double softcap = 0.0;       // > 0: logits x -> softcap tanh(x / softcap) (0: none)
  double* loss = nullptr;     // out: per row / position loss (weighted, capped)
  // float16 storage (rows kernel of softmax_rows_half only): x, diff and prob are null and these
  // are read and written; scratch holds min(count, 16) * C floats.
  const uint16_t* xh = nullptr;
  uint16_t* diffh = nullptr;
  uint16_t* probh = nullptr;
  float* scratch = nullptr;
};

/// Elementwise sigmoid cross entropy on logits, no weights: loss (1 - t) x + softplus(-x) and
/// gradient grad_scale * (sigmoid(x) - t).
struct SigmoidJob {
  const float* x = nullptr;
  const float* t = nullptr;
  int64_t n = 0;
  float* diff = nullptr;      // may alias x
  float* loss = nullptr;      // per-element losses or null
  double grad_scale = 1.0;
};

struct Kernels {
  const char* name;
  /// Rows, class axis innermost. Returns the number of rows done (< count: row `done` has a
  /// NaN or infinite logit and was not touched).
  int64_t (*softmax_rows)(const SoftmaxJob&);
  /// The same rows in float16 storage (C > 16), read and written without a float32 copy.
  int64_t (*softmax_rows_half)(const SoftmaxJob&);
  /// Groups of W = 16 positions with class stride `inner`. Returns the groups done.
  int64_t (*softmax_positions)(const SoftmaxJob&);
  /// Returns the elements done (a multiple of 16 or n); the sum of their losses in *sum.
  int64_t (*sigmoid)(const SigmoidJob&, double* sum);
  /// IEEE binary16 bit patterns to float and back (to nearest, ties to even).
  void (*half_to_float)(const uint16_t*, float*, int64_t);
  void (*float_to_half)(const float*, uint16_t*, int64_t);
  /// bfloat16 bit patterns to float (a shift) and back (to nearest, ties to even, NaN quiet).
  void (*bf16_to_float)(const uint16_t*, float*, int64_t);
  void (*float_to_bf16)(const float*, uint16_t*, int64_t);
};

/// The kernels for the instruction set in use, or null when none is compiled in (then the
/// scalar kernels do everything).
const Kernels* kernels() noexcept;

inline constexpr int kLanes = 16;

}  // namespace xentkit::detail::fast
