// Pieces of an mlx-lm model directory shared by the float and the prequantized writers.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/inventory.h"

namespace stquant::output {

// "model.safetensors" for one shard, else "model-0000i-of-0000N.safetensors" (mlx-lm's names).
std::string MlxShardName(int index, int count);

// The source config.json as mlx-lm writes it back (model::NormalizeConfigForMlxLm), with
// generation_config.json's eos_token_id when that file is among `copied_files` (read within
// util::kJsonConfigLimit; invalid JSON is ignored, as mlx-lm does).
Result<nlohmann::json> MlxConfigBase(const model::Inventory& inventory, const std::vector<std::string>& copied_files);

}  // namespace stquant::output
