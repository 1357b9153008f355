// The quantization options shared by `convert` and `quantize`: -q TYPE or --mode MODE with
// --bits / --group-size, and --profile.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant::cli {

struct QuantArgs {
  std::string type;  // -q
  std::string mode;  // --mode
  std::optional<int> bits, group_size;
  std::string profile = "mlx-cpu";
};

// Adds the options to `cmd`; `type_help` describes -q for this command.
void AddQuantArgs(CLI::App* cmd, QuantArgs* args, const std::string& type_help);

// The spec the options ask for (validated as MLX's quantize would); nullopt when neither -q nor
// --mode was given (then --bits/--group-size are an error).
Result<std::optional<QuantSpec>> SpecFromArgs(const QuantArgs& args);

}  // namespace stquant::cli
