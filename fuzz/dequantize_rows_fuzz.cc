// libFuzzer target: DequantizeRows (and QuantizeRows) on fuzzed parameters, shapes and bytes.
//
// The first bytes choose the mode, bits, group size, scale dtype (any dtype: the function must
// refuse the ones it cannot read), output dtype, profile, global-scale flag, rows and columns;
// the rest fills the packed words, scales, biases and input values (cyclically). Buffers are
// allocated exactly as the contract in stquant/quantize.h states, so AddressSanitizer reports
// any read or write past them. A refused call must be InvalidArgument (bad parameters) or
// InvalidInput (NaN/Inf input to QuantizeRows), one line. A quantized block must dequantize.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "stquant/quant_spec.h"
#include "stquant/quantize.h"

namespace {

using stquant::DType;
using stquant::QuantMode;
using stquant::QuantSpec;

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

struct Bytes {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;
  uint8_t Next() { return pos < size ? data[pos++] : 0; }
  // Fills `out` with the remaining bytes, cyclically (zeros when none remain).
  void Fill(void* out, size_t n) {
    auto* o = static_cast<uint8_t*>(out);
    const size_t rest = size - pos;
    for (size_t i = 0; i < n; ++i) o[i] = rest ? data[pos + i % rest] : 0;
  }
};

void RequireRefusal(const stquant::Status& status) {
  Require(status.code() == stquant::StatusCode::kInvalidArgument ||
          status.code() == stquant::StatusCode::kInvalidInput);
  Require(status.message().find('\n') == std::string::npos);
}

// A non-null pointer even for an empty buffer.
template <typename T>
T* Ptr(std::vector<T>& v) {
  static T dummy{};
  return v.empty() ? &dummy : v.data();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in{data, size};
  static constexpr int kBits[] = {2, 3, 4, 5, 6, 8, 1, 7};
  static constexpr int kGroups[] = {32, 64, 128, 16, 8, 0, 33, 256};
  static constexpr DType kOut[] = {DType::kBF16, DType::kF16, DType::kF32, DType::kU8};
  QuantSpec spec;
  spec.mode = static_cast<QuantMode>(in.Next() % 4);
  const uint8_t b = in.Next();
  spec.bits = kBits[b % 8];
  spec.group_size = kGroups[(b >> 3) % 8];
  if ((b >> 6) & 1) {
    spec.bits = stquant::ModeInfo(spec.mode).default_bits;
    spec.group_size = stquant::ModeInfo(spec.mode).default_group_size;
  }
  spec.global_scale = (b >> 7) & 1;
  const uint8_t d = in.Next();
  const DType scale_dtype = static_cast<DType>(d % 20);
  const DType out_dtype = kOut[(d >> 5) % 4];
  spec.profile = (d >> 7) ? stquant::QuantProfile::kMlxCpu0322 : stquant::QuantProfile::kMlxCpu;
  const int64_t rows = in.Next() % 9;
  const int64_t cols = (in.Next() % 9) * 16;
  float global_scale = 0;
  const uint8_t gs[4] = {in.Next(), in.Next(), in.Next(), in.Next()};
  std::memcpy(&global_scale, gs, 4);

  // Buffer sizes as documented for a valid call; for an invalid one the function must refuse
  // before touching them.
  const bool valid_spec = stquant::ValidateQuantSpec(spec).ok();
  const int64_t words = valid_spec ? stquant::PackedWordsPerRow(spec, cols) : 0;
  const int64_t groups = valid_spec ? stquant::GroupsPerRow(spec, cols) : 0;
  const int scale_bits = spec.mode == QuantMode::kAffine ? stquant::DTypeBits(scale_dtype) : 8;
  std::vector<uint32_t> packed(rows * words);
  std::vector<uint8_t> scales(rows * groups * scale_bits / 8);
  std::vector<uint8_t> biases(scales.size());
  std::vector<uint8_t> output(rows * cols * stquant::DTypeBits(out_dtype) / 8);
  in.Fill(packed.data(), packed.size() * 4);
  in.Fill(scales.data(), scales.size());
  in.Fill(biases.data(), biases.size());

  stquant::Status status = stquant::DequantizeRows(
      spec, scale_dtype, {Ptr(packed), Ptr(scales), spec.mode == QuantMode::kAffine ? Ptr(biases) : nullptr}, rows,
      cols, global_scale, out_dtype, Ptr(output));
  if (!status.ok()) RequireRefusal(status);

  // Quantize fuzzed values of a float dtype (valid parameters only: a REQUIRES of QuantizeRows).
  const DType in_dtype = out_dtype == DType::kU8 ? DType::kBF16 : out_dtype;
  if (valid_spec && cols % spec.group_size == 0 && rows > 0 && cols > 0) {
    std::vector<uint8_t> input(rows * cols * stquant::DTypeBits(in_dtype) / 8);
    in.Fill(input.data(), input.size());
    const DType qscale = stquant::ScaleDType(spec, in_dtype);
    std::vector<uint32_t> qpacked(rows * words);
    std::vector<uint8_t> qscales(rows * groups * stquant::DTypeBits(qscale) / 8);
    std::vector<uint8_t> qbiases(qscales.size());
    const float amax = stquant::AbsMax(in_dtype, input.data(), rows * cols);
    status = stquant::QuantizeRows(spec, in_dtype, input.data(), rows, cols, amax,
                                   {qpacked.data(), qscales.data(), qbiases.data()});
    if (!status.ok()) {
      RequireRefusal(status);
    } else {
      const DType back = stquant::DefaultDequantizeDType(spec, qscale);
      std::vector<uint8_t> round(rows * cols * stquant::DTypeBits(back) / 8);
      status = stquant::DequantizeRows(spec, qscale, {qpacked.data(), qscales.data(), qbiases.data()}, rows, cols,
                                       amax, back, round.data());
      Require(status.ok());
    }
  }
  return 0;
}
