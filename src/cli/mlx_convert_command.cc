// `stquant mlx-convert`: mlx_lm.convert's command line (mlx-lm 0.32.2 convert.py
// configure_parser), flag for flag, carried out by stquant.
#include <memory>

#include "commands.h"
#include "stquant/mlx_convert.h"

namespace stquant::cli {

void RegisterMlxConvertCommand(CLI::App& app, Status* status) {
  auto args = std::make_shared<MlxConvertArgs>();
  CLI::App* cmd = app.add_subcommand(
      "mlx-convert",
      "Convert Hugging Face model to MLX format: mlx_lm.convert's flags and defaults, offline (a repo id is read "
      "from the local Hugging Face cache)");
  cmd->add_option("--hf-path,--model", args->hf_path,
                  "Path to the model. This can be a local path or a Hugging Face Hub model identifier (read from the "
                  "local Hugging Face cache; stquant never downloads).");
  cmd->add_option("--mlx-path", args->mlx_path, "Path to save the MLX model.")->capture_default_str();
  cmd->add_flag("-q,--quantize", args->quantize, "Generate a quantized model.");
  cmd->add_option("--q-group-size", args->q_group_size, "Group size for quantization.");
  cmd->add_option("--q-bits", args->q_bits, "Bits per weight for quantization.");
  cmd->add_option("--q-mode", args->q_mode, "The quantization mode.")
      ->check(CLI::IsMember({"affine", "mxfp4", "nvfp4", "mxfp8"}))
      ->capture_default_str();
  cmd->add_option("--quant-predicate", args->quant_predicate, "Mixed-bit quantization recipe.")
      ->check(CLI::IsMember({"mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"}));
  cmd->add_option("--dtype", args->dtype,
                  "Type to save the non-quantized parameters. Defaults to config.json's `torch_dtype` or the current "
                  "model weights dtype.")
      ->check(CLI::IsMember({"float16", "bfloat16", "float32"}));
  cmd->add_option("--upload-repo", args->upload_repo,
                  "The Hugging Face repo to upload the model to (needs the network: refused; use `hf upload`).");
  cmd->add_option("--revision", args->revision,
                  "stquant's addition (mlx_lm.convert's Python argument): the branch, tag or commit of a repo id.");
  cmd->add_flag("-d,--dequantize", args->dequantize, "Dequantize a quantized model.");
  cmd->add_flag("--trust-remote-code", args->trust_remote_code,
                "Trust remote code when loading tokenizer (accepted; stquant runs no model code).");
  cmd->callback([args, status] {
    Result<ConvertOptions> options = MlxConvertOptions(*args);
    *status = options.ok() ? RunConversion({*options}, {}) : options.status();
  });
}

}  // namespace stquant::cli
