#include "stquant/quant_spec.h"

#include <algorithm>
#include <array>
#include <charconv>

#include <fmt/format.h>

namespace stquant {

namespace {

constexpr std::array<int, 6> kAffineBits = {2, 3, 4, 5, 6, 8};
constexpr std::array<int, 3> kAffineGroups = {32, 64, 128};
constexpr std::array<int, 1> kBits4 = {4};
constexpr std::array<int, 1> kBits8 = {8};
constexpr std::array<int, 1> kGroup32 = {32};
constexpr std::array<int, 1> kGroup16 = {16};

const std::array<QuantModeInfo, 4> kModes = {{
    {QuantMode::kAffine, "affine", 4, 64, kAffineBits, kAffineGroups, true},
    {QuantMode::kMxfp4, "mxfp4", 4, 32, kBits4, kGroup32, false},
    {QuantMode::kMxfp8, "mxfp8", 8, 32, kBits8, kGroup32, false},
    {QuantMode::kNvfp4, "nvfp4", 4, 16, kBits4, kGroup16, false},
}};

bool Contains(std::span<const int> values, int v) {
  return std::find(values.begin(), values.end(), v) != values.end();
}

// MLX's dtype names, used in its messages.
std::string_view MlxDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBool: return "bool";
    case DType::kU8: return "uint8";
    case DType::kI8: return "int8";
    case DType::kU16: return "uint16";
    case DType::kI16: return "int16";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kU32: return "uint32";
    case DType::kI32: return "int32";
    case DType::kF32: return "float32";
    case DType::kU64: return "uint64";
    case DType::kI64: return "int64";
    case DType::kF64: return "float64";
    case DType::kC64: return "complex64";
    default: return DTypeName(dtype);
  }
}

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + ")";
}

}  // namespace

const QuantModeInfo& ModeInfo(QuantMode mode) { return kModes[static_cast<size_t>(mode)]; }
std::span<const QuantModeInfo> AllModes() { return kModes; }

std::string_view QuantProfileName(QuantProfile profile) {
  return profile == QuantProfile::kMlxCpu ? "mlx-cpu" : "mlx-cpu-0.32.2";
}

Result<QuantProfile> ParseQuantProfile(std::string_view name) {
  if (name == "mlx-cpu") return QuantProfile::kMlxCpu;
  if (name == "mlx-cpu-0.32.2") return QuantProfile::kMlxCpu0322;
  return Status::InvalidArgument(
      fmt::format("unknown profile '{}' (expected mlx-cpu or mlx-cpu-0.32.2)", name));
}

Result<QuantMode> ParseQuantMode(std::string_view name) {
  for (const QuantModeInfo& info : kModes) {
    if (info.name == name) return info.mode;
  }
  return Status::InvalidArgument(fmt::format("[quantize] Invalid quantization mode '{}'.", name));
}

Result<QuantSpec> ParseQuantType(std::string_view type) {
  QuantSpec spec;
  if (type.starts_with("int") || type.starts_with("q")) {
    std::string_view digits = type.substr(type.starts_with("int") ? 3 : 1);
    int bits = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), bits);
    if (ec == std::errc() && end == digits.data() + digits.size() && Contains(kAffineBits, bits)) {
      spec.mode = QuantMode::kAffine;
      spec.bits = bits;
      spec.group_size = 64;
      return spec;
    }
  } else {
    for (const QuantModeInfo& info : kModes) {
      if (info.mode != QuantMode::kAffine && info.name == type) {
        spec.mode = info.mode;
        spec.bits = info.default_bits;
        spec.group_size = info.default_group_size;
        return spec;
      }
    }
  }
  return Status::InvalidArgument(fmt::format(
      "unknown quantization type '{}' (expected int2, int3, int4, int5, int6, int8, mxfp4, mxfp8 or nvfp4)",
      type));
}

std::string QuantTypeName(const QuantSpec& spec) {
  const QuantModeInfo& info = ModeInfo(spec.mode);
  if (spec.mode == QuantMode::kAffine) return fmt::format("int{}", spec.bits);
  return std::string(info.name);
}

Status ValidateQuantSpec(const QuantSpec& spec) {
  if (spec.global_scale && spec.mode != QuantMode::kNvfp4) {
    return Status::InvalidArgument("[quantize] Global scale is only supported for 'nvfp4' quantization mode.");
  }
  const QuantModeInfo& info = ModeInfo(spec.mode);
  if (spec.mode == QuantMode::kAffine) {
    if (!Contains(kAffineGroups, spec.group_size)) {
      return Status::InvalidArgument(fmt::format(
          "[quantize] The requested group size {} is not supported. The supported group sizes are 32, 64, and 128.",
          spec.group_size));
    }
    if (!Contains(kAffineBits, spec.bits)) {
      return Status::InvalidArgument(fmt::format(
          "[quantize] The requested number of bits {} is not supported. The supported bits are 2, 3, 4, 5, 6 and 8.",
          spec.bits));
    }
    return Status::Ok();
  }
  if (spec.group_size != info.default_group_size) {
    return Status::InvalidArgument(fmt::format("[quantize] {} quantization requires group size {} but got {}.",
                                               info.name, info.default_group_size, spec.group_size));
  }
  if (spec.bits != info.default_bits) {
    return Status::InvalidArgument(fmt::format("[quantize] {} quantization requires bits to be {} but got {}.",
                                               info.name, info.default_bits, spec.bits));
  }
  return Status::Ok();
}

Status ValidateQuantInput(const QuantSpec& spec, DType dtype, std::span<const int64_t> shape) {
  if (!IsFloatingDType(dtype)) {
    return Status::InvalidArgument(fmt::format(
        "[quantize] Only real floating types can be quantized but w has type {}.", MlxDTypeName(dtype)));
  }
  if (shape.size() < 2) {
    return Status::InvalidArgument(fmt::format(
        "[quantize] The matrix to be quantized must have at least 2 dimension but it has only {}.", shape.size()));
  }
  if (spec.group_size <= 0) {
    return Status::InvalidArgument(fmt::format("[quantize] group size must be positive but got {}.", spec.group_size));
  }
  if (shape.back() % spec.group_size != 0) {
    return Status::InvalidArgument(fmt::format(
        "[quantize] The last dimension of the matrix needs to be divisible by the quantization group size {}. "
        "However the provided  matrix has shape {}",
        spec.group_size, ShapeString(shape)));
  }
  STQ_RETURN_IF_ERROR(ValidateQuantSpec(spec));
  if (dtype == DType::kF64) {
    // MLX accepts float64 here and then fails in the CPU kernel; say so up front.
    return Status::Unsupported("[quantize] float64 inputs are not supported (MLX's CPU kernel rejects them too).");
  }
  return Status::Ok();
}

}  // namespace stquant
