// F8_E4M3 weights read as float values, E4M3 x scale (the planner's kDecodeFp8 transform): which
// scale layouts a checkpoint may carry and what one scale covers.
//   block FP8 (config quant_method "fp8": DeepSeek-V3, Qwen3-FP8): one F32 or BF16 scale per
//     128x128 block, "<weight>_scale_inv" (or "_scale") [ceil(R/128), ceil(C/128)]; 3-D
//     pre-stacked experts [E, ceil(R/128), ceil(C/128)].
//   compressed-tensors float-quantized (llm-compressor FP8_DYNAMIC, W8A8-FP8, FP8 block):
//     "<weight>_scale" F32, BF16 or F16, as the config group's weights.strategy says: "tensor"
//     one scale ([], [1] or [1, 1]), "channel" one per output row ([R, 1]), "group" one per
//     group_size columns of a row ([R, C / group_size]), "block" one per block_structure [bh, bw].
#pragma once

#include <string_view>

#include "model/inventory.h"
#include "stquant/fp8_block.h"
#include "stquant/status.h"

namespace stquant::model {

// A kCompressedTensorsFp8 source's config: every group's weights are 8-bit floats (E4M3),
// symmetric, with one of the strategies above and no activation ordering; an Unsupported error
// naming the directory and the group otherwise.
Status CheckFloatQuantizedConfig(const Inventory& inventory);

// What one element of `scale` covers in `weight` (an F8_E4M3 tensor of rank 2, or 3 for experts
// stacked along the first axis, each with its own scales), checked against the layouts of the
// source `kind` (kBlockFp8 or kCompressedTensorsFp8). InvalidInput naming the weight, the scale
// and the shapes that would fit when the scale's shape or dtype fits none; Unsupported for a
// compressed-tensors block weight stored padded ("<weight>_shape_original").
Result<Fp8Block> Fp8ScaleBlock(const Inventory& inventory, SourceKind kind, const safetensors::TensorInfo& weight,
                               const safetensors::TensorInfo& scale);

// Activation and KV-cache calibration scales of a quantized checkpoint (input_scale,
// input_global_scale, k_scale, v_scale, output_scale): meaningless to weight-only outputs.
bool IsCalibrationScale(std::string_view name);

}  // namespace stquant::model
