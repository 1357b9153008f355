// stquant: Hugging Face safetensors checkpoints to MLX-quantized models.
#include <cstdio>
#include <exception>

#include "app.h"

// Nothing escapes main: an exception while building the command line (std::bad_alloc) is an
// internal error, exit 1, like one while running a command (found by clang-tidy).
int main(int argc, char** argv) {
  try {
    return stquant::cli::RunCommandLine(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stquant: error: internal error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "stquant: error: internal error: unknown exception\n");
  }
  return 1;
}
