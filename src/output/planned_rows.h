// The values of a planned output tensor, row block by row block: each source's view gathered
// from the file (a transposed view column band by column band), FP8-decoded, the architecture's
// value ops applied, cast into the tensor's dtype, experts stacked. Shared by the layouts.
#pragma once

#include <cstdint>
#include <span>

#include "model/inventory.h"
#include "output/tensor_stream.h"
#include "stquant/convert.h"

namespace stquant::output {

// The returned source refers to `inventory` and `tensor`, which must outlive it. Its pieces are
// the tensor's sources (one expert of a stacked tensor each). Blocks are whole rows, parts of a
// row, or, when a source's view is transposed (its last axis not contiguous in the file), tiles
// of rows x a band of columns, whose source elements are read in runs along the file's rows.
// Under QuantProfile::kMlxCpu an E4M3 NaN code (0x7F/0xFF) in an FP8 source is an InvalidInput
// error naming the tensor and element.
RowSource PlannedRows(const model::Inventory& inventory, const PlannedTensor& tensor, QuantProfile profile);

// `n` values of `in` (dtype `working`: the source's, or bfloat16 after an FP8 decode) with `ops`
// applied in order, each as MLX does for an array of dtype `working` and a Python float c (c
// rounded to float32 and then to `working`, the operation in float32, the result rounded to
// `working`), then cast to `out_dtype` (through float32, round to nearest even) into `out`.
// Float dtypes only (BF16, F16, F32).
void ApplyValueOps(std::span<const ValueOp> ops, DType working, DType out_dtype, const uint8_t* in, uint8_t* out,
                   int64_t n);

}  // namespace stquant::output
