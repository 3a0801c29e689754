// float16 conversions: the vectorised ones of the instruction set in use, else the portable ones.

#include <cstring>

#include "half_bits.hpp"
#include "simd/fast.hpp"
#include "xentkit/half.hpp"

namespace xentkit {

float to_float(half h) noexcept { return detail::half_bits_to_float(h.bits); }

half to_half(float f) noexcept { return half{detail::float_to_half_bits(f)}; }

void to_float(const half* in, float* out, int64_t n) noexcept {
  const auto* bits = reinterpret_cast<const uint16_t*>(in);
  if (const auto* k = detail::fast::kernels()) {
    k->half_to_float(bits, out, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = detail::half_bits_to_float(bits[i]);
}

void to_half(const float* in, half* out, int64_t n) noexcept {
  auto* bits = reinterpret_cast<uint16_t*>(out);
  if (const auto* k = detail::fast::kernels()) {
    k->float_to_half(in, bits, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) bits[i] = detail::float_to_half_bits(in[i]);
}

}  // namespace xentkit
