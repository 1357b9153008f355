// FP4 E2M1: bit 3 is the sign, bits 2..0 index the magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}
// (spec §5). No Inf or NaN.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace stquant::numeric {

inline constexpr std::array<float, 16> kE2M1Values = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                                      4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                                      -2.0f, -3.0f, -4.0f, -6.0f};

inline float E2M1ToFloat(uint8_t code) { return kE2M1Values[code & 0xF]; }

// MLX CPU `quantize` encoder (spec §5(b)): argmin over the 16 table values of |x - v|, computed
// in float32, the first index winning ties. So ties go to the smaller magnitude, and every
// |x| <= 0.25 - negative values and -0.0 included - becomes +0 (code 0); NaN and +-Inf give 0.
// For huge |x| the float32 distances round to equal values and the first index (+0) wins: a
// saturated nvfp4 scale with elements near 3e38 encodes them as 0, exactly as MLX does.
inline uint8_t E2M1FromFloatArgmin(float x) {
  uint8_t best = 0;
  float best_distance = std::fabs(x - kE2M1Values[0]);
  for (uint8_t code = 1; code < 16; ++code) {
    const float distance = std::fabs(x - kE2M1Values[code]);
    if (distance < best_distance) {
      best_distance = distance;
      best = code;
    }
  }
  return best;
}

// For |x| < 2^22 every distance above is exact, and the argmin reduces to counting the midpoints
// strictly below |x| (ties stay on the smaller magnitude); the SIMD kernels use this form.
inline constexpr float kE2M1ExactDistanceLimit = 4194304.0f;  // 2^22
inline uint8_t E2M1FromFloatArgminSmall(float x) {
  const float a = std::fabs(x);
  const uint8_t magnitude = (a > 0.25f) + (a > 0.75f) + (a > 1.25f) + (a > 1.75f) + (a > 2.5f) +
                            (a > 3.5f) + (a > 5.0f);
  return static_cast<uint8_t>(magnitude | ((x < 0.0f && magnitude != 0) ? 0x8 : 0));
}

// The round-to-nearest-even encoder of Metal, CUDA and MLX's CPU qqmm helper (spec §5(a)); kept
// for the mlx-metal profile and for tests.
inline uint8_t E2M1FromFloatRne(float x) {
  if (std::isnan(x)) return 0x7;
  const uint8_t sign = std::signbit(x) ? 0x8 : 0;
  const float a = std::fabs(x);
  uint8_t magnitude;
  if (a > 5.0f) magnitude = 7;
  else if (a >= 3.5f) magnitude = 6;
  else if (a > 2.5f) magnitude = 5;
  else if (a >= 1.75f) magnitude = 4;
  else if (a > 1.25f) magnitude = 3;
  else if (a >= 0.75f) magnitude = 2;
  else if (a > 0.25f) magnitude = 1;
  else magnitude = 0;
  return static_cast<uint8_t>(magnitude | sign);
}

}  // namespace stquant::numeric
