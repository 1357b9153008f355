// Quantize / dequantize the tensors of one .safetensors file (the `stquant quantize` and
// `stquant dequantize` commands). Streaming: tensors are processed in row blocks, so memory stays
// bounded by the block size whatever the file size; the output appears only when complete.
#pragma once

#include <optional>
#include <string>

#include "stquant/dtype.h"
#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant {

// How quantized tensors are named in the output file.
//   kMlx:    "x.weight" -> "x.weight" (U32), "x.scales", "x.biases" (affine), "x.global_scale";
//            a name without ".weight" keeps its name: "t" -> "t", "t.scales", "t.biases".
//   kOllama: "t" -> "t" (U32), "t.scale", "t.bias" (affine), "t.global_scale".
// Both write __metadata__ "quant_type" and "group_size" when every quantized tensor shares one
// type, else "<t>.quant_type" / "<t>.group_size" per tensor (ollama-create-spec §6.5); kMlx also
// writes "format": "mlx".
enum class TensorNaming { kMlx, kOllama };

struct QuantizeFileOptions {
  QuantSpec spec;
  // ECMAScript regex; a tensor is quantized when its whole name matches, it is a float tensor
  // (BF16, F16, F32) and it has rank >= 2. Others are copied unchanged. Empty: every tensor.
  std::string tensor_regex;
  TensorNaming naming = TensorNaming::kMlx;
  int threads = 0;  // 0: all cores
};

// Errors: InvalidArgument for bad options or a selected tensor MLX cannot quantize (the message
// names the tensor), InvalidInput for a malformed input or a NaN/Inf weight, IoError from the OS.
Status QuantizeFile(const std::string& input_path, const std::string& output_path,
                    const QuantizeFileOptions& options);

struct DequantizeFileOptions {
  // Output dtype; default: MLX's (the scales' dtype for affine, bfloat16 for fp modes, float32
  // for nvfp4 with a global scale).
  std::optional<DType> dtype;
  // Override the inferred parameters (affine shapes only fix bits * group_size).
  std::optional<int> bits;
  std::optional<int> group_size;
  int threads = 0;
};

// Reads either naming. Mode, bits and group size come from __metadata__ (uniform or per tensor)
// when present, else from the shapes: U8 scales are fp modes (packed words per scale: 4 mxfp4,
// 8 mxfp8, 2 nvfp4), scales of a float dtype with biases are affine, where words per scale equal
// bits * group_size / 32 and the group size 64 is preferred, then 32, then 128.
Status DequantizeFile(const std::string& input_path, const std::string& output_path,
                      const DequantizeFileOptions& options);

}  // namespace stquant
