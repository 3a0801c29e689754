#pragma once
// Host-side argument checks shared by the CPU kernels (internal).

#include <cstdint>
#include <limits>
#include <string>

#include "xentkit/errors.hpp"

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

}  // namespace xentkit::detail
