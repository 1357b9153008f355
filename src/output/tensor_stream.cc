#include "output/tensor_stream.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include <fmt/format.h>

#include "quant/kernels.h"
#include "util/thread_pool.h"

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

RowSource ReaderRows(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor) {
  RowSource source;
  source.name = TensorContext(reader, tensor.name);
  source.dtype = tensor.dtype;
  source.cols = tensor.shape.empty() ? 1 : tensor.shape.back();
  source.rows = source.cols == 0 ? 0 : tensor.num_elements() / source.cols;
  source.rows_per_piece = std::max<int64_t>(source.rows, 1);
  const uint64_t row_bytes = static_cast<uint64_t>(source.cols) * DTypeBits(tensor.dtype) / 8;
  source.read = [&reader, &tensor, row_bytes](int64_t first, int64_t count, uint8_t* out) {
    return reader.Read(tensor, first * row_bytes, {out, count * row_bytes});
  };
  return source;
}

namespace {

// Calls fn(first, count) for consecutive blocks of at most `block_rows` rows that never cross a
// piece boundary.
Status ForEachBlock(const RowSource& source, int64_t block_rows,
                    const std::function<Status(int64_t first, int64_t count)>& fn) {
  for (int64_t first = 0; first < source.rows;) {
    const int64_t piece_end = (first / source.rows_per_piece + 1) * source.rows_per_piece;
    const int64_t count = std::min({block_rows, source.rows - first, piece_end - first});
    STQ_RETURN_IF_ERROR(fn(first, count));
    first += count;
  }
  return Status::Ok();
}

// Units of work of about kTaskBytes of input, each read, transformed and written by one thread:
// its input and output stay in that core's L2 cache from the read to the write, and reading,
// computing and writing run on every core at once instead of one stage after the other.
constexpr int64_t kTaskBytes = 256 << 10;

struct RowBlock {
  int64_t first = 0;
  int64_t count = 0;
};

std::vector<RowBlock> TaskBlocks(const RowSource& source, int64_t row_bytes) {
  const int64_t block_rows = std::max<int64_t>(1, kTaskBytes / std::max<int64_t>(row_bytes, 1));
  std::vector<RowBlock> blocks;
  (void)ForEachBlock(source, block_rows, [&](int64_t first, int64_t count) {
    blocks.push_back({first, count});
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

// Runs fn over the blocks on up to `threads` threads; `progress` (optional) is called with each
// block's input bytes, one call at a time.
Status ForEachTask(const RowSource& source, int64_t row_bytes, int threads,
                   const std::function<void(uint64_t)>& progress,
                   const std::function<Status(const RowBlock&)>& fn) {
  const std::vector<RowBlock> blocks = TaskBlocks(source, row_bytes);
  std::mutex progress_mutex;
  return util::ParallelFor(static_cast<int64_t>(blocks.size()), threads, [&](int64_t i) -> Status {
    STQ_RETURN_IF_ERROR(fn(blocks[i]));
    if (progress) {
      std::lock_guard<std::mutex> lock(progress_mutex);
      progress(static_cast<uint64_t>(blocks[i].count * row_bytes));
    }
    return Status::Ok();
  });
}

}  // namespace

Status CopyRows(const RowSource& source, const WriteTarget& target, int threads,
                const std::function<void(uint64_t)>& progress) {
  // A zero-size tensor may declare any last dimension: allocate nothing for it.
  if (source.rows == 0) return Status::Ok();
  const int64_t row_bytes = source.cols * DTypeBits(source.dtype) / 8;
  return ForEachTask(source, row_bytes, threads, progress, [&](const RowBlock& block) -> Status {
    std::span<uint8_t> piece(ScratchBuffer(0, block.count * row_bytes), block.count * row_bytes);
    STQ_RETURN_IF_ERROR(source.read(block.first, block.count, piece.data()));
    return target.Write(block.first * row_bytes, piece);
  });
}

Result<float> RowsAbsMax(const RowSource& source) {
  if (source.rows == 0) return 0.0f;
  const int64_t row_bytes = source.cols * DTypeBits(source.dtype) / 8;
  const int64_t block_rows = std::max<int64_t>(1, std::min<int64_t>(source.rows, RowsPerBlock(row_bytes)));
  std::vector<uint8_t> buffer(block_rows * row_bytes);
  float amax = 0.0f;
  STQ_RETURN_IF_ERROR(ForEachBlock(source, block_rows, [&](int64_t first, int64_t count) -> Status {
    STQ_RETURN_IF_ERROR(source.read(first, count, buffer.data()));
    const float block_max = AbsMax(source.dtype, buffer.data(), count * source.cols);
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
  if (source.rows == 0) return Status::Ok();
  const int64_t cols = source.cols;
  const int64_t row_bytes = cols * ElementBytes(source.dtype);
  const int64_t packed_row_bytes = PackedWordsPerRow(spec, cols) * 4;
  const int64_t scale_row_bytes = GroupsPerRow(spec, cols) * ElementBytes(ScaleDType(spec, source.dtype));
  return ForEachTask(source, row_bytes, threads, progress, [&](const RowBlock& block) -> Status {
    uint8_t* input = ScratchBuffer(0, block.count * row_bytes);
    auto* packed = reinterpret_cast<uint32_t*>(ScratchBuffer(1, block.count * packed_row_bytes));
    uint8_t* scales = ScratchBuffer(2, block.count * scale_row_bytes);
    uint8_t* biases = targets.biases ? ScratchBuffer(3, block.count * scale_row_bytes) : nullptr;
    STQ_RETURN_IF_ERROR(source.read(block.first, block.count, input));
    Status status = QuantizeRows(spec, source.dtype, input, block.count, cols, global_scale, {packed, scales, biases});
    if (!status.ok()) {
      if (status.code() == StatusCode::kInvalidInput) {
        // The kernel counts elements from the start of the block: count from the tensor's start.
        const int64_t bad = quant::FindNonFinite(source.dtype, input, block.count * cols);
        if (bad >= 0) return quant::NonFiniteError(source.dtype, input, bad, block.first * cols).Annotate(source.name);
      }
      return status.Annotate(source.name);
    }
    const uint64_t packed_bytes = block.count * packed_row_bytes, scale_bytes = block.count * scale_row_bytes;
    STQ_RETURN_IF_ERROR(targets.packed.Write(block.first * packed_row_bytes, {reinterpret_cast<uint8_t*>(packed), packed_bytes}));
    STQ_RETURN_IF_ERROR(targets.scales.Write(block.first * scale_row_bytes, {scales, scale_bytes}));
    if (targets.biases) STQ_RETURN_IF_ERROR(targets.biases->Write(block.first * scale_row_bytes, {biases, scale_bytes}));
    return Status::Ok();
  });
}

Status DequantizeTensor(const safetensors::Reader& reader, const QuantizedSources& sources,
                        const QuantSpec& spec, float global_scale, int64_t cols, DType out_dtype,
                        const WriteTarget& target) {
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
    STQ_RETURN_IF_ERROR(target.Write(first * cols * out_bytes, {output.data(), static_cast<size_t>(count * cols * out_bytes)}));
  }
  return Status::Ok();
}

}  // namespace stquant::output
