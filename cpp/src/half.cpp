// float16 and bfloat16 conversions: the vectorised ones of the instruction set in use, else the portable ones.

#include <cstring>

#include "half_bits.hpp"
#include "simd/fast.hpp"
#include "kernels.hpp"
#include "xentkit/bfloat16.hpp"
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

float to_float(bfloat16 b) noexcept { return detail::bf16_bits_to_float(b.bits); }

bfloat16 to_bfloat16(float f) noexcept { return bfloat16{detail::float_to_bf16_bits(f)}; }

void to_float(const bfloat16* in, float* out, int64_t n) noexcept {
  const auto* bits = reinterpret_cast<const uint16_t*>(in);
  if (const auto* k = detail::fast::kernels()) {
    k->bf16_to_float(bits, out, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = detail::bf16_bits_to_float(bits[i]);
}

void to_bfloat16(const float* in, bfloat16* out, int64_t n) noexcept {
  auto* bits = reinterpret_cast<uint16_t*>(out);
  if (const auto* k = detail::fast::kernels()) {
    k->float_to_bf16(in, bits, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) bits[i] = detail::float_to_bf16_bits(in[i]);
}

namespace detail {

void widen16(Bits16 format, const uint16_t* in, float* out, int64_t n) noexcept {
  if (format == Bits16::bf16) {
    to_float(reinterpret_cast<const bfloat16*>(in), out, n);
  } else {
    to_float(reinterpret_cast<const half*>(in), out, n);
  }
}

void narrow16(Bits16 format, const float* in, uint16_t* out, int64_t n) noexcept {
  if (format == Bits16::bf16) {
    to_bfloat16(in, reinterpret_cast<bfloat16*>(out), n);
  } else {
    to_half(in, reinterpret_cast<half*>(out), n);
  }
}

}  // namespace detail

}  // namespace xentkit
