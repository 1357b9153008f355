// bfloat16 <-> float32, exactly as MLX's CPU software type (mlx/types/bf16.h; spec §10):
// round to nearest even, overflow to +-Inf, every NaN becomes the canonical 0x7FC0.
#pragma once

#include <cstdint>

#include "numeric/bits.h"

namespace stquant::numeric {

inline uint16_t BF16FromFloat(float x) {
  const uint32_t bits = FloatBits(x);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN, sign dropped as MLX does
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

inline float BF16ToFloat(uint16_t bits) { return FloatFromBits(static_cast<uint32_t>(bits) << 16); }

// Rounds a float to the nearest bfloat16 value and returns it as a float.
inline float RoundToBF16(float x) { return BF16ToFloat(BF16FromFloat(x)); }

}  // namespace stquant::numeric
