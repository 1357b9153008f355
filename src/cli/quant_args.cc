#include "quant_args.h"

namespace stquant::cli {

void AddQuantArgs(CLI::App* cmd, QuantArgs* args, const std::string& type_help) {
  cmd->add_option("-q,--quantize", args->type, type_help);
  cmd->add_option("--mode", args->mode, "MLX mode instead of -q: affine, mxfp4, mxfp8, nvfp4 (with --bits/--group-size)");
  cmd->add_option("--bits", args->bits, "bits per weight (affine: 2, 3, 4, 5, 6, 8)");
  cmd->add_option("--group-size", args->group_size, "elements per scale (affine: 32, 64, 128)");
  cmd->add_option("--profile", args->profile,
                  "numerics: mlx-cpu (MLX >= 0.32.3, default) or mlx-cpu-0.32.2 (mx scales rounded to nearest, "
                  "E4M3 0x7F read as 480)")
      ->check(CLI::IsMember({"mlx-cpu", "mlx-cpu-0.32.2"}));
}

Result<std::optional<QuantSpec>> SpecFromArgs(const QuantArgs& args) {
  if (args.type.empty() && args.mode.empty()) {
    if (args.bits || args.group_size) return Status::InvalidArgument("--bits/--group-size need -q TYPE or --mode");
    return std::optional<QuantSpec>();
  }
  if (!args.type.empty() && !args.mode.empty()) return Status::InvalidArgument("give -q TYPE or --mode MODE, not both");
  QuantSpec spec;
  if (!args.type.empty()) {
    STQ_ASSIGN_OR_RETURN(spec, ParseQuantType(args.type));
  } else {
    STQ_ASSIGN_OR_RETURN(spec.mode, ParseQuantMode(args.mode));
    spec.bits = ModeInfo(spec.mode).default_bits;
    spec.group_size = ModeInfo(spec.mode).default_group_size;
  }
  if (args.bits) spec.bits = *args.bits;
  if (args.group_size) spec.group_size = *args.group_size;
  STQ_ASSIGN_OR_RETURN(spec.profile, ParseQuantProfile(args.profile));
  STQ_RETURN_IF_ERROR(ValidateQuantSpec(spec));
  return std::optional<QuantSpec>(spec);
}

}  // namespace stquant::cli
