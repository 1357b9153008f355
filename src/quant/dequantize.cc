// Dequantization with MLX's CPU arithmetic. MLX's CPU dequantize is a graph of elementwise ops,
// so each product and sum is rounded to the dtype it is computed in (spec §4.4, §8.4, §9.4).
#include <fmt/format.h>

#include "numeric/e8m0.h"
#include "numeric/fp4.h"
#include "numeric/fp8.h"
#include "quant/element.h"
#include "quant/group_params.h"
#include "quant/kernels.h"
#include "quant/packing.h"

namespace stquant {

DType DefaultDequantizeDType(const QuantSpec& spec, DType scale_dtype) {
  if (spec.mode == QuantMode::kAffine) return scale_dtype;
  if (spec.mode == QuantMode::kNvfp4 && spec.global_scale) return DType::kF32;
  return DType::kBF16;
}

Status DequantizeRows(const QuantSpec& spec, DType scale_dtype, ConstQuantizedBuffers in, int64_t rows,
                      int64_t cols, float global_scale, DType out_dtype, void* output) {
  using quant::RoundTo;
  using quant::StoreElement;
  STQ_RETURN_IF_ERROR(ValidateQuantSpec(spec));
  if (out_dtype != DType::kBF16 && out_dtype != DType::kF16 && out_dtype != DType::kF32) {
    return Status::InvalidArgument(fmt::format("[dequantize] Only real floating types are supported but output dtype == {}.",
                                               DTypeName(out_dtype)));
  }
  if (spec.mode == QuantMode::kNvfp4 && spec.global_scale && out_dtype != DType::kF32) {
    return Status::InvalidArgument("[dequantize] nvfp4 with a global scale dequantizes to float32 (as MLX's CPU backend)");
  }
  if (spec.mode == QuantMode::kAffine && scale_dtype != DType::kBF16 && scale_dtype != DType::kF16 &&
      scale_dtype != DType::kF32) {
    // The kernel reads scales and biases as elements of scale_dtype: anything else would be read
    // with the wrong width.
    return Status::InvalidArgument(fmt::format(
        "[dequantize] affine scales and biases must be bfloat16, float16 or float32 but have type {}.",
        DTypeName(scale_dtype)));
  }
  if (rows < 0 || cols < 0) {
    return Status::InvalidArgument(fmt::format("[dequantize] negative size {} x {}", rows, cols));
  }
  if (cols % spec.group_size != 0) {
    return Status::InvalidArgument(fmt::format("[dequantize] last dimension {} is not a multiple of the group size {}",
                                               cols, spec.group_size));
  }
  const int gs = spec.group_size;
  const int64_t groups_per_row = cols / gs;
  const int64_t words_per_row = PackedWordsPerRow(spec, cols);
  const auto* fp_scales = static_cast<const uint8_t*>(in.scales);
  const float global_factor = global_scale / 2688.0f;
  // The group's scale (and bias) once, then its elements: the arithmetic of each element is MLX's.
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* words = in.packed + r * words_per_row;
    for (int64_t g = 0; g < groups_per_row; ++g) {
      const int64_t group_index = r * groups_per_row + g;
      const int64_t first = g * gs;
      auto store = [&](auto element_value) {
        for (int j = 0; j < gs; ++j) {
          const uint8_t code = quant::UnpackCodeRef(words, first + j, spec.bits);
          StoreElement(out_dtype, output, r * cols + first + j, element_value(code));
        }
      };
      switch (spec.mode) {
        case QuantMode::kAffine: {
          // T(T(q * scale) + bias), then astype(out_dtype).
          const float scale = quant::LoadElement(scale_dtype, in.scales, group_index);
          const float bias = quant::LoadElement(scale_dtype, in.biases, group_index);
          store([&](uint8_t code) {
            return RoundTo(scale_dtype, RoundTo(scale_dtype, static_cast<float>(code) * scale) + bias);
          });
          break;
        }
        case QuantMode::kMxfp4:
        case QuantMode::kMxfp8: {
          // The power of two is computed in the output dtype (f16 under/overflows, spec §7).
          const float scale = RoundTo(out_dtype, numeric::ExactPow2(fp_scales[group_index] - 127));
          store([&](uint8_t code) {
            const float element =
                spec.mode == QuantMode::kMxfp4 ? numeric::E2M1ToFloat(code) : quant::E4M3Decode(spec.profile, code);
            return RoundTo(out_dtype, element * scale);
          });
          break;
        }
        case QuantMode::kNvfp4: {
          float scale = quant::E4M3Decode(spec.profile, fp_scales[group_index]);
          if (spec.global_scale) scale = scale * global_factor;
          store([&](uint8_t code) { return RoundTo(out_dtype, numeric::E2M1ToFloat(code) * scale); });
          break;
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace stquant
