#include "output/mlx_files.h"

#include <algorithm>
#include <cstdio>
#include <optional>

#include <fmt/format.h>

#include "model/arch.h"

namespace stquant::output {

std::string MlxShardName(int index, int count) {
  if (count == 1) return "model.safetensors";
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", index + 1, count);
}

nlohmann::json MlxConfigBase(const model::Inventory& inventory, const std::vector<std::string>& copied_files) {
  std::optional<nlohmann::json> generation;
  if (std::find(copied_files.begin(), copied_files.end(), "generation_config.json") != copied_files.end()) {
    if (std::FILE* f = std::fopen((inventory.path() + "/generation_config.json").c_str(), "rb")) {
      std::string text;
      char buffer[4096];
      size_t n;
      while ((n = std::fread(buffer, 1, sizeof buffer, f)) > 0) text.append(buffer, n);
      std::fclose(f);
      generation = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    }
  }
  return model::NormalizeConfigForMlxLm(inventory.config(), generation ? &*generation : nullptr);
}

}  // namespace stquant::output
