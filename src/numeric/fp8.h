// FP8 codecs.
//
// E4M3 (sign, 4 exponent bits bias 7, 3 mantissa bits; max 448) encode is MLX's `to_fp8` (CPU and
// Metal, spec §6.1): round to nearest even, saturate every |x| >= 448 - including Inf and NaN - to
// 0x7E|sign; 0x7F/0xFF are never produced. Two decoders: MLX <= 0.32.2's `from_fp8` (§6.2) reads
// 0x7F/0xFF as +-480; MLX >= 0.32.3 and the OCP E4M3FN format read them as NaN.
// E5M2 (bias 15, 2 mantissa bits) decodes like the upper byte of an IEEE f16.
#pragma once

#include <array>
#include <cstdint>
#include <limits>

#include "numeric/bits.h"
#include "numeric/f16.h"

namespace stquant::numeric {

inline uint8_t E4M3FromFloat(float x) {
  constexpr uint32_t kSaturateBits = 0x43E00000u;  // 448.0f
  constexpr uint32_t kDenormMagic = 141u << 23;     // 2^14
  uint32_t bits = FloatBits(x);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint8_t result;
  if (bits >= kSaturateBits) {
    result = 0x7E;
  } else if (bits < (121u << 23)) {
    // |x| < 2^-6: adding 2^14 makes the FPU round |x| to a multiple of 2^-9 (RNE); the low byte
    // of the sum is the subnormal code.
    const uint32_t sum = FloatBits(FloatFromBits(bits) + FloatFromBits(kDenormMagic));
    result = static_cast<uint8_t>(sum - kDenormMagic);
  } else {
    const uint32_t mantissa_odd = (bits >> 20) & 1u;
    bits += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu + mantissa_odd;
    result = static_cast<uint8_t>(bits >> 20);
  }
  return static_cast<uint8_t>(result | (sign >> 24));
}

// The magnitude bits read as an f16 with exponent field 0eeee, times 2^8, equal the E4M3 value.
inline float E4M3ToFloat(uint8_t code) {
  const float magnitude = F16ToFloat(static_cast<uint16_t>((code & 0x7Fu) << 7)) * 256.0f;
  return (code & 0x80u) ? -magnitude : magnitude;
}

// Standard E4M3FN: as E4M3ToFloat, but 0x7F/0xFF are NaN.
inline float E4M3FnToFloat(uint8_t code) {
  return (code & 0x7Fu) == 0x7Fu ? std::numeric_limits<float>::quiet_NaN() : E4M3ToFloat(code);
}

inline float E5M2ToFloat(uint8_t code) { return F16ToFloat(static_cast<uint16_t>(code << 8)); }

// All 256 E4M3 values; the kernels index this instead of decoding.
inline const std::array<float, 256>& E4M3Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = E4M3ToFloat(static_cast<uint8_t>(i));
    return t;
  }();
  return table;
}

}  // namespace stquant::numeric
