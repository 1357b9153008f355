// Scalar reference of MLX's CPU mxfp4 / mxfp8 / nvfp4 quantizer. MLX has no CPU kernel for
// these modes: it runs the composite-op "fallback" of mlx/ops.cpp in the input dtype T, so every
// intermediate result is rounded to T (spec §8.2, §9.2). RoundTo(dtype, ...) below is that rounding.
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "numeric/e8m0.h"
#include "numeric/fp4.h"
#include "numeric/fp8.h"
#include "quant/element.h"
#include "quant/group_params.h"
#include "quant/kernels.h"
#include "quant/packing.h"

namespace stquant::quant {

namespace {

float GroupAbsMax(DType dtype, const void* input, int64_t start, int count) {
  float amax = 0.0f;
  for (int j = 0; j < count; ++j) amax = std::max(amax, std::fabs(LoadElement(dtype, input, start + j)));
  return amax;
}

}  // namespace

void NvEncodeGroupRef(DType dtype, const void* input, int64_t start, int count, float scale, bool global_scale,
                      float encode, uint8_t* codes) {
  for (int j = 0; j < count; ++j) {
    // Divide in T, then multiply by the float32 encode factor (spec §9.2); the product is float32.
    float x = RoundTo(dtype, LoadElement(dtype, input, start + j) / scale);
    if (global_scale) x = x * encode;
    codes[j] = numeric::E2M1FromFloatArgmin(x);
  }
}

int64_t FindNonFinite(DType dtype, const void* input, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(LoadElement(dtype, input, i))) return i;
  }
  return -1;
}

Status NonFiniteError(DType dtype, const void* input, int64_t index, int64_t index_base) {
  return Status::InvalidInput(fmt::format("element {} is {} (NaN/Inf cannot be quantized)", index_base + index,
                                          LoadElement(dtype, input, index)));
}

Status FpQuantizeRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                     float global_scale, QuantizedBuffers out) {
  const int gs = spec.group_size;
  const int64_t groups_per_row = cols / gs;
  const int64_t words_per_row = PackedWordsPerRow(spec, cols);
  auto* scales = static_cast<uint8_t*>(out.scales);
  std::vector<uint8_t> codes(cols);
  const float encode = NvEncodeFactor(spec, global_scale);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups_per_row; ++g) {
      const int64_t start = r * cols + g * gs;
      const int64_t bad = FindNonFinite(dtype, static_cast<const char*>(input) + start * ElementBytes(dtype), gs);
      if (bad >= 0) return NonFiniteError(dtype, input, start + bad);
      const float amax = GroupAbsMax(dtype, input, start, gs);
      uint8_t* group_codes = codes.data() + g * gs;
      if (spec.mode == QuantMode::kNvfp4) {
        const uint8_t byte = NvScaleByte(dtype, amax, spec.global_scale, encode);
        NvEncodeGroupRef(dtype, input, start, gs, numeric::E4M3ToFloat(byte), spec.global_scale, encode, group_codes);
        scales[r * groups_per_row + g] = byte;
      } else {
        const bool fp4 = spec.mode == QuantMode::kMxfp4;
        const int e = MxExponent(spec.profile, dtype, amax, fp4 ? 6.0f : 448.0f);
        const float divisor = RoundTo(dtype, numeric::ExactPow2(e));
        for (int j = 0; j < gs; ++j) {
          const float x = RoundTo(dtype, LoadElement(dtype, input, start + j) / divisor);
          group_codes[j] = fp4 ? numeric::E2M1FromFloatArgmin(x) : numeric::E4M3FromFloat(x);
        }
        scales[r * groups_per_row + g] = MxScaleByte(e);
      }
    }
    PackCodesRef(codes.data(), cols, spec.bits, out.packed + r * words_per_row);
  }
  return Status::Ok();
}

Status QuantizeRowsRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows,
                       int64_t cols, float global_scale, QuantizedBuffers out) {
  if (spec.mode == QuantMode::kAffine) return AffineQuantizeRef(spec, dtype, input, rows, cols, out);
  return FpQuantizeRef(spec, dtype, input, rows, cols, global_scale, out);
}

}  // namespace stquant::quant
