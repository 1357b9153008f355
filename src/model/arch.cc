#include "model/arch.h"

#include <charconv>

#include "model/sanitize.h"

namespace stquant::model {

namespace {

std::string ModelType(const nlohmann::json& config) {
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) return it->get<std::string>();
  if (auto text = config.find("text_config"); text != config.end() && text->is_object()) {
    if (auto it = text->find("model_type"); it != text->end() && it->is_string()) return it->get<std::string>();
  }
  return "";
}

bool PositiveInt(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_number_integer() && it->get<int64_t>() > 0;
}

// The generic part of NormalizeConfigForMlxLm, for one config object.
void AddGenericArgs(nlohmann::json& config) {
  if (!config.contains("num_experts") && config.contains("num_local_experts")) {
    config["num_experts"] = config["num_local_experts"];
  }
  const nlohmann::json* rope = nullptr;
  if (auto it = config.find("rope_parameters"); it != config.end() && it->is_object()) {
    if (it->contains("rope_theta")) {
      rope = &*it;
    } else if (auto full = it->find("full_attention"); full != it->end() && full->is_object()) {
      rope = &*full;
    }
  }
  if (rope) {
    for (const char* key : {"rope_theta", "partial_rotary_factor"}) {
      if (!config.contains(key) && rope->contains(key)) config[key] = (*rope)[key];
    }
    auto type = rope->find("rope_type");
    const bool scaled = type != rope->end() && type->is_string() && *type != "default";
    auto scaling = config.find("rope_scaling");
    if (scaled && (scaling == config.end() || scaling->is_null())) {
      nlohmann::json s = *rope;
      s.erase("rope_theta");
      s.erase("partial_rotary_factor");
      config["rope_scaling"] = s;
    }
  }
  if (!config.contains("head_dim") && PositiveInt(config, "hidden_size") && PositiveInt(config, "num_attention_heads")) {
    const int64_t hidden = config["hidden_size"].get<int64_t>(), heads = config["num_attention_heads"].get<int64_t>();
    if (hidden % heads == 0) config["head_dim"] = hidden / heads;
  }
}

}  // namespace

ArchRules RulesFor(const nlohmann::json& config) {
  ArchRules rules;
  rules.model_type = ModelType(config);
  if (auto it = config.find("tie_word_embeddings"); it != config.end() && it->is_boolean()) {
    rules.tie_word_embeddings = it->get<bool>();
  }
  Result<const ArchTable*> table = ArchTable::Builtin();
  if (!table.ok()) return rules;
  rules.entry = (*table)->Find(rules.model_type);
  if (rules.entry) {
    rules.known = rules.entry->verified;
    rules.refused = !rules.entry->verified;
    rules.reason = rules.entry->reason;
  }
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
  if (!config.is_object()) return config;
  if (generation_config && generation_config->is_object()) {
    // mlx-lm's load_config: a truthy eos_token_id of generation_config.json wins.
    if (auto it = generation_config->find("eos_token_id"); it != generation_config->end()) {
      const bool truthy = !(it->is_null() || (it->is_number() && it->get<double>() == 0) ||
                            (it->is_boolean() && !it->get<bool>()) || (it->is_array() && it->empty()));
      if (truthy) config["eos_token_id"] = *it;
    }
  }
  AddGenericArgs(config);
  if (auto text = config.find("text_config"); text != config.end() && text->is_object()) AddGenericArgs(*text);
  const ArchRules rules = RulesFor(config);
  if (rules.entry) AddConfigFields(*rules.entry, config);
  config.erase("_name_or_path");
  config.erase("vision_config");
  return config;
}

}  // namespace stquant::model
