// libFuzzer target: the model directory's JSON parsers (model/inventory.h ParseIndexText and
// ParseJsonObjectText) and what the planner reads from a config (arch.h RulesFor,
// NormalizeConfigForMlxLm), on arbitrary bytes. No I/O.
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
  return 0;
}
