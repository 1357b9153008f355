#include "output/planned_rows.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "model/tensor_view.h"
#include "quant/element.h"
#include "stquant/fp8_block.h"

namespace stquant::output {

namespace {

using model::Inventory;
using safetensors::TensorInfo;

// Columns of a tile when a view is transposed: each column of the tile is one run of up to
// (block elements / kTileCols) consecutive file elements; a multiple of every group size.
constexpr int64_t kTileCols = 1024;

// One source tensor of a planned tensor, read as values of the working dtype (its own, or
// bfloat16 decoded from block FP8).
class SourceValues {
 public:
  SourceValues(const Inventory& inv, const PlannedSource& piece, QuantProfile profile) : profile_(profile) {
    const model::TensorRef* ref = inv.Find(piece.tensor);
    reader_ = inv.shards()[ref->shard].reader.get();
    info_ = ref->info;
    if (!piece.fp8_scale.empty()) {
      const model::TensorRef* scale = inv.Find(piece.fp8_scale);
      scale_reader_ = inv.shards()[scale->shard].reader.get();
      scale_info_ = scale->info;
    }
  }

  DType working() const { return scale_info_ ? DType::kBF16 : info_->dtype; }

  // Elements [first, first + count) of the tensor in row-major order, as working values.
  Status Read(int64_t first, int64_t count, uint8_t* out) const {
    if (!scale_info_) return reader_->Read(*info_, BytesOf(first, info_->dtype), {out, BytesOf(count, info_->dtype)});
    // Block FP8: the range is decoded row by row of the file ([..., R, C]; 3-D: one scale matrix
    // per expert), whole rows of one expert at a time.
    const int64_t cols = info_->shape.back();
    const int64_t rows = info_->shape[info_->shape.size() - 2];
    auto* values = reinterpret_cast<uint16_t*>(out);
    while (count > 0) {
      const int64_t row = first / cols, col = first % cols;
      const int64_t expert = row / rows, expert_row = row % rows;
      int64_t n_rows = 1, n_cols = std::min(count, cols - col);
      if (col == 0 && count >= cols) {
        n_rows = std::min(count / cols, rows - expert_row);
        n_cols = cols;
      }
      STQ_RETURN_IF_ERROR(DecodeRows(first, expert, expert_row, n_rows, col, n_cols, values));
      first += n_rows * n_cols;
      count -= n_rows * n_cols;
      values += n_rows * n_cols;
    }
    return Status::Ok();
  }

 private:
  Status DecodeRows(int64_t first, int64_t expert, int64_t row, int64_t n_rows, int64_t col, int64_t n_cols,
                    uint16_t* out) const {
    const int64_t cols = info_->shape.back();
    const int64_t rows = info_->shape[info_->shape.size() - 2];
    const int64_t elements = n_rows * n_cols;
    std::vector<uint8_t> codes(elements);
    STQ_RETURN_IF_ERROR(reader_->Read(*info_, first, codes));
    const int64_t scale_cols = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
    const int64_t scale_rows = (rows + kFp8BlockSize - 1) / kFp8BlockSize;
    const int scale_bytes = DTypeBits(scale_info_->dtype) / 8;
    const Fp8ScaleWindow window = ScaleWindow(row, n_rows, col, n_cols);
    std::vector<uint8_t> scales(window.rows * window.cols * scale_bytes);
    for (int64_t r = 0; r < window.rows; ++r) {
      const int64_t at = (expert * scale_rows + window.first_row + r) * scale_cols + window.first_col;
      STQ_RETURN_IF_ERROR(scale_reader_->Read(
          *scale_info_, at * scale_bytes,
          {scales.data() + r * window.cols * scale_bytes, static_cast<size_t>(window.cols * scale_bytes)}));
    }
    const int64_t nan_code =
        DecodeBlockFp8Rows(profile_, codes.data(), row, n_rows, col, n_cols, scales.data(), scale_info_->dtype, out);
    if (nan_code >= 0) {
      const int64_t element = (expert * rows + row + nan_code / n_cols) * cols + col + nan_code % n_cols;
      return Status::InvalidInput(fmt::format(
          "{}: tensor '{}': element {} is the E4M3 NaN code 0x{:02X} (use --profile mlx-cpu-0.32.2 to read it as "
          "+-480 as MLX 0.32.2 did)",
          reader_->path(), info_->name, element, codes[nan_code]));
    }
    return Status::Ok();
  }

