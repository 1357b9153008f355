#include "output/tensor_stream.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <numeric>
#include <vector>

#include <fmt/format.h>

#include "quant/kernels.h"
#include "util/thread_pool.h"

namespace stquant::output {

namespace {

int ElementBytes(DType dtype) { return DTypeBits(dtype) / 8; }

std::string TensorContext(const safetensors::Reader& reader, const std::string& name) {
  return fmt::format("{}: tensor '{}'", reader.path(), name);
}

}  // namespace

void SetRowShape(RowSource& source, std::span<const int64_t> shape, int64_t pieces) {
  int64_t elements = 1;
  for (int64_t d : shape) elements *= d;
  source.cols = shape.empty() ? 1 : shape.back();
  if (DTypeBits(source.dtype) % 8 != 0 && elements > 0) source.cols = elements / pieces;
  source.rows = source.cols == 0 ? 0 : elements / source.cols;
}

RowSource ReaderRows(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor) {
  RowSource source;
  source.name = TensorContext(reader, tensor.name);
  source.dtype = tensor.dtype;
  SetRowShape(source, tensor.shape, 1);
  source.rows_per_piece = std::max<int64_t>(source.rows, 1);
  const int64_t cols = source.cols;
  source.read = [&reader, &tensor, cols](const RowBlock& block, uint8_t* out) {
    return reader.Read(tensor, BytesOf(block.first * cols + block.col, tensor.dtype),
                       {out, BytesOf(block.elements(), tensor.dtype)});
  };
  return source;
}

namespace {

// The largest block of `source` of at most `max_bytes`: whole rows, or a part of one row, a
// multiple of `col_align` (and of the source's) columns, starting on a byte boundary (F4, F6).
RowBlock MaxBlock(const RowSource& source, int64_t max_bytes, int64_t col_align) {
  const int64_t bits = DTypeBits(source.dtype);
  const int64_t block_elements = max_bytes * 8 / bits;
  const int64_t align =
      std::max<int64_t>(1, std::lcm(std::lcm(col_align, source.col_align), 8 / std::gcd<int64_t>(bits, 8)));
  if (source.tile_cols > 0 && source.cols > source.tile_cols) {
    const int64_t cols = std::max(align, source.tile_cols / align * align);
    if (cols < source.cols) return {0, std::clamp<int64_t>(block_elements / cols, 1, source.rows), 0, cols};
  }
  if (source.cols <= block_elements) {
    return {0, std::clamp<int64_t>(block_elements / std::max<int64_t>(source.cols, 1), 1, source.rows), 0, source.cols};
  }
  return {0, 1, 0, std::max(align, block_elements / align * align)};
}

// Writes the rows of a block that `rows_of` laid out row after row (each `row_bytes` long) at
// `offset_of(row)`: one write when the block's rows are adjacent in the target (whole rows, or a
// part of one row), else one per row (a tile).
Status WriteBlockRows(const WriteTarget& target, const RowSource& source, const RowBlock& block, const uint8_t* data,
                      uint64_t row_bytes, const std::function<uint64_t(int64_t row)>& offset_of) {
  if (block.count == 1 || block.cols == source.cols) {
    return target.Write(offset_of(block.first), {data, row_bytes * block.count});
  }
  for (int64_t r = 0; r < block.count; ++r) {
    STQ_RETURN_IF_ERROR(target.Write(offset_of(block.first + r), {data + r * row_bytes, row_bytes}));
  }
  return Status::Ok();
}

// Calls fn for consecutive blocks no larger than `max` (from MaxBlock) that never cross a piece
// boundary.
Status ForEachBlock(const RowSource& source, const RowBlock& max,
                    const std::function<Status(const RowBlock& block)>& fn) {
  for (int64_t first = 0; first < source.rows;) {
    const int64_t piece_end = (first / source.rows_per_piece + 1) * source.rows_per_piece;
    const int64_t count = std::min({max.count, source.rows - first, piece_end - first});
    for (int64_t col = 0; col < source.cols; col += max.cols) {
      STQ_RETURN_IF_ERROR(fn({first, count, col, std::min(max.cols, source.cols - col)}));
    }
    first += count;
  }
  return Status::Ok();
}

// Units of work of about kTaskBytes of input, each read, transformed and written by one thread:
// its input and output stay in that core's L2 cache from the read to the write, and reading,
// computing and writing run on every core at once instead of one stage after the other.
constexpr int64_t kTaskBytes = 256 << 10;
// Tiles of a transposed source are larger: each of their rows is a write and each of their
// columns a read of its own, whose counts fall with the tile's side.
constexpr int64_t kTileTaskBytes = 1 << 20;

std::vector<RowBlock> TaskBlocks(const RowSource& source, int64_t col_align) {
  std::vector<RowBlock> blocks;
  const int64_t task_bytes = source.tile_cols > 0 ? kTileTaskBytes : kTaskBytes;
  (void)ForEachBlock(source, MaxBlock(source, task_bytes, col_align), [&](const RowBlock& block) {
    blocks.push_back(block);
    return Status::Ok();
  });
  return blocks;
}

// Per-thread buffers kept across tasks and tensors: fresh ones would be page-faulted in (and
// zeroed) again for every tensor.
uint8_t* ScratchBuffer(int slot, size_t bytes) {
  thread_local std::vector<uint8_t> buffers[4];
  std::vector<uint8_t>& buffer = buffers[slot];
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

// Runs fn over the task blocks (parts of a row: multiples of `col_align` columns) on up to
// `threads` threads; `progress` (optional) is called with each block's input bytes, one call at a
// time.
Status ForEachTask(const RowSource& source, int64_t col_align, int threads,
                   const std::function<void(uint64_t)>& progress,
                   const std::function<Status(const RowBlock&)>& fn) {
  const std::vector<RowBlock> blocks = TaskBlocks(source, col_align);
  std::mutex progress_mutex;
  return util::ParallelFor(static_cast<int64_t>(blocks.size()), threads, [&](int64_t i) -> Status {
    STQ_RETURN_IF_ERROR(fn(blocks[i]));
    if (progress) {
      std::lock_guard<std::mutex> lock(progress_mutex);
      progress(BytesOf(blocks[i].elements(), source.dtype));
    }
    return Status::Ok();
  });
}

// A part of a row holds whole groups and whole packed words.
int64_t GroupAlign(const QuantSpec& spec) { return std::lcm<int64_t>(spec.group_size, 32); }

}  // namespace

namespace {

// Quantizes one block of `input` (the block's elements, as read) and writes its fields.
Status QuantizeBlock(const RowSource& source, const QuantSpec& spec, float global_scale,
                     const QuantizedTargets& targets, const RowBlock& block, const uint8_t* input) {
  const int64_t cols = source.cols;
  const int64_t packed_row_bytes = PackedWordsPerRow(spec, cols) * 4;
  const int scale_bytes = ElementBytes(ScaleDType(spec, source.dtype));
  const int64_t scale_row_bytes = GroupsPerRow(spec, cols) * scale_bytes;
  const uint64_t packed_bytes = block.count * PackedWordsPerRow(spec, block.cols) * 4;
  const uint64_t block_scale_bytes = block.count * GroupsPerRow(spec, block.cols) * scale_bytes;
  auto* packed = reinterpret_cast<uint32_t*>(ScratchBuffer(1, packed_bytes));
  uint8_t* scales = ScratchBuffer(2, block_scale_bytes);
  uint8_t* biases = targets.biases ? ScratchBuffer(3, block_scale_bytes) : nullptr;
  Status status =
      QuantizeRows(spec, source.dtype, input, block.count, block.cols, global_scale, {packed, scales, biases});
  const int64_t first_element = block.first * cols + block.col;
  if (!status.ok()) {
    if (status.code() == StatusCode::kInvalidInput) {
      // The kernel counts elements from the start of the block: count from the tensor's start.
      const int64_t bad = quant::FindNonFinite(source.dtype, input, block.elements());
      if (bad >= 0) return quant::NonFiniteError(source.dtype, input, bad, first_element).Annotate(source.name);
    }
    return status.Annotate(source.name);
  }
  if (targets.error) {
    STQ_RETURN_IF_ERROR(
        targets.error->Add(first_element, input, {packed, scales, biases}, block.count, block.cols, global_scale)
            .Annotate(source.name));
  }
  auto packed_at = [&](int64_t row) { return row * packed_row_bytes + PackedWordsPerRow(spec, block.col) * 4; };
  auto scale_at = [&](int64_t row) { return row * scale_row_bytes + GroupsPerRow(spec, block.col) * scale_bytes; };
  STQ_RETURN_IF_ERROR(WriteBlockRows(targets.packed, source, block, reinterpret_cast<uint8_t*>(packed),
                                     packed_bytes / block.count, packed_at));
  STQ_RETURN_IF_ERROR(WriteBlockRows(targets.scales, source, block, scales, block_scale_bytes / block.count, scale_at));
  if (targets.biases) {
    STQ_RETURN_IF_ERROR(WriteBlockRows(*targets.biases, source, block, biases, block_scale_bytes / block.count, scale_at));
  }
  return Status::Ok();
}

}  // namespace

Status WriteRows(const RowSource& source, std::span<const RowDestination> destinations, int threads,
                 const std::function<void(uint64_t)>& progress) {
  // A zero-size tensor may declare any last dimension: allocate nothing for it.
  if (source.rows == 0) return Status::Ok();
  int64_t col_align = 1;
  for (const RowDestination& d : destinations) {
    if (d.spec) col_align = std::lcm(col_align, GroupAlign(*d.spec));
  }
  return ForEachTask(source, col_align, threads, progress, [&](const RowBlock& block) -> Status {
    uint8_t* input = ScratchBuffer(0, BytesOf(block.elements(), source.dtype));
    STQ_RETURN_IF_ERROR(source.read(block, input));
    for (const RowDestination& d : destinations) {
      if (d.spec) {
        STQ_RETURN_IF_ERROR(QuantizeBlock(source, *d.spec, d.global_scale, d.quantized, block, input));
      } else {
        STQ_RETURN_IF_ERROR(
            WriteBlockRows(d.copy, source, block, input, BytesOf(block.cols, source.dtype),
                           [&](int64_t row) { return BytesOf(row * source.cols + block.col, source.dtype); }));
      }
    }
    return Status::Ok();
  });
}

Status CopyRows(const RowSource& source, const WriteTarget& target, int threads,
                const std::function<void(uint64_t)>& progress) {
  const RowDestination destination{.copy = target};
  return WriteRows(source, {&destination, 1}, threads, progress);
}

Result<float> RowsAbsMax(const RowSource& source) {
  if (source.rows == 0) return 0.0f;
  const RowBlock max = MaxBlock(source, kBlockBytes, 1);
  std::vector<uint8_t> buffer(BytesOf(max.elements(), source.dtype));
  float amax = 0.0f;
  STQ_RETURN_IF_ERROR(ForEachBlock(source, max, [&](const RowBlock& block) -> Status {
    STQ_RETURN_IF_ERROR(source.read(block, buffer.data()));
    const float block_max = AbsMax(source.dtype, buffer.data(), block.elements());
    if (!std::isfinite(block_max)) {
      return Status::InvalidInput(fmt::format("{}: holds NaN or Inf values, which cannot be quantized", source.name));
    }
    amax = std::max(amax, block_max);
    return Status::Ok();
  }));
  return amax;
}

Status QuantizeRowSource(const RowSource& source, const QuantSpec& spec, float global_scale,
                         const QuantizedTargets& targets, int threads, const std::function<void(uint64_t)>& progress) {
  const RowDestination destination{.spec = spec, .global_scale = global_scale, .quantized = targets};
  return WriteRows(source, {&destination, 1}, threads, progress);
}

Status DequantizeTensor(const safetensors::Reader& reader, const QuantizedSources& sources,
                        const QuantSpec& spec, float global_scale, int64_t cols, DType out_dtype,
                        const WriteTarget& target) {
  const int64_t words_per_row = PackedWordsPerRow(spec, cols);
  const int64_t groups_per_row = GroupsPerRow(spec, cols);
  const DType scale_dtype = sources.scales->dtype;
  const int scale_bytes = ElementBytes(scale_dtype);
  RowSource source;
  source.name = TensorContext(reader, sources.packed->name);
  source.dtype = out_dtype;
  source.rows = words_per_row == 0 ? 0 : static_cast<int64_t>(sources.packed->nbytes() / 4) / words_per_row;
  source.cols = cols;
  source.rows_per_piece = std::max<int64_t>(source.rows, 1);
  source.col_align = GroupAlign(spec);
  source.read = [&](const RowBlock& block, uint8_t* out) -> Status {
    std::vector<uint32_t> packed(block.count * PackedWordsPerRow(spec, block.cols));
    std::vector<uint8_t> scales(block.count * GroupsPerRow(spec, block.cols) * scale_bytes);
    std::vector<uint8_t> biases(sources.biases ? scales.size() : 0);
    const uint64_t first_word = block.first * words_per_row + PackedWordsPerRow(spec, block.col);
    STQ_RETURN_IF_ERROR(reader.Read(*sources.packed, first_word * 4,
                                    {reinterpret_cast<uint8_t*>(packed.data()), packed.size() * 4}));
    const uint64_t scale_offset = (block.first * groups_per_row + GroupsPerRow(spec, block.col)) * scale_bytes;
    STQ_RETURN_IF_ERROR(reader.Read(*sources.scales, scale_offset, scales));
    if (sources.biases) STQ_RETURN_IF_ERROR(reader.Read(*sources.biases, scale_offset, biases));
    return DequantizeRows(spec, scale_dtype, {packed.data(), scales.data(), biases.data()}, block.count, block.cols,
                          global_scale, out_dtype, out)
        .Annotate(source.name);
  };
  return CopyRows(source, target, 1);
}

}  // namespace stquant::output
