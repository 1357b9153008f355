// The values of a planned output tensor, row block by row block: read from its source
// tensor(s), FP8-decoded and cast into its dtype, experts stacked. Shared by the layouts.
#pragma once

#include "model/inventory.h"
#include "output/tensor_stream.h"
#include "stquant/convert.h"

namespace stquant::output {

// The returned source refers to `inventory` and `tensor`, which must outlive it. Its pieces are
// one source tensor each (one expert of a stacked tensor), or one expert of a 3-D block-FP8
// tensor. Under QuantProfile::kMlxCpu an E4M3 NaN code (0x7F/0xFF) in an FP8 source is an
// InvalidInput error naming the tensor and element.
RowSource PlannedRows(const model::Inventory& inventory, const PlannedTensor& tensor, QuantProfile profile);

}  // namespace stquant::output
