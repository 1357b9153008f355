#include <memory>
#include <optional>
#include <string>

#include "commands.h"
#include "quant_args.h"
#include "stquant/quantize_file.h"

namespace stquant::cli {

namespace {

struct QuantizeCommandOptions {
  std::string input, output;
  QuantArgs quant;
  std::string tensors;
  std::string naming = "mlx";
  bool global_scale = false;
  int threads = 0;
};

Status RunQuantize(const QuantizeCommandOptions& o) {
  QuantizeFileOptions options;
  STQ_ASSIGN_OR_RETURN(std::optional<QuantSpec> spec, SpecFromArgs(o.quant));
  if (!spec) return Status::InvalidArgument("give -q TYPE or --mode MODE");
  options.spec = *spec;
  options.spec.global_scale = o.global_scale;
  options.tensor_regex = o.tensors;
  options.naming = o.naming == "ollama" ? TensorNaming::kOllama : TensorNaming::kMlx;
  options.threads = o.threads;
  return QuantizeFile(o.input, o.output, options);
}

struct DequantizeCommandOptions {
  std::string input, output;
  std::string dtype;
  std::optional<int> bits, group_size;
  int threads = 0;
};

Status RunDequantize(const DequantizeCommandOptions& o) {
  DequantizeFileOptions options;
  if (o.dtype == "bf16") options.dtype = DType::kBF16;
  else if (o.dtype == "f16") options.dtype = DType::kF16;
  else if (o.dtype == "f32") options.dtype = DType::kF32;
  options.bits = o.bits;
  options.group_size = o.group_size;
  options.threads = o.threads;
  return DequantizeFile(o.input, o.output, options);
}

}  // namespace

void RegisterQuantizeCommand(CLI::App& app, Status* status) {
  auto o = std::make_shared<QuantizeCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "Quantize the float tensors of one .safetensors file, byte-exact with MLX's mx.quantize (CPU)");
  cmd->add_option("input", o->input, "input .safetensors file")->required();
  cmd->add_option("-o,--output", o->output, "output .safetensors file (written atomically)")->required();
  AddQuantArgs(cmd, &o->quant, "type: int2..int8 (affine, group 64), mxfp4, mxfp8, nvfp4");
  cmd->add_option("--tensors", o->tensors, "quantize only tensors whose whole name matches this regex");
  cmd->add_option("--naming", o->naming, "output names: mlx (x.scales, x.biases) or ollama (x.scale, x.bias)")
      ->check(CLI::IsMember({"mlx", "ollama"}));
  cmd->add_flag("--global-scale", o->global_scale,
                "nvfp4: use a per-tensor float32 global scale max|w| (written as <t>.global_scale)");
  cmd->add_option("-j,--jobs", o->threads, "worker threads (0: all cores)");
  cmd->callback([o, status] { *status = RunQuantize(*o); });
}

void RegisterDequantizeCommand(CLI::App& app, Status* status) {
  auto o = std::make_shared<DequantizeCommandOptions>();
  CLI::App* cmd = app.add_subcommand("dequantize", "Dequantize the quantized tensors of one .safetensors file");
  cmd->add_option("input", o->input, "input .safetensors file (mlx or ollama naming)")->required();
  cmd->add_option("-o,--output", o->output, "output .safetensors file (written atomically)")->required();
  cmd->add_option("--dtype", o->dtype, "output dtype (default: MLX's)")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--bits", o->bits, "override the inferred bits");
  cmd->add_option("--group-size", o->group_size, "override the inferred group size");
  cmd->add_option("-j,--jobs", o->threads, "worker threads (0: all cores)");
  cmd->callback([o, status] { *status = RunDequantize(*o); });
}

}  // namespace stquant::cli
