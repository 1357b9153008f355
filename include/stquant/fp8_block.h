// Decoding scaled FP8 weights: an F8_E4M3 matrix with one F32, BF16 or F16 scale per block of
// elements, multiplied in. The block is 128x128 for block FP8 (DeepSeek-V3 / Qwen3-FP8,
// "weight_scale_inv", multiplied despite its name) and, for compressed-tensors float-quantized
// (llm-compressor's FP8_DYNAMIC / W8A8-FP8), one output row (strategy "channel", scale [R, 1]),
// the whole matrix ("tensor", one scale), 1 x group size ("group") or the block structure
// ("block").
#pragma once

#include <cstdint>

#include "stquant/dtype.h"
#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant {

inline constexpr int64_t kFp8BlockSize = 128;

// The rows x cols of the weight matrix one scale covers (both > 0). The scale matrix of an
// [R, C] weight is [ceil(R / rows), ceil(C / cols)].
struct Fp8Block {
  int64_t rows = kFp8BlockSize, cols = kFp8BlockSize;
  bool operator==(const Fp8Block&) const = default;
};

// Decodes a block of one [R, C] E4M3 matrix, rows [first_row, first_row + rows) and columns
// [first_col, first_col + cols) of it, into `out_dtype` (BF16, F16 or F32):
//   out[i][j] = out_dtype(float32(e4m3(W[i][j]) * S[i / block.rows][j / block.cols]))
// exactly as ollama's importer does with MLX ops (ollama-create-spec §6.6) for BF16: the product
// is rounded to float32 (exact for a BF16 or F16 scale), then to the output dtype with
// round-to-nearest-even. E4M3 0x7F/0xFF (NaN in E4M3FN) decode as +-480 under kMlxCpu0322, as MLX
// 0.32.2 did; under kMlxCpu (MLX >= 0.32.3 reads them as NaN) they are refused: the return value
// is the index (from `codes`) of the first such code, else -1. `codes` holds the block (rows *
// cols bytes, row-major); `scales` the part of the scale matrix of `scale_dtype` (F32, BF16, F16)
// that covers it: the ScaleWindow(block, first_row, rows, first_col, cols) rows x columns,
// row-major.
int64_t DecodeBlockFp8Rows(QuantProfile profile, Fp8Block block, const uint8_t* codes, int64_t first_row,
                           int64_t rows, int64_t first_col, int64_t cols, const void* scales, DType scale_dtype,
                           DType out_dtype, void* out);

// The scale rows [first_row, first_row + rows) and columns [first_col, first_col + cols) that
// cover a block of codes (rows * cols > 0).
struct Fp8ScaleWindow {
  int64_t first_row = 0, rows = 0, first_col = 0, cols = 0;
};
Fp8ScaleWindow ScaleWindow(Fp8Block block, int64_t first_row, int64_t rows, int64_t first_col, int64_t cols);

}  // namespace stquant
