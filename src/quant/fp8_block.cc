#include "stquant/fp8_block.h"

#include <algorithm>
#include <array>
#include <vector>

#include "numeric/fp8.h"
#include "quant/element.h"

namespace stquant {

Fp8ScaleWindow ScaleWindow(Fp8Block block, int64_t first_row, int64_t rows, int64_t first_col, int64_t cols) {
  Fp8ScaleWindow w;
  w.first_row = first_row / block.rows;
  w.rows = (first_row + rows - 1) / block.rows - w.first_row + 1;
  w.first_col = first_col / block.cols;
  w.cols = (first_col + cols - 1) / block.cols - w.first_col + 1;
  return w;
}

namespace {

// One row of codes times its scales, stored as `OutDType` (a template argument, so that the store
// is not a switch per element), one scale block of columns at a time (no division per element).
template <DType OutDType>
int64_t DecodeRow(QuantProfile profile, const uint8_t* row, int64_t cols, int64_t first_col, int64_t block_cols,
                  const float* row_scales, void* row_out) {
  const std::array<float, 256>& e4m3 = numeric::E4M3Table();
  const bool refuse_nan = profile != QuantProfile::kMlxCpu0322;
  for (int64_t c = 0, b = 0; c < cols; ++b) {
    // Columns [c, end) share scale b of the window.
    const int64_t end = std::min(cols, (first_col / block_cols + b + 1) * block_cols - first_col);
    const float scale = row_scales[b];
    for (; c < end; ++c) {
      if (refuse_nan && (row[c] & 0x7F) == 0x7F) return c;
      quant::StoreElement(OutDType, row_out, c, e4m3[row[c]] * scale);
    }
  }
  return -1;
}

}  // namespace

int64_t DecodeBlockFp8Rows(QuantProfile profile, Fp8Block block, const uint8_t* codes, int64_t first_row,
                           int64_t rows, int64_t first_col, int64_t cols, const void* scales, DType scale_dtype,
                           DType out_dtype, void* out) {
  if (rows <= 0 || cols <= 0) return -1;
  const Fp8ScaleWindow window = ScaleWindow(block, first_row, rows, first_col, cols);
  const auto decode_row = out_dtype == DType::kBF16  ? &DecodeRow<DType::kBF16>
                          : out_dtype == DType::kF16 ? &DecodeRow<DType::kF16>
                                                     : &DecodeRow<DType::kF32>;
  const int out_bytes = quant::ElementBytes(out_dtype);
  std::vector<float> row_scales(window.cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t scale_row = (first_row + r) / block.rows - window.first_row;
    for (int64_t b = 0; b < window.cols; ++b) {
      row_scales[b] = quant::LoadElement(scale_dtype, scales, scale_row * window.cols + b);
    }
    const int64_t nan_at = decode_row(profile, codes + r * cols, cols, first_col, block.cols, row_scales.data(),
                                      static_cast<uint8_t*>(out) + r * cols * out_bytes);
    if (nan_at >= 0) return r * cols + nan_at;
  }
  return -1;
}

}  // namespace stquant
