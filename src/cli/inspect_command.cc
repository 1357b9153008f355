#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "stquant/inspect.h"

namespace stquant::cli {

namespace {

struct InspectOptions {
  std::string path;
  std::string models_dir;
  bool ollama = false;
  bool json = false;
};

Status RunInspect(const InspectOptions& options) {
  std::string text;
  if (options.ollama || !options.models_dir.empty()) {
    STQ_ASSIGN_OR_RETURN(text, InspectOllamaModel(options.models_dir, options.path, options.json));
  } else {
    STQ_ASSIGN_OR_RETURN(InspectReport report, Inspect(options.path));
    text = options.json ? FormatInspectJson(report) : FormatInspectText(report);
  }
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0) {
    return Status::IoError("write to standard output failed");
  }
  return Status::Ok();
}

}  // namespace

void RegisterInspectCommand(CLI::App& app, Status* status) {
  auto options = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand(
      "inspect", "List the tensors of a .safetensors file or a model directory (headers only)");
  cmd->add_option("path", options->path,
                  "a .safetensors file or a Hugging Face / MLX model directory; with --models-dir or --ollama, the "
                  "name of a model in an ollama store")
      ->required();
  cmd->add_option("--models-dir", options->models_dir, "read PATH as a model name in this ollama model store");
  cmd->add_flag("--ollama", options->ollama,
                "read PATH as a model name in the ollama store ($OLLAMA_MODELS, else ~/.ollama/models)");
  cmd->add_flag("--json", options->json, "print a JSON report instead of text");
  cmd->callback([options, status] { *status = RunInspect(*options); });
}

}  // namespace stquant::cli
