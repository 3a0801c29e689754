#pragma once
// The CPU kernel families (internal). Every public loss maps its conventions onto one of these
// problem descriptions; none has a kernel of its own:
//   softmax family: softmax_with_loss, cross_entropy (class indices and probabilities), nll_loss,
//                   log_softmax, softmax and TF's softmax/sparse-softmax cross entropy;
//   elementwise family: sigmoid_cross_entropy_loss, binary_cross_entropy_with_logits and TF's
//                   sigmoid cross entropy (logits), and binary_cross_entropy (probabilities).

#include <cstdint>
#include <optional>
#include <type_traits>

#include "xentkit/options.hpp"

/// Calls X(T, L) for every label type the Caffe softmax layer reads (explicit instantiations).
#define XENTKIT_FOR_EACH_LABEL_TYPE(X, T)                                                \
  X(T, int8_t) X(T, int16_t) X(T, int32_t) X(T, int64_t) X(T, uint8_t) X(T, uint16_t) \
  X(T, uint32_t) X(T, uint64_t) X(T, float) X(T, double)

/// Calls X(T, L) for every integer class-index type (the PyTorch/TF functions).
#define XENTKIT_FOR_EACH_INDEX_TYPE(X, T)                                                \
  X(T, int8_t) X(T, int16_t) X(T, int32_t) X(T, int64_t) X(T, uint8_t) X(T, uint16_t) \
  X(T, uint32_t) X(T, uint64_t)

namespace xentkit {
struct half;
struct bfloat16;
}

