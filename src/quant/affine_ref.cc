// Scalar reference of MLX's CPU affine quantizer (spec §4.1, §4.3). Every line mirrors one
// float32 operation of mlx/backend/cpu/quantized.cpp; no FMA (-ffp-contract=off), no reordering.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "quant/element.h"
#include "quant/group_params.h"
#include "quant/kernels.h"
#include "quant/packing.h"

namespace stquant::quant {

Status AffineQuantizeRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows,
                         int64_t cols, QuantizedBuffers out) {
  const int64_t groups_per_row = cols / spec.group_size;
  const int64_t words_per_row = PackedWordsPerRow(spec, cols);
  const float n_bins = static_cast<float>((1 << spec.bits) - 1);
  std::vector<uint8_t> codes(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row_start = r * cols;
    for (int64_t g = 0; g < groups_per_row; ++g) {
      const int64_t start = row_start + g * spec.group_size;
      float w_min = std::numeric_limits<float>::infinity();
      float w_max = -w_min;
      for (int j = 0; j < spec.group_size; ++j) {
        const float x = LoadElement(dtype, input, start + j);
        if (!std::isfinite(x)) return NonFiniteError(dtype, input, start + j);
        w_max = std::max(w_max, x);
        w_min = std::min(w_min, x);
      }
      const auto [scale, bias] = AffineGroupParams(w_min, w_max, spec.bits);
      for (int j = 0; j < spec.group_size; ++j) {
        const float x = LoadElement(dtype, input, start + j);
        const float q = std::rint((x - bias) / scale);
        codes[g * spec.group_size + j] = static_cast<uint8_t>(std::clamp(q, 0.0f, n_bins));
      }
      StoreElement(dtype, out.scales, r * groups_per_row + g, scale);
      StoreElement(dtype, out.biases, r * groups_per_row + g, bias);
    }
    PackCodesRef(codes.data(), cols, spec.bits, out.packed + r * words_per_row);
  }
  return Status::Ok();
}

}  // namespace stquant::quant
