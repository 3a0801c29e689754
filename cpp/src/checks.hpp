#pragma once
// Host-side argument checks shared by the CPU kernels (internal).

#include <cstdint>
#include <limits>
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
