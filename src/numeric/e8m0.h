// E8M0: an unsigned power-of-two scale, byte b meaning 2^(b - 127) (OCP MX). 0xFF decodes to +Inf
// as on MLX's CPU and Metal backends (spec §7).
#pragma once

#include <cstdint>

#include "numeric/bits.h"

namespace stquant::numeric {

inline float E8M0ToFloat(uint8_t b) {
  if (b == 0) return FloatFromBits(0x00400000u);  // 2^-127, a float subnormal
  return FloatFromBits(static_cast<uint32_t>(b) << 23);
}

// Exact 2^e for -149 <= e <= 127 (0 below, +Inf above).
inline float ExactPow2(int e) {
  if (e > 127) return FloatFromBits(0x7F800000u);
  if (e >= -126) return FloatFromBits(static_cast<uint32_t>(e + 127) << 23);
  if (e >= -149) return FloatFromBits(1u << (e + 149));
  return 0.0f;
}

}  // namespace stquant::numeric
