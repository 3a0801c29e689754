#pragma once
// Reading class labels of any integer or floating type, Caffe style: a label is truncated toward
// zero, compared with the ignored label, then checked against [0, C).

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>

#include "xentkit/errors.hpp"

/// Functions shared by the CPU kernels and the CUDA kernels are marked with this.
#if defined(__CUDACC__)
#define XENTKIT_HD __host__ __device__
#else
#define XENTKIT_HD
#endif

namespace xentkit::detail {

/// Result of reading one label: a class index in [0, C), or one of these.
inline constexpr int64_t kIgnored = -1;
inline constexpr int64_t kInvalid = -2;

/// Truncates a stored label toward zero. Returns false when the value has no int64 equivalent
/// (NaN, infinities, magnitudes of 2^63 and more).
template <typename L>
XENTKIT_HD inline bool truncate_label(L raw, int64_t& out) noexcept {
  if constexpr (std::is_floating_point_v<L>) {
    const double d = static_cast<double>(raw);
    // The range test is false for NaN as well.
    if (!(d > -9223372036854775808.0 && d < 9223372036854775808.0)) return false;
    out = static_cast<int64_t>(d);  // truncation toward zero
    return true;
  } else if constexpr (std::is_unsigned_v<L>) {
    if (static_cast<uint64_t>(raw) > 9223372036854775807ULL)  // INT64_MAX
      return false;
    out = static_cast<int64_t>(raw);
    return true;
  } else {
    out = static_cast<int64_t>(raw);
    return true;
  }
}

/// Class index of a stored label, kIgnored, or kInvalid.
template <typename L>
XENTKIT_HD inline int64_t classify_label(L raw, int64_t channels, bool has_ignore,
                                         int64_t ignore) noexcept {
  int64_t v;
  if (!truncate_label(raw, v)) return kInvalid;
  if (has_ignore && v == ignore) return kIgnored;
  return (v >= 0 && v < channels) ? v : kInvalid;
}

template <typename L>
std::string label_text(L raw) {
  std::ostringstream os;
  if constexpr (std::is_floating_point_v<L>) {
    os.precision(std::numeric_limits<L>::max_digits10);
    os << static_cast<double>(raw);
  } else if constexpr (std::is_unsigned_v<L>) {
    os << static_cast<uint64_t>(raw);
  } else {
    os << static_cast<int64_t>(raw);
  }
  return os.str();
}

/// Builds the label_error for labels[index].
template <typename L>
label_error make_label_error(const char* argument, L raw, int64_t index, int64_t channels,
                             const std::optional<int64_t>& ignore) {
  std::ostringstream msg;
  const std::string text = label_text(raw);
  msg << argument << ": expected class indices in [0, " << channels << ")";
  if (ignore) msg << " or the ignored label " << *ignore;
  msg << ", got " << text << " at flat index " << index;
  return label_error(msg.str(), text, static_cast<double>(raw), index);
}

}  // namespace xentkit::detail
