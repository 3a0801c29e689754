#pragma once
// Portable IEEE binary16 / bfloat16 <-> binary32 conversions on bit patterns (internal).

#include <cstdint>
#include <cstring>

namespace xentkit::detail {

inline float half_bits_to_float(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: man * 2^-24, exact in float.
    float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    std::memcpy(&bits, &v, sizeof bits);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0u);  // NaN made quiet
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

inline uint16_t float_to_half_bits(float f) noexcept {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7fffffffu;
  if (a >= 0x47800000u) {  // |f| >= 65536, inf or NaN
    if (a > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((a >> 13) & 0x3ffu);
    return sign | 0x7c00u;
  }
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half or zero
    // Adding 0.5 lines the 10 mantissa bits up at the bottom of the float; the addition rounds
    // to nearest even.
    float v;
    std::memcpy(&v, &a, sizeof v);
    v += 0.5f;
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return sign | static_cast<uint16_t>(b - 0x3f000000u);
  }
  // Normal: rebias the exponent and round the 13 dropped bits to nearest even (a carry into the
  // exponent is the right result, up to inf).
  const uint32_t odd = (a >> 13) & 1u;
  a += 0xc8000fffu + odd;  // (15 - 127) << 23, plus the rounding bias
  return sign | static_cast<uint16_t>(a >> 13);
}

/// bfloat16 is the upper half of a float32: widening is a shift (a signalling NaN made quiet).
inline float bf16_bits_to_float(uint16_t b) noexcept {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  if ((bits & 0x7fffffffu) > 0x7f800000u) bits |= 0x00400000u;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

/// Rounding to nearest, ties to even, of the 16 dropped bits (a carry into the exponent is the
/// right result, up to inf); a NaN keeps its sign and top payload bits and is made quiet.
inline uint16_t float_to_bf16_bits(float f) noexcept {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace xentkit::detail
