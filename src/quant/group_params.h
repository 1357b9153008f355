// The per-group scalar math shared by the reference and the SIMD kernels: one call per group,
// so it stays scalar; the elements are the hot loop.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "numeric/fp8.h"
#include "quant/element.h"
#include "stquant/quant_spec.h"

namespace stquant::quant {

// MLX CPU affine scale and bias of a group with float32 min/max (spec §4.1, steps 2-6).
struct AffineParams {
  float scale;
  float bias;
};
inline AffineParams AffineGroupParams(float w_min, float w_max, int bits) {
  constexpr float kEps = 1e-7f;
  const float n_bins = static_cast<float>((1 << bits) - 1);
  const bool edge_is_min = std::fabs(w_min) > std::fabs(w_max);
  float scale = std::max((w_max - w_min) / n_bins, kEps);
  scale = edge_is_min ? scale : -scale;
  const float edge = edge_is_min ? w_min : w_max;
  const float q0 = std::rint(edge / scale);
  if (q0 == 0.0f) return {scale, 0.0f};
  return {edge / q0, edge};
}

// E8M0 exponent of an mx group from its scale s = T(amax / maxval) (spec §7, §8.2).
//   kMlxCpu (MLX >= 0.32.3, ml-explore/mlx#4353): the smallest e with 2^e >= s, so the group's
//     largest element never saturates.
//   kMlxCpu0322 (MLX <= 0.32.2, the golden vectors): e = rint(T(log2(s))), ties to even.
// Both give 0 for s == 0.
inline int MxExponent(QuantProfile profile, DType dtype, float amax, float maxval) {
  const float s = RoundTo(dtype, amax / maxval);
  if (s == 0.0f) return 0;
  if (profile == QuantProfile::kMlxCpu0322) return static_cast<int>(std::rint(RoundTo(dtype, std::log2(s))));
  int exponent = 0;
  const float mantissa = std::frexp(s, &exponent);  // s = mantissa * 2^exponent, mantissa in [0.5, 1)
  return mantissa == 0.5f ? exponent - 1 : exponent;
}

// MLX casts the int32 e + 127 to uint8; below e = -127 this wraps (spec §7).
inline uint8_t MxScaleByte(int exponent) { return static_cast<uint8_t>(exponent + 127); }

// nvfp4 E4M3 scale byte (spec §9.2): to_fp8(T(amax / 6) [* encode in float32 with a global scale]).
inline uint8_t NvScaleByte(DType dtype, float amax, bool global_scale, float encode) {
  float s = RoundTo(dtype, amax / 6.0f);
  if (global_scale) s = s * encode;  // T x float32 promotes to float32
  return numeric::E4M3FromFloat(s);
}

// E4M3 bytes as the profile's MLX from_fp8 reads them: 0x7F/0xFF are +-480 up to MLX 0.32.2 and
// NaN from 0.32.3 on (E4M3FN). stquant never writes those codes; they only come from other data.
inline float E4M3Decode(QuantProfile profile, uint8_t code) {
  return profile == QuantProfile::kMlxCpu0322 ? numeric::E4M3ToFloat(code) : numeric::E4M3FnToFloat(code);
}

// nvfp4's encode factor 2688/g = (448 * 6) / global_scale, in float32.
inline float NvEncodeFactor(const QuantSpec& spec, float global_scale) {
  return spec.global_scale ? 2688.0f / global_scale : 1.0f;
}

}  // namespace stquant::quant
