// Quantization modes and their parameters: the one table that parsing, --help, config blocks and
// blob metadata read. Mode names are written into files; they never change.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "stquant/dtype.h"
#include "stquant/status.h"

namespace stquant {

enum class QuantMode : uint8_t { kAffine, kMxfp4, kMxfp8, kNvfp4 };

// Which MLX numerics to reproduce (spec §11). Both profiles are MLX's CPU backend, the one pip
// `mlx` runs on Linux:
//   kMlxCpu      the newest release (0.32.3+): mx scales are rounded up to a power of two
//                (ml-explore/mlx#4353), so block maxima never saturate. The default.
//   kMlxCpu0322  MLX 0.32.2 and earlier (the golden vectors): mx scale exponent rounded to
//                nearest in log2. Affine and nvfp4 are identical in both.
enum class QuantProfile : uint8_t { kMlxCpu, kMlxCpu0322 };

// "mlx-cpu" / "mlx-cpu-0.32.2".
std::string_view QuantProfileName(QuantProfile profile);
Result<QuantProfile> ParseQuantProfile(std::string_view name);

struct QuantSpec {
  QuantMode mode = QuantMode::kAffine;
  int bits = 4;
  int group_size = 64;
  // nvfp4 only: quantize with a per-tensor float32 global scale (mx.quantize(..., global_scale=)).
  bool global_scale = false;
  QuantProfile profile = QuantProfile::kMlxCpu;

  friend bool operator==(const QuantSpec&, const QuantSpec&) = default;
};

struct QuantModeInfo {
  QuantMode mode;
  std::string_view name;  // MLX's mode string: "affine", "mxfp4", "mxfp8", "nvfp4"
  int default_bits;
  int default_group_size;
  std::span<const int> allowed_bits;
  std::span<const int> allowed_group_sizes;
  bool has_biases;  // affine only
};

const QuantModeInfo& ModeInfo(QuantMode mode);
std::span<const QuantModeInfo> AllModes();
// "affine" etc.; kInvalidArgument "[quantize] Invalid quantization mode 'x'." otherwise.
Result<QuantMode> ParseQuantMode(std::string_view name);

// The user-facing types: int2..int8 (affine, group 64), mxfp4, mxfp8, nvfp4.
Result<QuantSpec> ParseQuantType(std::string_view type);
// "int4", "mxfp8", ...: the inverse of ParseQuantType up to the group size, which is not part of
// the name (ollama's quant_type strings; files carry group_size beside it).
std::string QuantTypeName(const QuantSpec& spec);

// MLX's quantize() checks (spec §3.1) on the parameters, with MLX's messages.
Status ValidateQuantSpec(const QuantSpec& spec);
// The shape checks: floating dtype (bf16, f16, f32), rank >= 2, last dim divisible by the group.
Status ValidateQuantInput(const QuantSpec& spec, DType dtype, std::span<const int64_t> shape);

// Output geometry for an input whose last dimension is `cols`.
inline int64_t PackedWordsPerRow(const QuantSpec& spec, int64_t cols) { return cols * spec.bits / 32; }
inline int64_t GroupsPerRow(const QuantSpec& spec, int64_t cols) { return cols / spec.group_size; }
// The dtype of stored scales: the input dtype for affine, U8 (E8M0 / E4M3 bytes) otherwise.
inline DType ScaleDType(const QuantSpec& spec, DType input) {
  return spec.mode == QuantMode::kAffine ? input : DType::kU8;
}

}  // namespace stquant
