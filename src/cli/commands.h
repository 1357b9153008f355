// The subcommands of the `stquant` executable. Each lives in its own <name>_command.cc and adds
// itself to the CLI11 app; main.cc only registers them, parses, and reports the outcome.
//
// Contract of a Register function: it adds one subcommand whose callback runs the command and
// stores its outcome in *status (left OK on success). main() prints a non-OK status as
// "stquant: error: <message>" and exits with Status::ExitCode(). Commands print their own
// normal output to stdout and never throw.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "stquant/convert.h"
#include "stquant/status.h"

namespace stquant::cli {

// stquant inspect PATH [--json]
void RegisterInspectCommand(CLI::App& app, Status* status);
// stquant quantize IN -o OUT (-q TYPE | --mode M [--bits B] [--group-size G]) [...]
void RegisterQuantizeCommand(CLI::App& app, Status* status);
// stquant convert SRC_DIR -o OUT_DIR [-q TYPE] [...]
void RegisterConvertCommand(CLI::App& app, Status* status);
// stquant dequantize IN -o OUT [--dtype bf16|f16|f32]
void RegisterDequantizeCommand(CLI::App& app, Status* status);
// stquant ollama gc [--dry-run] | list [PREFIX] | rm NAME... [--models-dir DIR]
void RegisterOllamaCommand(CLI::App& app, Status* status);
// stquant mlx-convert --hf-path SRC [--mlx-path OUT] [-q] [...]: mlx_lm.convert's flags
void RegisterMlxConvertCommand(CLI::App& app, Status* status);

// How RunConversion reports: --dry-run [--json] prints the plan instead; --quiet silences the
// progress bar and the summary.
struct ConversionOutput {
  bool dry_run = false, json = false, quiet = false;
  // --report FILE: the per-tensor quantization error as JSON (stquant/quant_report.h); --verbose:
  // its short table after the summary.
  std::string report;
  bool verbose = false;
};
// Carries out (or with dry_run, plans) a conversion with convert's progress bar and summary;
// shared by `convert` and `mlx-convert`.
// Several outputs (-q int4,nvfp4 -o 'out-{q}') are converted together (ConvertMany).
Status RunConversion(const std::vector<ConvertOptions>& outputs, const ConversionOutput& output);

// The placeholder of -o / --name / --report replaced by each output's type.
inline constexpr std::string_view kTypePlaceholder = "{q}";
// `pattern` with every {q} replaced by `type`.
std::string WithType(std::string pattern, const std::string& type);

}  // namespace stquant::cli
