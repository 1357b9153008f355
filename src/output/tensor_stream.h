// Moving one tensor from a Reader to a Writer in bounded row blocks: copy, quantize, dequantize.
// Memory per call is about kBlockBytes of input plus its output, whatever the tensor size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "stquant/quant_spec.h"
#include "stquant/quantize.h"
#include "stquant/safetensors.h"
#include "stquant/status.h"

namespace stquant::output {

inline constexpr uint64_t kBlockBytes = 32ull << 20;

// Writer indices of the tensors that receive a quantized tensor's outputs.
struct QuantizedTargets {
  size_t packed = 0;
  size_t scales = 0;
  std::optional<size_t> biases;  // affine
};

// Copies the tensor's bytes unchanged into writer tensor `target`.
Status CopyTensor(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor,
                  safetensors::Writer& writer, size_t target);

// float32(max |x|) of a float tensor (the nvfp4 global scale); InvalidInput naming the tensor
// when it holds NaN or Inf.
Result<float> TensorAbsMax(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor);

// Quantizes a BF16/F16/F32 tensor of rank >= 2. REQUIRES: ValidateQuantInput passed. Errors name
// the file and the tensor (and the element index for NaN/Inf).
Status QuantizeTensor(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor,
                      const QuantSpec& spec, float global_scale, safetensors::Writer& writer,
                      const QuantizedTargets& targets, int threads);

// The quantized tensors of one layer as read from a file.
struct QuantizedSources {
  const safetensors::TensorInfo* packed = nullptr;
  const safetensors::TensorInfo* scales = nullptr;
  const safetensors::TensorInfo* biases = nullptr;  // affine
};

// Dequantizes into writer tensor `target` of `out_dtype`, shape [..., cols].
Status DequantizeTensor(const safetensors::Reader& reader, const QuantizedSources& sources,
                        const QuantSpec& spec, float global_scale, int64_t cols, DType out_dtype,
                        safetensors::Writer& writer, size_t target);

}  // namespace stquant::output
