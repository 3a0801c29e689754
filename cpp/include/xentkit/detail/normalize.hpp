#pragma once
// Caffe's get_normalizer, shared by both layers.

#include <algorithm>
#include <cstdint>

#include "xentkit/options.hpp"

namespace xentkit::detail {

/// max(1, Z): Z = outer*inner (full), valid (valid), outer (batch_size) or 1 (none).
inline double normalizer(Normalization mode, int64_t outer, int64_t inner, int64_t valid) noexcept {
  double z = 1.0;
  switch (mode) {
    case Normalization::full: z = static_cast<double>(outer) * static_cast<double>(inner); break;
    case Normalization::valid: z = static_cast<double>(valid); break;
    case Normalization::batch_size: z = static_cast<double>(outer); break;
    case Normalization::none: z = 1.0; break;
  }
  return std::max(1.0, z);
}

}  // namespace xentkit::detail
