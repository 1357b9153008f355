// Runtime-dispatched SIMD quantization (Highway's foreach_target skeleton): this file is compiled
// once per SIMD target; HWY_DYNAMIC_DISPATCH picks the best one the CPU supports, once per call
// (a block of rows), never per group.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quant/quantize.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <type_traits>
#include <vector>

#include "hwy/highway.h"
#include "quant/affine-inl.h"
#include "quant/fp-inl.h"
#include "quant/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace stquant::quant::HWY_NAMESPACE {

// The row loop of one (dtype, mode, packing) combination; `encode_row` returns the column of the
// first non-finite group of a row, or -1.
template <class EncodeRow>
HWY_INLINE Status RunRows(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                          bool direct, QuantizedBuffers out, const EncodeRow& encode_row) {
  const int64_t words_per_row = PackedWordsPerRow(spec, cols);
  const int64_t row_bytes = cols * ElementBytes(dtype);
  // Widths other than 4 and 8 bits go through a u8 code buffer, packed per row.
  thread_local std::vector<uint8_t> codes;
  if (!direct && static_cast<int64_t>(codes.size()) < cols) codes.resize(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const void* row = static_cast<const char*>(input) + r * row_bytes;
    uint32_t* packed = out.packed + r * words_per_row;
    const int64_t bad_column = encode_row(r, row, direct ? reinterpret_cast<uint8_t*>(packed) : codes.data());
    if (HWY_UNLIKELY(bad_column >= 0)) {
      const int64_t start = r * cols + bad_column;
      const char* group = static_cast<const char*>(input) + start * ElementBytes(dtype);
      return NonFiniteError(dtype, input, start + FindNonFinite(dtype, group, spec.group_size));
    }
    if (!direct) PackCodes(codes.data(), cols, spec.bits, packed);
  }
  return Status::Ok();
}

template <DType kT>
HWY_INLINE Status QuantizeRowsT(const QuantSpec& spec, const void* input, int64_t rows, int64_t cols,
                                float global_scale, QuantizedBuffers out) {
  const int64_t groups_per_row = GroupsPerRow(spec, cols);
  const int gs = spec.group_size;
  auto* fp_scales = static_cast<uint8_t*>(out.scales);
  switch (spec.mode) {
    case QuantMode::kAffine: {
      const int scale_bytes = ElementBytes(kT);
      auto* scales = static_cast<char*>(out.scales);
      auto* biases = static_cast<char*>(out.biases);
      const int bits = spec.bits;
      auto affine = [&](auto pack) {
        constexpr int kPack = decltype(pack)::value;
        return RunRows(spec, kT, input, rows, cols, kPack != 0, out, [&](int64_t r, const void* row, uint8_t* dst) {
          const int64_t offset = r * groups_per_row * scale_bytes;
          return AffineEncodeRowT<kT, kPack == 4 ? 4 : 8>(bits, gs, row, cols, dst, scales + offset, biases + offset);
        });
      };
      if (bits == 4) return affine(std::integral_constant<int, 4>());
      if (bits == 8) return affine(std::integral_constant<int, 8>());
      return affine(std::integral_constant<int, 0>());
    }
    case QuantMode::kMxfp4:
      return RunRows(spec, kT, input, rows, cols, true, out, [&](int64_t r, const void* row, uint8_t* dst) {
        return MxEncodeRowT<kT, QuantMode::kMxfp4>(spec.profile, gs, row, cols, dst, fp_scales + r * groups_per_row);
      });
    case QuantMode::kMxfp8:
      return RunRows(spec, kT, input, rows, cols, true, out, [&](int64_t r, const void* row, uint8_t* dst) {
        return MxEncodeRowT<kT, QuantMode::kMxfp8>(spec.profile, gs, row, cols, dst, fp_scales + r * groups_per_row);
      });
    case QuantMode::kNvfp4: {
      const float encode = NvEncodeFactor(spec, global_scale);
      const bool gscale = spec.global_scale;
      return RunRows(spec, kT, input, rows, cols, true, out, [&](int64_t r, const void* row, uint8_t* dst) {
        return NvEncodeRowT<kT>(gscale, gs, row, cols, encode, dst, fp_scales + r * groups_per_row);
      });
    }
  }
  return Status::Ok();
}

Status QuantizeRowsTarget(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                          float global_scale, QuantizedBuffers out) {
  switch (dtype) {
    case DType::kBF16: return QuantizeRowsT<DType::kBF16>(spec, input, rows, cols, global_scale, out);
    case DType::kF16: return QuantizeRowsT<DType::kF16>(spec, input, rows, cols, global_scale, out);
    default: return QuantizeRowsT<DType::kF32>(spec, input, rows, cols, global_scale, out);
  }
}

}  // namespace stquant::quant::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <cmath>

#include "quant/element.h"
#include "stquant/quantize.h"
#include "util/thread_pool.h"

namespace stquant {
namespace quant {

HWY_EXPORT(QuantizeRowsTarget);

Status QuantizeRowsFast(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                        float global_scale, QuantizedBuffers out) {
  return HWY_DYNAMIC_DISPATCH(QuantizeRowsTarget)(spec, dtype, input, rows, cols, global_scale, out);
}

void ForEachSupportedTarget(const std::function<void(const char* target_name)>& fn) {
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    fn(hwy::TargetName(target));
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace quant

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
  return quant::QuantizeRowsFast(spec, dtype, input, rows, cols, global_scale, out);
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
      if (bad >= 0) return quant::NonFiniteError(dtype, part_input, bad, first * cols);
    }
    return status;
  });
}

}  // namespace stquant
#endif  // HWY_ONCE
