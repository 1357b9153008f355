#include "model/arch.h"

#include <array>
#include <charconv>

namespace stquant::model {

namespace {

std::string ModelType(const nlohmann::json& config) {
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) return it->get<std::string>();
  if (auto text = config.find("text_config"); text != config.end() && text->is_object()) {
    if (auto it = text->find("model_type"); it != text->end() && it->is_string()) return it->get<std::string>();
  }
  return "";
}

}  // namespace

ArchRules RulesFor(const nlohmann::json& config) {
  ArchRules rules;
  rules.model_type = ModelType(config);
  // Architectures whose mlx-lm sanitize is exactly "drop rotary buffers and a tied lm_head, stack
  // experts into switch_mlp" and whose modules are all Linear / Embedding / norms.
  static constexpr std::array<std::string_view, 5> kKnown = {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe"};
  for (std::string_view known : kKnown) rules.known |= rules.model_type == known;
  if (auto it = config.find("tie_word_embeddings"); it != config.end() && it->is_boolean()) {
    rules.tie_word_embeddings = it->get<bool>();
  }
  if (rules.model_type == "qwen3_moe") rules.exceptions.push_back({"mlp.gate", 64, 8});
  return rules;
}

bool DroppedBySanitize(const ArchRules& rules, std::string_view name) {
  if (name.find("rotary_emb.inv_freq") != std::string_view::npos) return true;
  return rules.tie_word_embeddings && name == "lm_head.weight";
}

std::optional<ExpertName> ParseExpertName(std::string_view name) {
  constexpr std::string_view kMarker = ".experts.";
  const size_t at = name.find(kMarker);
  if (at == std::string_view::npos) return std::nullopt;
  const std::string_view tail = name.substr(at + kMarker.size());
  const size_t dot = tail.find('.');
  if (dot == 0 || dot == std::string_view::npos) return std::nullopt;
  int index = 0;
  auto [end, ec] = std::from_chars(tail.data(), tail.data() + dot, index);
  if (ec != std::errc() || end != tail.data() + dot) return std::nullopt;
  return ExpertName{std::string(name.substr(0, at)) + ".switch_mlp." + std::string(tail.substr(dot + 1)), index};
}

nlohmann::json NormalizeConfigForMlxLm(nlohmann::json config, const nlohmann::json* generation_config) {
  if (generation_config && generation_config->is_object()) {
    // mlx-lm's load_config: a truthy eos_token_id of generation_config.json wins.
    if (auto it = generation_config->find("eos_token_id"); it != generation_config->end()) {
      const bool truthy = !(it->is_null() || (it->is_number() && it->get<double>() == 0) ||
                            (it->is_boolean() && !it->get<bool>()) || (it->is_array() && it->empty()));
      if (truthy) config["eos_token_id"] = *it;
    }
  }
  if (!config.contains("num_experts") && config.contains("num_local_experts")) {
    config["num_experts"] = config["num_local_experts"];
  }
  if (!config.contains("rope_theta")) {
    if (auto rope = config.find("rope_parameters"); rope != config.end() && rope->is_object()) {
      if (auto theta = rope->find("rope_theta"); theta != rope->end()) config["rope_theta"] = *theta;
    }
  }
  config.erase("_name_or_path");
  config.erase("vision_config");
  return config;
}

}  // namespace stquant::model
