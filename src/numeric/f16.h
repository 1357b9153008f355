// IEEE binary16 <-> float32 (MLX's CPU software type mlx/types/fp16.h, a port of
// Maratyszcza/FP16; spec §10): round to nearest even with subnormals, overflow to +-Inf.
#pragma once

#include <cmath>
#include <cstdint>

#include "numeric/bits.h"

namespace stquant::numeric {

inline uint16_t F16FromFloat(float x) {
  const uint32_t bits = FloatBits(x);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7D00u);  // NaN as MLX
  if (abs_bits >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520: Inf
  if (abs_bits < 0x38800000u) {
    // |x| < 2^-14: f16 subnormal; adding 0.5 (ulp 2^-24) makes the FPU round to a multiple of
    // 2^-24 with ties to even, and the low mantissa bits of the sum are the f16 code.
    const float sum = FloatFromBits(abs_bits) + 0.5f;
    return static_cast<uint16_t>(sign | (FloatBits(sum) - 0x3F000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the mantissa from 23 to 10 bits, RNE.
  const uint32_t rounded = abs_bits + 0xFFFu + ((abs_bits >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

inline float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in float.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return FloatFromBits(sign | FloatBits(magnitude));
  }
  if (exponent == 0x1F) return FloatFromBits(sign | 0x7F800000u | (mantissa << 13));
  return FloatFromBits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline float RoundToF16(float x) { return F16ToFloat(F16FromFloat(x)); }

}  // namespace stquant::numeric
