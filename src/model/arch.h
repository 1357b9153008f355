// The architecture verdict and mlx-lm's reading of a config: what the architecture table
// (arch_table.h) says about a checkpoint's model_type, and the config.json mlx-lm 0.32 reads back.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "model/arch_table.h"

namespace stquant::model {

// The table's verdict on a config's model_type (config "model_type", else text_config's).
struct ArchRules {
  std::string model_type;
  // True when the table has a verified entry for the model_type (or one of its aliases): the
  // entry's rules are mlx-lm's, checked against mlx_lm.convert on a zoo checkpoint.
  bool known = false;
  // The table's entry refuses the model_type; `reason` says why (shown to the user).
  bool refused = false;
  std::string reason;
  const ArchEntry* entry = nullptr;  // the table's entry (verified or refused); nullptr: unknown
  bool tie_word_embeddings = false;  // config value (false when absent)
};

// The verdict for `config`. An embedded table that does not parse (ruled out by the tests) reads
// as "unknown".
ArchRules RulesFor(const nlohmann::json& config);

// The generic drops of an already-quantized import into the mlx layout (which does not run the
// table's rules): rotary inv_freq buffers and a tied lm_head.
bool DroppedBySanitize(const ArchRules& rules, std::string_view name);

// "<prefix>.experts.<E>.<rest>" -> {"<prefix>.switch_mlp.<rest>", E}; nullopt otherwise (the
// stacking of already-quantized experts).
struct ExpertName {
  std::string stacked_name;
  int index;
};
std::optional<ExpertName> ParseExpertName(std::string_view name);

// The config mlx-lm reads back. mlx_lm.convert writes the input config; stquant adds, where
// absent, what mlx-lm 0.32's ModelArgs need from a transformers-5 config, in the top-level object
// and in text_config:
//   - num_experts from num_local_experts;
//   - from rope_parameters (or, per layer type, rope_parameters.full_attention): rope_theta,
//     partial_rotary_factor, and rope_scaling (the dict without those two) when its rope_type is
//     not "default";
//   - head_dim = hidden_size // num_attention_heads (when it divides);
//   - the architecture entry's own config fields (ArchEntry::config).
// Also drops what mlx-lm's save_config drops (_name_or_path, vision_config) and adds
// generation_config's eos_token_id as mlx-lm's load_config does.
nlohmann::json NormalizeConfigForMlxLm(nlohmann::json config, const nlohmann::json* generation_config);

}  // namespace stquant::model
