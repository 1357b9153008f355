// Decoding block-scaled FP8 weights (DeepSeek-V3 / Qwen3-FP8 style): an F8_E4M3 matrix with one
// F32 or BF16 scale ("weight_scale_inv", multiplied despite its name) per 128x128 block.
#pragma once

#include <cstdint>

#include "stquant/dtype.h"
#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant {

inline constexpr int64_t kFp8BlockSize = 128;

// Decodes a block of one [R, C] E4M3 matrix into bfloat16 bits, rows [first_row, first_row + rows)
// and columns [first_col, first_col + cols) of them:
//   out[i][j] = bf16(float32(e4m3(W[i][j]) * S[i / 128][j / 128]))
// exactly as ollama's importer does with MLX ops (ollama-create-spec §6.6): the product is
// rounded to float32 (exact for a BF16 scale), then to bf16 with round-to-nearest-even. E4M3
// 0x7F/0xFF (NaN in E4M3FN) decode as +-480 under kMlxCpu0322, as MLX 0.32.2 did; under kMlxCpu
// (MLX >= 0.32.3 reads them as NaN) they are refused: the return value is the index (from `codes`)
// of the first such code, else -1. `codes` holds the block (rows * cols bytes, row-major);
// `scales` the part of the [ceil(R/128), ceil(C/128)] scale matrix of `scale_dtype` (F32 or BF16)
// that covers it: the ScaleWindow(first_row, rows, first_col, cols) rows x columns, row-major.
int64_t DecodeBlockFp8Rows(QuantProfile profile, const uint8_t* codes, int64_t first_row, int64_t rows,
                           int64_t first_col, int64_t cols, const void* scales, DType scale_dtype, uint16_t* out);

// The scale rows [first_row, first_row + rows) and columns [first_col, first_col + cols) that
// cover a block of codes (rows * cols > 0).
struct Fp8ScaleWindow {
  int64_t first_row = 0, rows = 0, first_col = 0, cols = 0;
};
Fp8ScaleWindow ScaleWindow(int64_t first_row, int64_t rows, int64_t first_col, int64_t cols);

}  // namespace stquant
