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
  source.cols = t.shape.empty() ? 1 : t.shape.back();
  int64_t elements = 1;
  for (int64_t d : t.shape) elements *= d;
  source.rows = source.cols == 0 ? 0 : elements / source.cols;
  // One piece per source tensor (stacked experts), and per expert of a 3-D block-FP8 source
  // (each expert has its own scale matrix).
  const int64_t rows_per_source = std::max<int64_t>(1, source.rows / static_cast<int64_t>(t.sources.size()));
  const bool fp8_3d = t.transform == TensorTransform::kDecodeFp8 && t.sources.size() == 1 && t.shape.size() == 3;
  source.rows_per_piece = fp8_3d ? std::max<int64_t>(1, t.shape[1]) : rows_per_source;
  const int64_t rows_per_piece = source.rows_per_piece;
  const int64_t cols = source.cols;
  source.read = [&inv, &t, rows_per_source, rows_per_piece, cols, profile](int64_t first, int64_t count,
                                                                           uint8_t* out) -> Status {
    const PlannedSource& piece = t.sources[first / rows_per_source];
    const int64_t local = first % rows_per_source;
    const model::TensorRef* ref = inv.Find(piece.tensor);
    const safetensors::Reader& reader = *inv.shards()[ref->shard].reader;
    const TensorInfo& info = *ref->info;
    const uint64_t source_row_bytes = static_cast<uint64_t>(cols) * DTypeBits(info.dtype) / 8;
    if (t.transform == TensorTransform::kCopy) {
      return reader.Read(info, local * source_row_bytes, {out, count * source_row_bytes});
    }
    std::vector<uint8_t> raw(count * source_row_bytes);
    STQ_RETURN_IF_ERROR(reader.Read(info, local * source_row_bytes, raw));
    DType values_dtype = info.dtype;
    std::vector<uint8_t> decoded;
    const uint8_t* values = raw.data();
    if (t.transform == TensorTransform::kDecodeFp8) {
      const model::TensorRef* scale_ref = inv.Find(piece.fp8_scale);
      const TensorInfo& scale_info = *scale_ref->info;
      // The scale matrix of the expert (3-D) or of the whole weight (2-D): a few KiB.
      const int64_t expert = local / rows_per_piece;
      const uint64_t expert_scale_bytes =
          scale_info.nbytes() / (info.shape.size() == 3 ? static_cast<uint64_t>(info.shape[0]) : 1);
      std::vector<uint8_t> scales(expert_scale_bytes);
      STQ_RETURN_IF_ERROR(
          inv.shards()[scale_ref->shard].reader->Read(scale_info, expert * expert_scale_bytes, scales));
      decoded.resize(count * cols * 2);
      const int64_t nan_code =
          DecodeBlockFp8Rows(profile, raw.data(), local % rows_per_piece, count, cols, scales.data(), scale_info.dtype,
                             reinterpret_cast<uint16_t*>(decoded.data()));
      if (nan_code >= 0) {
        return Status::InvalidInput(fmt::format(
            "{}: tensor '{}': element {} is the E4M3 NaN code 0x{:02X} (use --profile mlx-cpu-0.32.2 to read it as "
            "+-480 as MLX 0.32.2 did)",
            reader.path(), info.name, local * cols + nan_code, raw[nan_code]));
      }
      values = decoded.data();
      values_dtype = DType::kBF16;
      if (t.dtype == DType::kBF16) {
        std::memcpy(out, decoded.data(), decoded.size());
        return Status::Ok();
      }
    }
    // MLX astype between float dtypes: through float32, rounding to nearest even.
    for (int64_t i = 0; i < count * cols; ++i) {
      quant::StoreElement(t.dtype, out, i, quant::LoadElement(values_dtype, values, i));
    }
    return Status::Ok();
  };
  return source;
}

}  // namespace stquant::output
