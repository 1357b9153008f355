// The whole `stquant` command line as a function, so that the Python package's `stquant` entry
// point runs exactly the executable's code (src/python). Parses argv, runs the subcommand, prints
// errors as "stquant: error: <message>" and returns the exit code (0, 1, 2 or 3).
#pragma once

namespace stquant::cli {

int RunCommandLine(int argc, char** argv);

}  // namespace stquant::cli