namespace xentkit::detail {

/// The bit patterns behind float16 storage (null stays null).
inline const uint16_t* half_bits(const half* p) noexcept {
  return reinterpret_cast<const uint16_t*>(p);
}
inline uint16_t* half_bits(half* p) noexcept { return reinterpret_cast<uint16_t*>(p); }
inline const uint16_t* half_bits(const bfloat16* p) noexcept {
  return reinterpret_cast<const uint16_t*>(p);
}
inline uint16_t* half_bits(bfloat16* p) noexcept { return reinterpret_cast<uint16_t*>(p); }

/// Which 16-bit format a HalfSoftmaxIO / HalfElementIO holds (one I/O path for both).
enum class Bits16 : uint8_t { f16, bf16 };

template <typename S>
constexpr Bits16 bits16_of() noexcept {
  return std::is_same_v<S, bfloat16> ? Bits16::bf16 : Bits16::f16;
}

/// 16-bit bit patterns of either format to float32 and back (vectorised where the CPU allows).
void widen16(Bits16 format, const uint16_t* in, float* out, int64_t n) noexcept;
void narrow16(Bits16 format, const float* in, uint16_t* out, int64_t n) noexcept;

// ---- softmax family: scores viewed as (outer, channels, inner), softmax over channels ---------

/// float16 storage of a float32 softmax problem. When a problem carries one, its float pointers
/// x, soft, diff, prob, log_prob and loss are null and these are read and written instead,
/// through float32 scratch a chunk at a time (diff may alias x).
struct HalfSoftmaxIO {
  const uint16_t* x = nullptr;
  const uint16_t* soft = nullptr;
  uint16_t* diff = nullptr;
  uint16_t* prob = nullptr;
  uint16_t* log_prob = nullptr;
  uint16_t* loss = nullptr;
  Bits16 format = Bits16::f16;
};

enum class SoftmaxOp {
  xent,  // softmax, then cross entropy against class indices or probabilities (or no target)
  nll,   // the scores already are log-probabilities: gather -w[y] * x[y]
};

/// One call of the softmax family. Per position (o, s) with label y (or probabilities q):
///   class index:   l = (1 - eps) * w[y] * min(-log p[y], cap) + (eps / C) * sum_c w[c] (-log p[c])
///   probabilities: l = -sum_c w[c] q'[c] log p[c], q' = (1 - eps) q + eps / C
///   nll:           l = -w[y] * x[y]
/// with w = 1 when class_weight is null. Ignored positions give l = 0 and a zero gradient.
template <typename T, typename L>
struct SoftmaxProblem {
  SoftmaxOp op = SoftmaxOp::xent;
  const T* x = nullptr;            // outer*channels*inner scores
  const L* labels = nullptr;       // outer*inner class indices, already validated (or null)
  const T* soft = nullptr;         // probability targets in the layout of x (or null)
  int64_t outer = 0, channels = 0, inner = 0;
  bool has_ignore = false;
  int64_t ignore = 0;
  const T* class_weight = nullptr; // channels weights (or null: all 1)
  double smoothing = 0.0;          // eps in [0, 1]
  T* diff = nullptr;               // gradient, grad_scale * dl/dx; may alias x
  T* prob = nullptr;               // softmax; must not alias x or diff
  T* log_prob = nullptr;           // log-softmax; must not alias x or diff
  T* loss = nullptr;               // outer*inner per-position losses
  double grad_scale = 1.0;
  double cap = 0.0;                // upper bound of -log p[y] (+inf for none)
  double z_loss = 0.0;             // adds z_loss * w[y] * lse^2 per non-ignored position (xent)
  double softcap = 0.0;            // > 0: logits x -> softcap * tanh(x / softcap) (0: none)
  const HalfSoftmaxIO* half = nullptr;  // float16 storage (T = float only)
};

/// The sum over positions of their losses, with every requested output written in the same pass.
/// Deterministic for any thread count.
template <typename T, typename L>
double softmax_xent(const SoftmaxProblem<T, L>& pb);

/// Checks every label (throwing label_error for the first bad one, value_error when channels is 0
/// with positions to score) and returns the number of non-ignored positions.
/// `argument` and `scores` name the labels and the scores in messages.
template <typename L>
int64_t validate_labels(const L* labels, int64_t positions, int64_t channels,
                        const std::optional<int64_t>& ignore, const char* argument = "labels",
                        const char* scores = "scores");

/// The sum of weight[label] over non-ignored positions (labels already validated), in double.
template <typename T, typename L>
double target_weight_sum(const L* labels, int64_t positions, int64_t channels,
                         const std::optional<int64_t>& ignore, const T* weight);

// ---- elementwise family ----------------------------------------------------------------------

enum class ElementOp {
  logits,         // l = (1 - t) x + (1 + (pw - 1) t) softplus(-x)
  probabilities,  // l = -(t max(log x, -100) + (1 - t) max(log(1 - x), -100))
};

/// float16 storage of a float32 elementwise problem (see HalfSoftmaxIO).
struct HalfElementIO {
  const uint16_t* x = nullptr;
  const uint16_t* t = nullptr;
  uint16_t* diff = nullptr;
  uint16_t* loss = nullptr;
  Bits16 format = Bits16::f16;
};

template <typename T>
struct ElementProblem {
  ElementOp op = ElementOp::logits;
  const T* x = nullptr;          // n inputs (logits or probabilities)
  const T* t = nullptr;          // n targets
  int64_t n = 0;
  bool has_ignore = false;       // ignore where the target truncated toward zero equals `ignore`
  int64_t ignore = 0;
  Broadcast<T> weight;           // element weights (scale loss and gradient)
  Broadcast<T> pos_weight;       // logits only
  T* diff = nullptr;             // grad_scale * dl/dx, 0 where ignored; may alias x
  T* loss = nullptr;             // per-element losses (0 where ignored)
  double grad_scale = 1.0;
  int64_t base = 0;              // global index of x[0] (for the broadcast weights)
  const HalfElementIO* half = nullptr;  // float16 storage (T = float only)
};

struct ElementSums {
  double loss = 0.0;   // sum of the (weighted) losses over non-ignored elements
  int64_t valid = 0;   // their number
};

template <typename T>
ElementSums elementwise_xent(const ElementProblem<T>& pb);

/// Elements whose target truncated toward zero differs from `ignore`.
template <typename T>
int64_t count_not_ignored(const T* t, int64_t n, int64_t ignore);

// ---- storage -----------------------------------------------------------------------------

/// Points a softmax problem at its data: its float pointers when S is T, else float16 storage
/// through io (which must outlive the call).
template <typename T, typename L, typename S>
void bind(SoftmaxProblem<T, L>& pb, HalfSoftmaxIO& io, const S* x, S* diff, S* prob, S* loss) {
  if constexpr (std::is_same_v<S, T>) {
    pb.x = x;
    pb.diff = diff;
    pb.prob = prob;
    pb.loss = loss;
  } else {
    io.x = half_bits(x);
    io.diff = half_bits(diff);
    io.prob = half_bits(prob);
    io.loss = half_bits(loss);
    io.format = bits16_of<S>();
    pb.half = &io;
  }
}

/// The same for an elementwise problem.
template <typename T, typename S>
void bind(ElementProblem<T>& pb, HalfElementIO& io, const S* x, const S* t, S* diff, S* loss) {
  if constexpr (std::is_same_v<S, T>) {
    pb.x = x;
    pb.t = t;
    pb.diff = diff;
    pb.loss = loss;
  } else {
    io.x = half_bits(x);
    io.t = half_bits(t);
    io.diff = half_bits(diff);
    io.loss = half_bits(loss);
    io.format = bits16_of<S>();
    pb.half = &io;
  }
}
int64_t count_not_ignored_half(const uint16_t* t, int64_t n, int64_t ignore,
                               Bits16 format = Bits16::f16);

}  // namespace xentkit::detail
