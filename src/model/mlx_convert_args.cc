#include <filesystem>

#include <fmt/format.h>

#include "stquant/hf_cache.h"
#include "stquant/mlx_convert.h"

namespace stquant {

Result<ConvertOptions> MlxConvertOptions(const MlxConvertArgs& args) {
  if (!args.upload_repo.empty()) {
    return Status::InvalidArgument(fmt::format(
        "--upload-repo needs the network, and stquant never uploads; convert, then upload with `hf upload {} {}`",
        args.upload_repo, args.mlx_path));
  }
  if (args.hf_path.empty()) return Status::InvalidArgument("--hf-path is required");
  std::error_code ec;
  if (std::filesystem::exists(args.mlx_path, ec)) {
    return Status::InvalidArgument(fmt::format(
        "Cannot save to the path {} as it already exists. Please delete the file/directory or specify a new path to "
        "save to.",
        args.mlx_path));
  }
  ConvertOptions options;
  STQ_ASSIGN_OR_RETURN(options.source_dir, ResolveModelSource(args.hf_path, args.revision));
  options.output_dir = args.mlx_path;
  STQ_ASSIGN_OR_RETURN(const QuantMode mode, ParseQuantMode(args.q_mode));
  if (!args.quant_predicate.empty() && mode != QuantMode::kAffine) {
    return Status::InvalidArgument("Quant predicates only support 'affine' quantization.");
  }
  if (!args.dtype.empty()) {
    if (args.dtype == "float16") options.dtype = DType::kF16;
    else if (args.dtype == "bfloat16") options.dtype = DType::kBF16;
    else if (args.dtype == "float32") options.dtype = DType::kF32;
    else return Status::InvalidArgument(fmt::format("--dtype '{}': choose float16, bfloat16 or float32", args.dtype));
  }
  if (args.quantize && args.dequantize) {
    return Status::InvalidArgument("Choose either quantize or dequantize, not both.");
  }
  if (args.quantize) {
    // mlx_lm.utils.quantize_model: `group_size or default`, `bits or default`.
    QuantSpec spec;
    spec.mode = mode;
    spec.group_size = args.q_group_size.value_or(0) ? *args.q_group_size : ModeInfo(mode).default_group_size;
    spec.bits = args.q_bits.value_or(0) ? *args.q_bits : ModeInfo(mode).default_bits;
    STQ_RETURN_IF_ERROR(ValidateQuantSpec(spec));
    options.quant = spec;
    options.recipe = args.quant_predicate;
  }
  options.dequantize = args.dequantize;
  return options;
}

}  // namespace stquant
