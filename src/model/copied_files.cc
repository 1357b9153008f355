#include "model/copied_files.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <string_view>

#include <fmt/format.h>

#include "util/input_file.h"

namespace stquant::model {

namespace {

// Files that hold weights, which the conversion writes itself (or does not carry over).
constexpr std::array<std::string_view, 8> kWeightSuffixes = {".safetensors", ".bin", ".pt",      ".pth",
                                                            ".gguf",        ".msgpack", ".h5", ".onnx"};
// Read by the conversion and written anew.
constexpr std::array<std::string_view, 3> kRewritten = {"config.json", "model.safetensors.index.json",
                                                        "hf_quant_config.json"};
// What a converted model cannot do without (mlx_lm.load and ollama read them): the tokenizer
// (tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json + merges.txt, ...), the chat
// template and the generation config.
constexpr std::array<std::string_view, 3> kNeededPrefixes = {"tokenizer", "chat_template", "vocab."};
constexpr std::array<std::string_view, 4> kNeededNames = {"generation_config.json", "special_tokens_map.json",
                                                          "added_tokens.json", "merges.txt"};

bool NeededByOutput(std::string_view file) {
  return std::any_of(kNeededPrefixes.begin(), kNeededPrefixes.end(),
                     [&](std::string_view prefix) { return file.starts_with(prefix); }) ||
         std::find(kNeededNames.begin(), kNeededNames.end(), file) != kNeededNames.end();
}

bool Copied(std::string_view file) {
  if (file.empty() || file[0] == '.') return false;
  if (std::find(kRewritten.begin(), kRewritten.end(), file) != kRewritten.end()) return false;
  return std::none_of(kWeightSuffixes.begin(), kWeightSuffixes.end(),
                      [&](std::string_view suffix) { return file.ends_with(suffix); });
}

}  // namespace

Result<std::vector<std::string>> CopiedFiles(const std::string& dir, std::vector<std::string>& warnings) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string file = it->path().filename().string();
    std::error_code type_ec;
    if (!Copied(file) || it->is_directory(type_ec)) continue;
    const Status regular = util::CheckRegularFile(it->path().string());
    if (regular.ok()) {
      files.push_back(file);
    } else if (regular.code() == StatusCode::kIoError) {
      return regular;
    } else if (NeededByOutput(file)) {
      return Status::InvalidInput(regular.message() + ", and the converted model needs this file");
    } else {
      warnings.push_back(fmt::format("{} (left out of the output)", regular.message()));
    }
  }
  if (ec) return Status::IoError(fmt::format("list '{}': {}", dir, ec.message()));
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace stquant::model
