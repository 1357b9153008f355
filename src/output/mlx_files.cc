#include "output/mlx_files.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

#include "model/arch.h"
#include "util/json_input.h"

namespace stquant::output {

std::string MlxShardName(int index, int count) {
  if (count == 1) return "model.safetensors";
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", index + 1, count);
}

Result<nlohmann::json> MlxConfigBase(const model::Inventory& inventory, const std::vector<std::string>& copied_files) {
  std::optional<nlohmann::json> generation;
  if (std::find(copied_files.begin(), copied_files.end(), "generation_config.json") != copied_files.end()) {
    const std::string path = inventory.path() + "/generation_config.json";
    STQ_ASSIGN_OR_RETURN(std::string text, util::ReadRegularFile(path, util::kJsonConfigLimit));
    // mlx-lm's load_config passes over a JSONDecodeError (and nesting deeper than util::kMaxJsonDepth
    // is no real generation config).
    if (Result<nlohmann::json> parsed = util::ParseJson(text, path, util::kJsonConfigLimit); parsed.ok()) generation = std::move(*parsed);
  }
  return model::NormalizeConfigForMlxLm(inventory.config(), generation ? &*generation : nullptr);
}

}  // namespace stquant::output
