// The files of a source model directory copied beside the converted weights.
#pragma once

#include <string>
#include <vector>

#include "stquant/status.h"

namespace stquant::model {

// The top-level files of `dir` that a conversion copies into its output, sorted: every regular
// file (symbolic links followed) but the weights, config.json, the index and
// hf_quant_config.json; that is the tokenizer, generation config, chat templates, license, ...
// Hidden files and directories are skipped. An entry that is not a regular file (a FIFO, a socket,
// a device, a dangling symbolic link, a link loop) is never copied: when the converted model needs
// it (the tokenizer, the generation config, a chat template) it is InvalidInput naming the file
// and what it is; otherwise a line saying it was left out is added to `warnings`.
Result<std::vector<std::string>> CopiedFiles(const std::string& dir, std::vector<std::string>& warnings);

}  // namespace stquant::model
