// libFuzzer target: the model directory's JSON parsers (model/inventory.h ParseIndexText and
// ParseJsonObjectText) and what the planner reads from a config (arch.h RulesFor,
// NormalizeConfigForMlxLm, and every architecture entry's sanitize rules, whose expressions read
// the config's values, run on a fixed set of tensors), on arbitrary bytes. No I/O.
//
// Checks, besides "no crash, no exception, no sanitizer report": errors are InvalidInput and one
// line; an accepted index names only bare ".safetensors" file names (no '/', no "..", not
// absolute: a shard can never be opened outside the model directory) and has a non-empty
// weight_map.
#include <cstdint>
#include <string>
#include <string_view>

#include "model/arch.h"
#include "model/inventory.h"
#include "model/sanitize.h"

namespace {

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

void RequireCleanError(const stquant::Status& status) {
  Require(status.code() == stquant::StatusCode::kInvalidInput);
  Require(status.message().find('\n') == std::string::npos);
  Require(status.message().find('\r') == std::string::npos);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  auto index = stquant::model::ParseIndexText(text, "dir/model.safetensors.index.json");
  if (!index.ok()) {
    RequireCleanError(index.status());
  } else {
    Require(!index->weight_map.empty());
    for (const auto& [tensor, shard] : index->weight_map) {
      Require(shard.find('/') == std::string::npos && shard.find('\\') == std::string::npos);
      Require(shard.find('\0') == std::string::npos);
      Require(shard != "." && shard != "..");
      Require(shard.size() > 12 && shard.ends_with(".safetensors"));
    }
  }

  auto config = stquant::model::ParseJsonObjectText(text, "dir/config.json", stquant::util::kJsonConfigLimit);
  if (!config.ok()) {
    RequireCleanError(config.status());
    return 0;
  }
  Require(config->is_object());
  const stquant::model::ArchRules rules = stquant::model::RulesFor(*config);
  (void)stquant::model::DroppedBySanitize(rules, "lm_head.weight");
  const nlohmann::json normalized = stquant::model::NormalizeConfigForMlxLm(*config, &*config);
  Require(normalized.is_object());
  // What convert writes: dumping must not throw (strings were validated as UTF-8 by the parser).
  (void)normalized.dump(4);
  using stquant::DType;
  static const std::vector<stquant::model::SourceHeader> kTensors = {
      {"lm_head.weight", DType::kBF16, {8, 4}},
      {"model.norm.weight", DType::kBF16, {4}},
      {"model.layers.0.self_attn.kv_b_proj.weight", DType::kBF16, {96, 32}},
      {"model.layers.0.mlp.experts.0.gate_proj.weight", DType::kBF16, {4, 4}},
      {"model.layers.0.mlp.experts.1.gate_proj.weight", DType::kBF16, {4, 4}},
      {"model.layers.0.block_sparse_moe.experts.0.w1.weight", DType::kBF16, {4, 4}},
      {"model.layers.0.block_sparse_moe.input_linear.weight", DType::kBF16, {4, 8, 4}},
      {"model.layers.0.linear_attn.conv1d.weight", DType::kBF16, {8, 1, 4}},
      {"model.layers.7.input_layernorm.weight", DType::kF32, {4}},
      {"transformer.h.0.attn.c_attn.weight", DType::kBF16, {4, 12}},
  };
  auto table = stquant::model::ArchTable::Builtin();
  Require(table.ok());
  for (const stquant::model::ArchEntry& entry : (*table)->entries()) {
    auto sanitized = stquant::model::ApplySanitize(entry, normalized, kTensors);
    if (!sanitized.ok()) RequireCleanError(sanitized.status());
  }
  return 0;
}
