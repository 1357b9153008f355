#include "stquant/fp8_block.h"

#include <array>
#include <cstring>
#include <vector>

#include "numeric/bf16.h"
#include "numeric/fp8.h"

namespace stquant {

Fp8ScaleWindow ScaleWindow(int64_t first_row, int64_t rows, int64_t first_col, int64_t cols) {
  Fp8ScaleWindow w;
  w.first_row = first_row / kFp8BlockSize;
  w.rows = (first_row + rows - 1) / kFp8BlockSize - w.first_row + 1;
  w.first_col = first_col / kFp8BlockSize;
  w.cols = (first_col + cols - 1) / kFp8BlockSize - w.first_col + 1;
  return w;
}

int64_t DecodeBlockFp8Rows(QuantProfile profile, const uint8_t* codes, int64_t first_row, int64_t rows,
                           int64_t first_col, int64_t cols, const void* scales, DType scale_dtype, uint16_t* out) {
  if (rows <= 0 || cols <= 0) return -1;
  const std::array<float, 256>& e4m3 = numeric::E4M3Table();
  const Fp8ScaleWindow window = ScaleWindow(first_row, rows, first_col, cols);
  std::vector<float> row_scales(window.cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t scale_row = (first_row + r) / kFp8BlockSize - window.first_row;
    for (int64_t b = 0; b < window.cols; ++b) {
      const int64_t index = scale_row * window.cols + b;
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
      row_out[c] = numeric::BF16FromFloat(e4m3[row[c]] * row_scales[(first_col + c) / kFp8BlockSize - window.first_col]);
    }
  }
  return -1;
}

}  // namespace stquant
