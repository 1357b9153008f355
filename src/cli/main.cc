// stquant: Hugging Face safetensors checkpoints to MLX-quantized models.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "stquant/status.h"

namespace {

int Fail(const std::string& message, int exit_code) {
  std::fprintf(stderr, "stquant: error: %s\n", message.c_str());
  return exit_code;
}

}  // namespace

namespace {

int Run(int argc, char** argv) {
  CLI::App app{"stquant: turn Hugging Face safetensors checkpoints into MLX-quantized models", "stquant"};
  app.require_subcommand(1);
  app.fallthrough(false);
  stquant::Status status;
  stquant::cli::RegisterInspectCommand(app, &status);
  stquant::cli::RegisterConvertCommand(app, &status);
  stquant::cli::RegisterQuantizeCommand(app, &status);
  stquant::cli::RegisterDequantizeCommand(app, &status);
  stquant::cli::RegisterOllamaCommand(app, &status);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // Usage errors share the exit code of invalid arguments (2).
    return Fail(std::string(e.what()) + " (run 'stquant --help')",
                stquant::Status::InvalidArgument("").ExitCode());
  } catch (const std::exception& e) {
    return Fail(std::string("internal error: ") + e.what(), 1);
  } catch (...) {
    return Fail("internal error: unknown exception", 1);
  }
  if (!status.ok()) return Fail(status.message(), status.ExitCode());
  return 0;
}

}  // namespace

// Nothing escapes main: an exception while building the command line (std::bad_alloc) is an
// internal error, exit 1, like one while running a command (found by clang-tidy).
int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stquant: error: internal error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "stquant: error: internal error: unknown exception\n");
  }
  return 1;
}
