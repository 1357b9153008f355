// Carrying out a prequant import plan (model/prequant.h): the byte transforms, and the mlx layout
// (an mlx_lm.load directory). The ollama layout reuses WritePrequantTensor with its own names and
// store.
#pragma once

#include <functional>
#include <vector>

#include "model/inventory.h"
#include "model/plan_internal.h"
#include "model/prequant.h"
#include "output/tensor_stream.h"
#include "stquant/convert.h"

namespace stquant::output {

// Writes the bytes of one planned output tensor into `target` (tensor.bytes bytes). Errors name
// the file and the tensor: a scale that cannot be folded or a global scale MLX cannot reproduce
// exactly, a bias not representable in the scale dtype, a non-finite or zero scalar.
// `progress` (optional) gets source bytes as they are consumed.
Status WritePrequantTensor(const model::Inventory& inventory, const model::PrequantTensor& tensor,
                           const WriteTarget& target, const std::function<void(uint64_t)>& progress = nullptr);

// The values of a quantized source layer dequantized with the source format's own arithmetic
// (ModelOpt / compressed-tensors NVFP4: f32(e2m1 * f32(e4m3 * ws2)) resp. f32(e2m1 * f32(e4m3 / G));
// compressed-tensors int: T((q - zero_point) * scale); MLX: MLX's dequantize; gpt-oss:
// ldexp(e2m1, e8m0 - 127)), rounded to `dtype` (BF16, F16, F32). `tensors` are the plan tensors of
// the layer (roles kWeight, kScales, kBiases, kGlobalScale); `shape` the logical shape [..., K].
RowSource PrequantLayerRows(const model::Inventory& inventory, const model::PrequantLayer& layer,
                            std::vector<const model::PrequantTensor*> tensors, std::vector<int64_t> shape, DType dtype,
                            model::SourceKind kind);

// The mlx layout for a prequant plan (context.prequant set): shards, index, config.json (the
// source's for an MLX source, else with the plan's quantization block), the copied files.
Result<ConvertSummary> ConvertPrequantMlx(const ConvertOptions& options, const model::PlanContext& context,
                                          const std::function<void(const ConvertProgress&)>& progress);

}  // namespace stquant::output
