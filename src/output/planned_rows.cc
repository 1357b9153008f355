#include "output/planned_rows.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "quant/element.h"
#include "stquant/fp8_block.h"

namespace stquant::output {

using model::Inventory;
using safetensors::TensorInfo;

RowSource PlannedRows(const Inventory& inv, const PlannedTensor& t, QuantProfile profile) {
  RowSource source;
  source.name = fmt::format("{}: tensor '{}'", inv.path(), t.name);
  source.dtype = t.dtype;
  SetRowShape(source, t.shape, static_cast<int64_t>(t.sources.size()));
  // One piece per source tensor (stacked experts), and per expert of a 3-D block-FP8 source
  // (each expert has its own scale matrix).
  const int64_t rows_per_source = std::max<int64_t>(1, source.rows / static_cast<int64_t>(t.sources.size()));
  const bool fp8_3d = t.transform == TensorTransform::kDecodeFp8 && t.sources.size() == 1 && t.shape.size() == 3;
  source.rows_per_piece = fp8_3d ? std::max<int64_t>(1, t.shape[1]) : rows_per_source;
  const int64_t rows_per_piece = source.rows_per_piece;
  const int64_t cols = source.cols;
  source.read = [&inv, &t, rows_per_source, rows_per_piece, cols, profile](const RowBlock& block,
                                                                           uint8_t* out) -> Status {
    const PlannedSource& piece = t.sources[block.first / rows_per_source];
    const int64_t local = block.first % rows_per_source;
    const model::TensorRef* ref = inv.Find(piece.tensor);
    const safetensors::Reader& reader = *inv.shards()[ref->shard].reader;
    const TensorInfo& info = *ref->info;
    const uint64_t offset = BytesOf(local * cols + block.col, info.dtype);
    const int64_t elements = block.elements();
    if (t.transform == TensorTransform::kCopy) return reader.Read(info, offset, {out, BytesOf(elements, info.dtype)});
    std::vector<uint8_t> raw(BytesOf(elements, info.dtype));
    STQ_RETURN_IF_ERROR(reader.Read(info, offset, raw));
    DType values_dtype = info.dtype;
    std::vector<uint8_t> decoded;
    const uint8_t* values = raw.data();
    if (t.transform == TensorTransform::kDecodeFp8) {
      const model::TensorRef* scale_ref = inv.Find(piece.fp8_scale);
      const TensorInfo& scale_info = *scale_ref->info;
      const safetensors::Reader& scale_reader = *inv.shards()[scale_ref->shard].reader;
      // The scales covering the block, row by row of the scale matrix of the expert (3-D) or of the
      // whole weight (2-D).
      const Fp8Block fp8_block = piece.fp8_block;
      const int64_t expert = local / rows_per_piece;
      const int64_t first_row = local % rows_per_piece;
      const int64_t scale_cols = (cols + fp8_block.cols - 1) / fp8_block.cols;
      const int64_t scale_rows = (rows_per_piece + fp8_block.rows - 1) / fp8_block.rows;
      const int scale_bytes = DTypeBits(scale_info.dtype) / 8;
      const Fp8ScaleWindow window = ScaleWindow(fp8_block, first_row, block.count, block.col, block.cols);
      std::vector<uint8_t> scales(window.rows * window.cols * scale_bytes);
      for (int64_t r = 0; r < window.rows; ++r) {
        const int64_t at = (expert * scale_rows + window.first_row + r) * scale_cols + window.first_col;
        STQ_RETURN_IF_ERROR(scale_reader.Read(
            scale_info, at * scale_bytes, {scales.data() + r * window.cols * scale_bytes, static_cast<size_t>(window.cols * scale_bytes)}));
      }
      values_dtype = piece.fp8_dtype;
      // Straight into the output when it has the decode dtype.
      uint8_t* decoded_out = out;
      if (t.dtype != values_dtype) {
        decoded.resize(BytesOf(elements, values_dtype));
        decoded_out = decoded.data();
      }
      const int64_t nan_code = DecodeBlockFp8Rows(profile, fp8_block, raw.data(), first_row, block.count, block.col,
                                                  block.cols, scales.data(), scale_info.dtype, values_dtype, decoded_out);
      if (nan_code >= 0) {
        return Status::InvalidInput(fmt::format(
            "{}: tensor '{}': element {} is the E4M3 NaN code 0x{:02X} (use --profile mlx-cpu-0.32.2 to read it as "
            "+-480 as MLX 0.32.2 did)",
            reader.path(), info.name, local * cols + block.col + nan_code, raw[nan_code]));
      }
      if (t.dtype == values_dtype) return Status::Ok();
      values = decoded.data();
    }
    // MLX astype between float dtypes: through float32, rounding to nearest even.
    for (int64_t i = 0; i < elements; ++i) {
      quant::StoreElement(t.dtype, out, i, quant::LoadElement(values_dtype, values, i));
    }
    return Status::Ok();
  };
  return source;
}

}  // namespace stquant::output
