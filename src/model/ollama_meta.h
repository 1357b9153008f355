// What an ollama import records beside the tensors (ollama-create-spec §1, §9.3, §9.4): the
// Modelfile, the capabilities, parser and renderer of the ConfigV2 config blob. Pure functions.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "stquant/status.h"

namespace stquant::model {

inline constexpr const char* kOllamaMinVersion = "0.19.0";

// A parsed Modelfile (x/create/client ConfigFromModelfile).
struct OllamaModelfile {
  std::string from = ".";  // resolved against the Modelfile's directory when that is a model dir
  std::string draft;       // absolute, or resolved against the Modelfile's directory
  std::string template_text, system, license, parser, renderer, requires_version;
  nlohmann::ordered_json parameters = nlohmann::ordered_json::object();  // api.FormatParams
};

// Parses Modelfile text; `dir` is the Modelfile's directory (for relative FROM / DRAFT). Errors
// are InvalidArgument with ollama's messages (§10): a bad REQUIRES, an unknown PARAMETER, a DRAFT
// that is not a directory ("DRAFT model references are not supported with --experimental yet").
Result<OllamaModelfile> ParseOllamaModelfile(const std::string& text, const std::string& dir);

// A directory with a config.json entry and at least one *.safetensors entry.
bool IsSafetensorsModelDir(const std::string& dir);

// Parser and renderer names (§9.4); "" when no rule matches. `chat_template` is
// tokenizer_config.json's chat_template, else chat_template.jinja.
std::string OllamaParserName(const nlohmann::json& config, const std::string& chat_template);
std::string OllamaRendererName(const nlohmann::json& config, const std::string& chat_template);
// Capabilities in ollama's order: completion, vision, audio, tools, thinking.
std::vector<std::string> OllamaCapabilities(const nlohmann::json& config, const std::string& chat_template,
                                            const std::string& parser);
// The chat template of a model directory (see above); "" when there is none. The files are read
// as util::ReadRegularFile does (a FIFO, a link loop or an oversized file is an error naming it);
// a tokenizer_config.json that is not valid JSON has no template.
Result<std::string> ReadChatTemplate(const std::string& dir);

}  // namespace stquant::model
