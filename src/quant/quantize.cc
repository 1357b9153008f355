#include "stquant/quantize.h"

#include <algorithm>
#include <cmath>

#include "quant/element.h"
#include "quant/kernels.h"
#include "util/thread_pool.h"

namespace stquant {

float AbsMax(DType dtype, const void* input, int64_t count) {
  float amax = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    const float a = std::fabs(quant::LoadElement(dtype, input, i));
    if (!(a <= amax)) amax = a;  // keeps NaN once seen
    if (std::isnan(amax)) return amax;
  }
  return amax;
}

Status QuantizeRows(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                    float global_scale, QuantizedBuffers out) {
  return quant::QuantizeRowsRef(spec, dtype, input, rows, cols, global_scale, out);
}

Status QuantizeRowsParallel(const QuantSpec& spec, DType dtype, const void* input, int64_t rows,
                            int64_t cols, float global_scale, QuantizedBuffers out, int threads) {
  // Blocks of about 256 KiB of input: large enough to amortize the hand-off, small enough to
  // balance two to a few dozen cores.
  const int64_t row_bytes = cols * quant::ElementBytes(dtype);
  const int64_t rows_per_block = std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(row_bytes, 1));
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  const int64_t words_per_row = PackedWordsPerRow(spec, cols);
  const int64_t groups_per_row = GroupsPerRow(spec, cols);
  const int scale_bytes = spec.mode == QuantMode::kAffine ? quant::ElementBytes(dtype) : 1;
  return util::ParallelFor(blocks, threads, [&](int64_t block) -> Status {
    const int64_t first = block * rows_per_block;
    const int64_t count = std::min(rows_per_block, rows - first);
    QuantizedBuffers part;
    part.packed = out.packed + first * words_per_row;
    part.scales = static_cast<char*>(out.scales) + first * groups_per_row * scale_bytes;
    part.biases = out.biases ? static_cast<char*>(out.biases) + first * groups_per_row * scale_bytes : nullptr;
    const void* part_input = static_cast<const char*>(input) + first * row_bytes;
    Status status = QuantizeRows(spec, dtype, part_input, count, cols, global_scale, part);
    if (!status.ok() && status.code() == StatusCode::kInvalidInput) {
      // Re-base the element index on the whole input.
      const int64_t bad = quant::FindNonFinite(dtype, part_input, count * cols);
      if (bad >= 0) return quant::NonFiniteError(dtype, input, first * cols + bad);
    }
    return status;
  });
}

}  // namespace stquant
