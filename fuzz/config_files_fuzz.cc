// libFuzzer target: the parsers of the small files around the weights, on arbitrary bytes (issue
// 17): util::ParseJson / ParseOrderedJson (config.json, generation and tokenizer configs, the
// index, ollama config blobs: the nesting limit), what convert and the ollama layout do with an
// accepted config (arch.h RulesFor, NormalizeConfigForMlxLm, the ollama parser, renderer and
// capabilities, dumped as they are written), the ollama manifest (output::ParseOllamaManifest) and
// the Modelfile (model::ParseOllamaModelfile; its FROM and DRAFT look at paths under a directory
// that does not exist). Every parser sees every input. fuzz/config_files.dict holds the tokens.
//
// Checks, besides "no crash, no exception, no sanitizer report": errors are InvalidInput (the
// Modelfile's InvalidArgument, as ollama's messages) and one line; an accepted value nests at most
// util::kMaxJsonDepth levels; an accepted manifest names only blobs inside blobs/ (digest
// "sha256:<64 hex>"); what is dumped never throws (strings are valid UTF-8).
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "model/arch.h"
#include "model/ollama_meta.h"
#include "model/ollama_policy.h"
#include "output/ollama_store.h"
#include "util/json_input.h"

namespace {

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

void RequireCleanError(const stquant::Status& status, stquant::StatusCode code) {
  Require(status.code() == code);
  Require(status.message().find('\n') == std::string::npos);
  Require(status.message().find('\r') == std::string::npos);
}

template <class Json>
int Depth(const Json& value) {
  int deepest = 0;
  if (value.is_structured()) {
    for (const auto& member : value) deepest = std::max(deepest, Depth(member));
    return deepest + 1;
  }
  return 0;
}

void JsonConfig(std::string_view text) {
  auto parsed = stquant::util::ParseJson(text, "dir/config.json", stquant::util::kJsonConfigLimit);
  auto ordered = stquant::util::ParseOrderedJson(text, "blobs/config", stquant::util::kJsonConfigLimit);
  Require(parsed.ok() == ordered.ok());
  if (!parsed.ok()) {
    RequireCleanError(parsed.status(), stquant::StatusCode::kInvalidInput);
    return;
  }
  Require(Depth(*parsed) <= stquant::util::kMaxJsonDepth && Depth(*ordered) <= stquant::util::kMaxJsonDepth);
  (void)ordered->dump(2);  // as `inspect --models-dir ... --json` prints a config blob
  const nlohmann::json& config = *parsed;
  if (!config.is_object()) return;
  const stquant::model::ArchRules rules = stquant::model::RulesFor(config);
  (void)stquant::model::DroppedBySanitize(rules, "lm_head.weight");
  // The same text as the generation config too, as convert reads it.
  (void)stquant::model::NormalizeConfigForMlxLm(config, &config).dump(4);
  const std::string chat_template = "{{ messages }} <think></think>";
  const std::string parser = stquant::model::OllamaParserName(config, chat_template);
  (void)stquant::model::OllamaRendererName(config, chat_template);
  (void)stquant::model::OllamaCapabilities(config, chat_template, parser);
  (void)stquant::model::OllamaArchitecture(config);
}

void Manifest(std::string_view text) {
  auto manifest = stquant::output::ParseOllamaManifest(text, "manifests/h/n/m/t");
  if (!manifest.ok()) {
    RequireCleanError(manifest.status(), stquant::StatusCode::kInvalidInput);
    return;
  }
  auto inside_blobs = [](const stquant::output::OllamaLayer& layer) {
    Require(layer.digest.size() == 71 && layer.digest.starts_with("sha256:"));
    Require(layer.digest.find('/') == std::string::npos && layer.digest.find('.') == std::string::npos);
    (void)layer.ToJson().dump();
  };
  if (manifest->config) inside_blobs(*manifest->config);
  for (const auto& layer : manifest->layers) inside_blobs(layer);
}

void Modelfile(const std::string& text) {
  auto modelfile = stquant::model::ParseOllamaModelfile(text, "/nonexistent-stquant-fuzz");
  if (!modelfile.ok()) {
    RequireCleanError(modelfile.status(), stquant::StatusCode::kInvalidArgument);
    return;
  }
  // What the ollama layout writes from it: the params blob and the ConfigV2 strings.
  (void)modelfile->parameters.dump();
  nlohmann::ordered_json config_v2;
  config_v2["parser"] = modelfile->parser;
  config_v2["renderer"] = modelfile->renderer;
  config_v2["requires"] = modelfile->requires_version;
  (void)config_v2.dump();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  JsonConfig(text);
  Manifest(text);
  Modelfile(text);
  return 0;
}
