// The stquant command line: registers the subcommands, parses, reports the outcome.
#include "app.h"

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

namespace stquant::cli {

int RunCommandLine(int argc, char** argv) {
  CLI::App app{"stquant: turn Hugging Face safetensors checkpoints into MLX-quantized models", "stquant"};
  app.require_subcommand(1);
  app.fallthrough(false);
  stquant::Status status;
  stquant::cli::RegisterInspectCommand(app, &status);
  stquant::cli::RegisterConvertCommand(app, &status);
  stquant::cli::RegisterMlxConvertCommand(app, &status);
  stquant::cli::RegisterQuantizeCommand(app, &status);
  stquant::cli::RegisterDequantizeCommand(app, &status);
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

}  // namespace stquant::cli
