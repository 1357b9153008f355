#include "output/tensor_stream.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace stquant::output {

namespace {

int ElementBytes(DType dtype) { return DTypeBits(dtype) / 8; }

int64_t RowsPerBlock(int64_t row_bytes) {
  return std::max<int64_t>(1, static_cast<int64_t>(kBlockBytes) / std::max<int64_t>(row_bytes, 1));
}

std::string TensorContext(const safetensors::Reader& reader, const std::string& name) {
  return fmt::format("{}: tensor '{}'", reader.path(), name);
}

}  // namespace

Status CopyTensor(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor,
                  safetensors::Writer& writer, size_t target) {
  std::vector<uint8_t> buffer(std::min<uint64_t>(tensor.nbytes(), kBlockBytes));
  for (uint64_t offset = 0; offset < tensor.nbytes(); offset += buffer.size()) {
    std::span<uint8_t> piece(buffer.data(), std::min<uint64_t>(buffer.size(), tensor.nbytes() - offset));
    STQ_RETURN_IF_ERROR(reader.Read(tensor, offset, piece));
    STQ_RETURN_IF_ERROR(writer.WriteTensorData(target, offset, piece));
  }
  return Status::Ok();
}

Result<float> TensorAbsMax(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor) {
  const int bytes = ElementBytes(tensor.dtype);
  std::vector<uint8_t> buffer(std::min<uint64_t>(tensor.nbytes(), kBlockBytes));
  float amax = 0.0f;
  for (uint64_t offset = 0; offset < tensor.nbytes(); offset += buffer.size()) {
    std::span<uint8_t> piece(buffer.data(), std::min<uint64_t>(buffer.size(), tensor.nbytes() - offset));
    STQ_RETURN_IF_ERROR(reader.Read(tensor, offset, piece));
    const float piece_max = AbsMax(tensor.dtype, piece.data(), static_cast<int64_t>(piece.size() / bytes));
    if (!std::isfinite(piece_max)) {
      return Status::InvalidInput(fmt::format("{}: holds NaN or Inf values, which cannot be quantized",
                                              TensorContext(reader, tensor.name)));
    }
    amax = std::max(amax, piece_max);
  }
  return amax;
}

Status QuantizeTensor(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor,
                      const QuantSpec& spec, float global_scale, safetensors::Writer& writer,
                      const QuantizedTargets& targets, int threads) {
  const int64_t cols = tensor.shape.back();
  const int64_t rows = cols == 0 ? 0 : tensor.num_elements() / cols;
  const int element_bytes = ElementBytes(tensor.dtype);
  const int64_t row_bytes = cols * element_bytes;
  const int64_t words_per_row = PackedWordsPerRow(spec, cols);
  const int64_t groups_per_row = GroupsPerRow(spec, cols);
  const int scale_bytes = ElementBytes(ScaleDType(spec, tensor.dtype));
  const int64_t block_rows = std::min(rows, RowsPerBlock(row_bytes));

  std::vector<uint8_t> input(block_rows * row_bytes);
  std::vector<uint32_t> packed(block_rows * words_per_row);
  std::vector<uint8_t> scales(block_rows * groups_per_row * scale_bytes);
  std::vector<uint8_t> biases(targets.biases ? scales.size() : 0);
  for (int64_t first = 0; first < rows; first += block_rows) {
    const int64_t count = std::min(block_rows, rows - first);
    std::span<uint8_t> in(input.data(), count * row_bytes);
    STQ_RETURN_IF_ERROR(reader.Read(tensor, first * row_bytes, in));
    Status status = QuantizeRowsParallel(spec, tensor.dtype, in.data(), count, cols, global_scale,
                                         {packed.data(), scales.data(), biases.data()}, threads);
    if (!status.ok()) {
      // Element indices from the kernel are relative to this block.
      if (status.code() == StatusCode::kInvalidInput) {
        return Status::InvalidInput(fmt::format("{}: row block from row {}: {}",
                                                TensorContext(reader, tensor.name), first, status.message()));
      }
      return status.Annotate(TensorContext(reader, tensor.name));
    }
    const auto packed_bytes = std::as_bytes(std::span(packed.data(), count * words_per_row));
    STQ_RETURN_IF_ERROR(writer.WriteTensorData(
        targets.packed, first * words_per_row * 4,
        {reinterpret_cast<const uint8_t*>(packed_bytes.data()), packed_bytes.size()}));
    const uint64_t scale_block = count * groups_per_row * scale_bytes;
    const uint64_t scale_offset = first * groups_per_row * scale_bytes;
    STQ_RETURN_IF_ERROR(writer.WriteTensorData(targets.scales, scale_offset, {scales.data(), scale_block}));
    if (targets.biases) {
      STQ_RETURN_IF_ERROR(writer.WriteTensorData(*targets.biases, scale_offset, {biases.data(), scale_block}));
    }
  }
  return Status::Ok();
}

Status DequantizeTensor(const safetensors::Reader& reader, const QuantizedSources& sources,
                        const QuantSpec& spec, float global_scale, int64_t cols, DType out_dtype,
                        safetensors::Writer& writer, size_t target) {
  const int64_t words_per_row = PackedWordsPerRow(spec, cols);
  const int64_t groups_per_row = GroupsPerRow(spec, cols);
  const int64_t rows = words_per_row == 0 ? 0 : static_cast<int64_t>(sources.packed->nbytes() / 4) / words_per_row;
  const DType scale_dtype = sources.scales->dtype;
  const int scale_bytes = ElementBytes(scale_dtype);
  const int out_bytes = ElementBytes(out_dtype);
  const int64_t block_rows = std::min(rows, RowsPerBlock(cols * out_bytes));

  std::vector<uint32_t> packed(block_rows * words_per_row);
  std::vector<uint8_t> scales(block_rows * groups_per_row * scale_bytes);
  std::vector<uint8_t> biases(sources.biases ? scales.size() : 0);
  std::vector<uint8_t> output(block_rows * cols * out_bytes);
  for (int64_t first = 0; first < rows; first += block_rows) {
    const int64_t count = std::min(block_rows, rows - first);
    STQ_RETURN_IF_ERROR(reader.Read(*sources.packed, first * words_per_row * 4,
                                    {reinterpret_cast<uint8_t*>(packed.data()), static_cast<size_t>(count * words_per_row * 4)}));
    const uint64_t scale_block = count * groups_per_row * scale_bytes;
    const uint64_t scale_offset = first * groups_per_row * scale_bytes;
    STQ_RETURN_IF_ERROR(reader.Read(*sources.scales, scale_offset, {scales.data(), scale_block}));
    if (sources.biases) STQ_RETURN_IF_ERROR(reader.Read(*sources.biases, scale_offset, {biases.data(), scale_block}));
    STQ_RETURN_IF_ERROR(DequantizeRows(spec, scale_dtype, {packed.data(), scales.data(), biases.data()}, count, cols,
                                       global_scale, out_dtype, output.data())
                            .Annotate(TensorContext(reader, sources.packed->name)));
    STQ_RETURN_IF_ERROR(writer.WriteTensorData(target, first * cols * out_bytes,
                                               {output.data(), static_cast<size_t>(count * cols * out_bytes)}));
  }
  return Status::Ok();
}

}  // namespace stquant::output
