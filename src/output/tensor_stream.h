// Moving one tensor into a Writer in bounded row blocks: copy, quantize, dequantize. Memory is
// about kBlockBytes of input plus its output per call (copy and quantize: a quarter MiB per thread),
// whatever the tensor size. RowSource::read must be safe to call from several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>

#include "output/quant_error.h"
#include "stquant/quant_spec.h"
#include "stquant/quantize.h"
#include "stquant/safetensors.h"
#include "stquant/status.h"

namespace stquant::output {

inline constexpr uint64_t kBlockBytes = 32ull << 20;

// The bytes of `elements` elements of `dtype` (sub-byte dtypes such as F4 included; blocks start
// on byte boundaries).
inline uint64_t BytesOf(int64_t elements, DType dtype) {
  return static_cast<uint64_t>(elements) * DTypeBits(dtype) / 8;
}

// A block of a tensor seen as rows x cols: rows [first, first + count), columns [col, col + cols)
// of them. It holds whole rows (col 0, cols all of them), or, when one row is larger than a block,
// a part of one row (count 1), or, for a source with tile_cols (below), a tile. Memory is bounded
// by the block size, never by the size of a row.
struct RowBlock {
  int64_t first = 0;
  int64_t count = 0;
  int64_t col = 0;
  int64_t cols = 0;
  int64_t elements() const { return count * cols; }
};

// A tensor seen as rows x cols elements of `dtype` (rows = product of the leading dims; a 0-d or
// 1-d tensor is one row), produced block by block: `read(block, out)` fills `out` with the
// block's elements, row-major. Blocks never cross a multiple of `rows_per_piece` (one expert of a
// stacked tensor comes from one source tensor), and a part of a row starts at a multiple of
// `col_align` columns (a source that dequantizes needs whole groups). With `tile_cols` > 0 (a
// transposed source, whose columns are runs of the file), blocks are tiles of several rows and at
// most about `tile_cols` columns (a multiple of the alignment), so that each column of a tile is
// one long run; the consumers below write a tile row by row.
struct RowSource {
  std::string name;  // for messages: "<file>: tensor '<name>'"
  DType dtype = DType::kBF16;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t rows_per_piece = 0;
  int64_t col_align = 1;
  int64_t tile_cols = 0;
  std::function<Status(const RowBlock& block, uint8_t* out)> read;
};

// Sets source.rows and source.cols for a tensor of `shape` made of `pieces` equal source tensors
// (stacked experts), from source.dtype: the product of the leading dims x the last one, or, for a
// sub-byte dtype (F4, F6; only ever copied), one row per source tensor, so that every row starts
// on a byte boundary.
void SetRowShape(RowSource& source, std::span<const int64_t> shape, int64_t pieces);

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
  QuantErrorMeter* error = nullptr;   // --report: measures what was written
};

// One output of a tensor's rows: unchanged into `copy` (spec nullopt), or quantized with `spec`
// (and `global_scale`, nvfp4) into `quantized`.
struct RowDestination {
  std::optional<QuantSpec> spec;
  float global_scale = 0.0f;
  WriteTarget copy;
  QuantizedTargets quantized;
};

// Reads each block of the rows once and writes it to every destination (several outputs of one
// conversion), on up to `threads` threads (0 = all cores): each thread reads, quantizes and writes
// its own blocks. Quantized destinations as QuantizeRowSource; `progress` as for CopyRows.
Status WriteRows(const RowSource& source, std::span<const RowDestination> destinations, int threads,
                 const std::function<void(uint64_t)>& progress = nullptr);

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

// Dequantizes into `target` of `out_dtype`, shape [..., cols], in blocks of a quarter MiB of output.
Status DequantizeTensor(const safetensors::Reader& reader, const QuantizedSources& sources,
                        const QuantSpec& spec, float global_scale, int64_t cols, DType out_dtype,
                        const WriteTarget& target);

}  // namespace stquant::output
