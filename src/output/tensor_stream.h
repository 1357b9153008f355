// Moving one tensor into a Writer in bounded row blocks: copy, quantize, dequantize. Memory is
// about kBlockBytes of input plus its output per call (copy and quantize: a quarter MiB per thread),
// whatever the tensor size. RowSource::read must be safe to call from several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "stquant/quant_spec.h"
#include "stquant/quantize.h"
#include "stquant/safetensors.h"
#include "stquant/status.h"

namespace stquant::output {

inline constexpr uint64_t kBlockBytes = 32ull << 20;

// A tensor seen as rows x cols elements of `dtype` (rows = product of the leading dims; a 0-d or
// 1-d tensor is one row), produced piece by piece: `read(first, count, out)` fills `out` with rows
// [first, first + count). Blocks never cross a multiple of `rows_per_piece` (one expert of a
// stacked tensor comes from one source tensor).
struct RowSource {
  std::string name;  // for messages: "<file>: tensor '<name>'"
  DType dtype = DType::kBF16;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t rows_per_piece = 0;
  std::function<Status(int64_t first, int64_t count, uint8_t* out)> read;
};

// Rows of one tensor of a Reader, unchanged.
RowSource ReaderRows(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor);

// A tensor of an output file: its Writer and its index there.
struct WriteTarget {
  safetensors::Writer* writer = nullptr;
  size_t index = 0;
  Status Write(uint64_t offset, std::span<const uint8_t> bytes) const {
    return writer->WriteTensorData(index, offset, bytes);
  }
};

// Where a quantized tensor's outputs go (possibly different files, as shards split anywhere).
struct QuantizedTargets {
  WriteTarget packed;
  WriteTarget scales;
  std::optional<WriteTarget> biases;  // affine
};

// Writes the rows unchanged into `target`, on up to `threads` threads (0 = all cores).
// `progress` (optional) gets the input bytes of each block, one call at a time.
Status CopyRows(const RowSource& source, const WriteTarget& target, int threads,
                const std::function<void(uint64_t)>& progress = nullptr);

// float32(max |x|) over all rows (the nvfp4 global scale); InvalidInput when NaN/Inf is present.
Result<float> RowsAbsMax(const RowSource& source);

// Quantizes the rows (BF16/F16/F32, cols divisible by the group size) on up to `threads` threads:
// each thread reads, quantizes and writes its own blocks. NaN/Inf inputs are refused naming the
// tensor and the element index. `progress` as for CopyRows.
Status QuantizeRowSource(const RowSource& source, const QuantSpec& spec, float global_scale,
                         const QuantizedTargets& targets, int threads,
                         const std::function<void(uint64_t)>& progress = nullptr);

// The quantized tensors of one layer as read from a file.
struct QuantizedSources {
  const safetensors::TensorInfo* packed = nullptr;
  const safetensors::TensorInfo* scales = nullptr;
  const safetensors::TensorInfo* biases = nullptr;  // affine
};

// Dequantizes into `target` of `out_dtype`, shape [..., cols].
Status DequantizeTensor(const safetensors::Reader& reader, const QuantizedSources& sources,
                        const QuantSpec& spec, float global_scale, int64_t cols, DType out_dtype,
                        const WriteTarget& target);

}  // namespace stquant::output
