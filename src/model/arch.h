// What mlx-lm does to a checkpoint of a given architecture before quantizing it, restated as
// rules on tensor names (mlx_lm/models/<model_type>.py: sanitize, quant_predicate), so that the
// planner can reproduce mlx_lm.convert without building the model.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "stquant/quant_spec.h"

namespace stquant::model {

struct ArchRules {
  std::string model_type;
  // True when the rules below are mlx-lm's for this architecture (checked against mlx-lm's
  // output in tests); false: generic rules, and the planner warns.
  bool known = false;
  bool tie_word_embeddings = false;
  // The model's own quant_predicate: modules whose path ends with `suffix` are quantized with
  // these parameters (affine, recorded in the config without a "mode").
  struct LayerException {
    std::string suffix;
    int group_size;
    int bits;
  };
  std::vector<LayerException> exceptions;
};

ArchRules RulesFor(const nlohmann::json& config);

// mlx-lm's sanitize: tensors it drops (rotary inv_freq buffers, a tied lm_head).
bool DroppedBySanitize(const ArchRules& rules, std::string_view name);

// "<prefix>.experts.<E>.<rest>" -> {"<prefix>.switch_mlp.<rest>", E}; nullopt otherwise.
struct ExpertName {
  std::string stacked_name;
  int index;
};
std::optional<ExpertName> ParseExpertName(std::string_view name);

// The config mlx-lm reads back: transformers 5 names some fields differently from what mlx-lm's
// model classes take (num_local_experts, rope_parameters.rope_theta); the mlx-lm names are added
// beside them when missing, so that mlx_lm.load opens the output. Also drops what mlx-lm's
// save_config drops (_name_or_path, vision_config) and adds generation_config's eos_token_id as
// mlx-lm's load_config does.
nlohmann::json NormalizeConfigForMlxLm(nlohmann::json config, const nlohmann::json* generation_config);

}  // namespace stquant::model