  QuantProfile profile_;
  const safetensors::Reader* reader_ = nullptr;
  const TensorInfo* info_ = nullptr;
  const safetensors::Reader* scale_reader_ = nullptr;
  const TensorInfo* scale_info_ = nullptr;
};

// The file element where row `row` (over the view's leading axes) of a view starts.
int64_t RowBase(const TensorView& view, int64_t row) {
  int64_t base = view.offset;
  if (view.shape.empty()) return base;
  for (size_t i = view.shape.size() - 1; i-- > 0;) {
    base += (row % view.shape[i]) * view.strides[i];
    row /= view.shape[i];
  }
  return base;
}

// `in` holds `cols` columns of `n` elements of T one after the other; writes them transposed into
// the n rows of `out` (each `row_elements` long), in squares that stay in the L1 cache: 16 rows,
// as rows a power of two bytes apart share few cache sets (32 rows thrashed them: 2x slower).
template <typename T>
void TransposeInto(const uint8_t* in, int64_t n, int64_t cols, int64_t row_elements, uint8_t* out) {
  constexpr int64_t kSquare = 16;
  const T* src = reinterpret_cast<const T*>(in);
  T* dst = reinterpret_cast<T*>(out);
  for (int64_t c0 = 0; c0 < cols; c0 += kSquare) {
    for (int64_t i0 = 0; i0 < n; i0 += kSquare) {
      for (int64_t c = c0; c < std::min(cols, c0 + kSquare); ++c) {
        for (int64_t i = i0; i < std::min(n, i0 + kSquare); ++i) dst[i * row_elements + c] = src[c * n + i];
      }
    }
  }
}

// Gathers the block (rows and columns of one piece's view, rows counted within the piece) as
// working values, row-major, into `out`.
Status GatherBlock(const SourceValues& values, const TensorView& view, int64_t cols, const RowBlock& block,
                   int64_t local, uint8_t* out) {
  const int bytes = DTypeBits(values.working()) / 8;
  const int64_t col_stride = view.strides.empty() ? 1 : view.strides.back();
  if (col_stride == 1 || cols == 1) {
    // Each row is a run of the file; consecutive whole rows that follow each other are one run.
    for (int64_t r = 0; r < block.count;) {
      const int64_t base = RowBase(view, local + r) + block.col * col_stride;
      int64_t n = 1;
      while (block.cols == cols && r + n < block.count && RowBase(view, local + r + n) == base + n * cols) ++n;
      STQ_RETURN_IF_ERROR(values.Read(base, n * block.cols, out + r * block.cols * bytes));
      r += n;
    }
    return Status::Ok();
  }
  // A transposed view: consecutive rows whose starts follow each other in the file are read
  // column by column, each column one run of the file, and scattered into the block.
  thread_local std::vector<uint8_t> columns;
  for (int64_t r = 0; r < block.count;) {
    const int64_t base = RowBase(view, local + r);
    int64_t n = 1;
    while (r + n < block.count && RowBase(view, local + r + n) == base + n) ++n;
    columns.resize(n * block.cols * bytes);
    for (int64_t c = 0; c < block.cols; ++c) {
      STQ_RETURN_IF_ERROR(values.Read(base + (block.col + c) * col_stride, n, columns.data() + c * n * bytes));
    }
    uint8_t* rows = out + r * block.cols * bytes;
    switch (bytes) {
      case 2: TransposeInto<uint16_t>(columns.data(), n, block.cols, block.cols, rows); break;
      case 4: TransposeInto<uint32_t>(columns.data(), n, block.cols, block.cols, rows); break;
      default: TransposeInto<uint8_t>(columns.data(), n, block.cols, block.cols, rows); break;
    }
    r += n;
  }
  return Status::Ok();
}

}  // namespace

void ApplyValueOps(std::span<const ValueOp> ops, DType working, DType out_dtype, const uint8_t* in, uint8_t* out,
                   int64_t n) {
  std::vector<float> constants;
  for (const ValueOp& op : ops) constants.push_back(quant::RoundTo(working, static_cast<float>(op.value)));
  for (int64_t i = 0; i < n; ++i) {
    float v = quant::LoadElement(working, in, i);
    for (size_t k = 0; k < ops.size(); ++k) {
      v = quant::RoundTo(working, ops[k].kind == ValueOp::Kind::kAdd ? v + constants[k] : v * constants[k]);
    }
    quant::StoreElement(out_dtype, out, i, v);
  }
}

RowSource PlannedRows(const Inventory& inv, const PlannedTensor& t, QuantProfile profile) {
  RowSource source;
  source.name = fmt::format("{}: tensor '{}'", inv.path(), t.name);
  source.dtype = t.dtype;
  const int64_t pieces = static_cast<int64_t>(t.sources.size());
  SetRowShape(source, t.shape, pieces);
  const int64_t rows_per_piece = std::max<int64_t>(1, source.rows / pieces);
  source.rows_per_piece = rows_per_piece;
  for (const PlannedSource& s : t.sources) {
    if (!s.view.strides.empty() && s.view.strides.back() != 1 && source.cols > 1) source.tile_cols = kTileCols;
  }
  const int64_t cols = source.cols;
  source.read = [&inv, &t, rows_per_piece, cols, profile](const RowBlock& block, uint8_t* out) -> Status {
    const PlannedSource& piece = t.sources[block.first / rows_per_piece];
    const int64_t local = block.first % rows_per_piece;
    const SourceValues values(inv, piece, profile);
    const DType working = values.working();
    // No decode, value op or cast: the bytes as they are in the file.
    const bool plain = t.value_ops.empty() && working == t.dtype && t.transform != TensorTransform::kDecodeFp8;
    if (plain && model::IsContiguous(piece.view)) {
      // The block is one range of the file (also for sub-byte dtypes, whose rows are whole pieces).
      const TensorInfo& info = *inv.FindInfo(piece.tensor);
      return inv.shards()[inv.Find(piece.tensor)->shard].reader->Read(
          info, BytesOf(piece.view.offset + local * cols + block.col, info.dtype), {out, BytesOf(block.elements(), info.dtype)});
    }
    thread_local std::vector<uint8_t> gathered;
    uint8_t* staging = out;
    if (!plain) {
      gathered.resize(BytesOf(block.elements(), working));
      staging = gathered.data();
    }
    STQ_RETURN_IF_ERROR(GatherBlock(values, piece.view, cols, block, local, staging));
    if (!plain) ApplyValueOps(t.value_ops, working, t.dtype, staging, out, block.elements());
    return Status::Ok();
  };
  return source;
}

}  // namespace stquant::output
