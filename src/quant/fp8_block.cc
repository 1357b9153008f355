#include "stquant/fp8_block.h"

#include <array>
#include <cstring>
#include <vector>

#include "numeric/bf16.h"
#include "numeric/fp8.h"

namespace stquant {

int64_t DecodeBlockFp8Rows(QuantProfile profile, const uint8_t* codes, int64_t first_row, int64_t rows, int64_t cols,
                           const void* scales, DType scale_dtype, uint16_t* out) {
  const std::array<float, 256>& e4m3 = numeric::E4M3Table();
  const int64_t scale_cols = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
  std::vector<float> row_scales(scale_cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t scale_row = (first_row + r) / kFp8BlockSize;
    for (int64_t b = 0; b < scale_cols; ++b) {
      const int64_t index = scale_row * scale_cols + b;
      if (scale_dtype == DType::kBF16) {
        row_scales[b] = numeric::BF16ToFloat(static_cast<const uint16_t*>(scales)[index]);
      } else {
        std::memcpy(&row_scales[b], static_cast<const uint8_t*>(scales) + index * 4, 4);
      }
    }
    const uint8_t* row = codes + r * cols;
    uint16_t* row_out = out + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      if (profile != QuantProfile::kMlxCpu0322 && (row[c] & 0x7F) == 0x7F) return r * cols + c;
      row_out[c] = numeric::BF16FromFloat(e4m3[row[c]] * row_scales[c / kFp8BlockSize]);
    }
  }
  return -1;
}

}  // namespace stquant
