#pragma once
// Host-side argument checks shared by the CPU kernels (internal).

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "xentkit/errors.hpp"
#include "xentkit/options.hpp"

namespace xentkit::detail {

inline void check_size(const char* what, int64_t value) {
  if (value < 0) {
    throw value_error(std::string(what) + ": expected a size >= 0, got " + std::to_string(value));
  }
}

/// a*b, or value_error when the product overflows int64.
inline int64_t checked_mul(const char* what, int64_t a, int64_t b) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) {
    throw value_error(std::string(what) + ": element count " + std::to_string(a) + " x " +
                      std::to_string(b) + " overflows 64 bits");
  }
  return a * b;
}

inline void check_pointer(const char* what, const void* p, int64_t count) {
  if (p == nullptr && count > 0) {
    throw value_error(std::string(what) + ": expected a buffer of " + std::to_string(count) +
                      " elements, got a null pointer");
  }
}

inline void check_reduction(Reduction reduction) {
  const int r = static_cast<int>(reduction);
  if (r < 0 || r > 2) {
    throw value_error("reduction: expected none (0), mean (1) or sum (2), got " + std::to_string(r));
  }
}

/// The message of a probability outside [0, 1] (binary_cross_entropy): `precision` digits, the
/// max_digits10 of the type the value was computed in.
inline std::string probability_message(const char* what, double value, int precision,
                                       int64_t index) {
  std::ostringstream msg;
  msg.precision(precision);
  msg << what << ": expected every element in [0, 1], got " << value << " at flat index " << index;
  return msg.str();
}

/// The error of a label to score along a class axis of length 0.
inline value_error no_class_error(const char* scores, const char* argument, int64_t index) {
  return value_error(std::string(scores) +
                     ": expected at least one class along the class axis, got 0 classes with a "
                     "label to score (" + argument + " at flat index " + std::to_string(index) +
                     ")");
}

/// Probability targets (one row of `channels` targets per position) need at least one class when
/// there is a position to score: a row over no classes has no softmax, so its loss is undefined.
inline void check_probability_classes(const char* scores, int64_t positions, int64_t channels) {
  if (positions > 0 && channels == 0) {
    throw value_error(std::string(scores) +
                      ": expected at least one class along the class axis, got 0 classes with " +
                      std::to_string(positions) + " position(s) to score");
  }
}

/// Label smoothing as PyTorch reads it: above 1 (or NaN) is an error, negative means none.
inline double label_smoothing_of(double eps) {
  if (eps != eps || eps > 1.0) {
    throw value_error("label_smoothing: expected a value in [0, 1], got " + std::to_string(eps));
  }
  return eps > 0.0 ? eps : 0.0;
}

/// The z-loss coefficient: a value >= 0 (NaN or negative is an error).
inline double z_loss_of(double z) {
  if (!(z >= 0.0) || z == std::numeric_limits<double>::infinity()) {
    throw value_error("z_loss: expected a finite value >= 0, got " + std::to_string(z));
  }
  return z;
}

/// The soft-capping value: 0 (none) or a finite value > 0 (NaN, negative or infinite is an error).
inline double softcap_of(double s) {
  if (!(s >= 0.0) || s == std::numeric_limits<double>::infinity()) {
    throw value_error("softcap: expected None or a finite value > 0, got " + std::to_string(s));
  }
  return s;
}

template <typename T>
void check_broadcast(const char* what, const Broadcast<T>& b) {
  if (b.data != nullptr && (b.stride < 1 || b.period < 1)) {
    throw value_error(std::string(what) + ": expected a broadcast with stride >= 1 and period >= 1, got "
                      "stride " + std::to_string(b.stride) + " and period " + std::to_string(b.period));
  }
}

/// True when the buffers [a, a + n) and [b, b + n) of T share memory.
template <typename T, typename U>
bool overlapping(const T* a, const U* b, int64_t n) noexcept {
  if (a == nullptr || b == nullptr || n <= 0) return false;
  const auto pa = reinterpret_cast<uintptr_t>(a);
  const auto pb = reinterpret_cast<uintptr_t>(b);
  const auto bytes = static_cast<uintptr_t>(n) * sizeof(T);
  return pa < pb + bytes && pb < pa + bytes;
}

/// An output of n values that may be the input itself (in place) but must not overlap it otherwise.
template <typename T>
void check_output(const char* what, const T* out, const T* input, int64_t n) {
  if (out != input && overlapping(out, input, n)) {
    throw value_error(std::string(what) +
                      ": expected the input itself or a buffer that does not overlap it, got a "
                      "partially overlapping one");
  }
}

/// An output of n values that must not overlap the input at all.
template <typename T>
void check_separate(const char* what, const T* out, const T* input, int64_t n) {
  if (overlapping(out, input, n)) {
    throw value_error(std::string(what) + ": expected a buffer that does not overlap the input");
  }
}

}  // namespace xentkit::detail
