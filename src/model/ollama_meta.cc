#include "model/ollama_meta.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "safetensors/format.h"
#include "util/json_input.h"
#include "util/printable.h"

namespace stquant::model {

namespace fs = std::filesystem;

namespace {

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
bool Has(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

std::vector<std::string> Identifiers(const nlohmann::json& config) {
  std::vector<std::string> ids;
  if (auto it = config.find("architectures"); it != config.end() && it->is_array()) {
    for (const auto& a : *it) {
      if (a.is_string()) ids.push_back(Lower(a.get<std::string>()));
    }
  }
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) ids.push_back(Lower(it->get<std::string>()));
  if (auto llm = config.find("llm_config"); llm != config.end() && llm->is_object()) {
    if (auto it = llm->find("model_type"); it != llm->end() && it->is_string()) ids.push_back(Lower(it->get<std::string>()));
  }
  return ids;
}

// {parser, renderer} of the first identifier that matches a rule of §9.4's table.
std::pair<std::string, std::string> ParserAndRenderer(const nlohmann::json& config, const std::string& tmpl) {
  for (const std::string& id : Identifiers(config)) {
    if (id.rfind("museglimmer", 0) == 0 || id == "muse_glimmer") return {"glimmer", "glimmer"};
    if (Has(id, "laguna")) {
      const char* p = Has(tmpl, "laguna_glm_thinking_v8") ? "poolside-v1" : "laguna";
      return {p, p};
    }
    if (Has(id, "cohere2moe") || Has(id, "cohere2_moe")) return {"cohere", "cohere"};
    if (Has(id, "glm4") || Has(id, "glm-4")) return {"glm-4.7", "glm-4.7"};
    if (Has(id, "deepseek")) return {"deepseek3", "deepseek3"};
    if (Has(id, "gemma4")) return {"gemma4", "gemma4"};
    if (Has(id, "qwen3_5") || Has(id, "qwen3next")) {
      return {"qwen3.5", Has(tmpl, "resolved_reasoning_effort") && Has(tmpl, "preserve_thinking") ? "qwen3.8" : "qwen3.5"};
    }
    if (Has(id, "qwen3")) return {"qwen3", "qwen3-coder"};
    if (Has(id, "nemotronh") || Has(id, "nemotron_h")) {
      const char* p = Has(tmpl, "{reasoning effort: efficient}") ? "nemotron-3.5-nano" : "nemotron-3-nano";
      return {p, p};
    }
  }
  return {"", ""};
}

// Parsers with tool calls / thinking support (ollama's model/parsers).
bool ParserHasTools(const std::string& p) { return !p.empty(); }
bool ParserHasThinking(const std::string& p) { return !p.empty() && p != "functiongemma"; }

bool Present(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  return it != config.end() && !it->is_null();
}

// A semver "x.y.z" (optional "v", optional -pre / +build) -> {x, y, z}.
bool ParseSemver(std::string s, int out[3]) {
  if (!s.empty() && s[0] == 'v') s.erase(0, 1);
  const size_t cut = s.find_first_of("-+");
  if (cut != std::string::npos) s = s.substr(0, cut);
  int n = 0;
  size_t start = 0;
  for (; n < 3; ++n) {
    const size_t dot = s.find('.', start);
    const std::string part = s.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty() || !std::all_of(part.begin(), part.end(), ::isdigit) || part.size() > 9 ||
        (part.size() > 1 && part[0] == '0')) {
      return false;
    }
    out[n] = std::stoi(part);
    if (dot == std::string::npos) {
      ++n;
      break;
    }
    start = dot + 1;
  }
  return n == 3 && s.find('.', start) == std::string::npos;
}

enum class ParamKind { kInt, kFloat, kBool, kStringList, kString };

const std::map<std::string, ParamKind>& ParamKinds() {
  static const std::map<std::string, ParamKind> kinds = {
      {"num_keep", ParamKind::kInt},         {"seed", ParamKind::kInt},
      {"num_predict", ParamKind::kInt},      {"top_k", ParamKind::kInt},
      {"top_p", ParamKind::kFloat},          {"min_p", ParamKind::kFloat},
      {"typical_p", ParamKind::kFloat},      {"repeat_last_n", ParamKind::kInt},
      {"temperature", ParamKind::kFloat},    {"repeat_penalty", ParamKind::kFloat},
      {"presence_penalty", ParamKind::kFloat}, {"frequency_penalty", ParamKind::kFloat},
      {"stop", ParamKind::kStringList},      {"num_ctx", ParamKind::kInt},
      {"num_batch", ParamKind::kInt},        {"num_gpu", ParamKind::kInt},
      {"main_gpu", ParamKind::kInt},         {"use_mmap", ParamKind::kBool},
      {"num_thread", ParamKind::kInt},       {"numa", ParamKind::kBool},
      {"tfs_z", ParamKind::kFloat},
  };
  return kinds;
}

bool SilentlyIgnored(const std::string& key) {
  static const char* kIgnored[] = {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only",
                                   "use_mlock", "mirostat", "mirostat_tau", "mirostat_eta"};
  return std::any_of(std::begin(kIgnored), std::end(kIgnored), [&](const char* k) { return key == k; });
}

// Splits Modelfile text into (command, argument) pairs: "#" comments, """multi-line""" and "quoted"
// arguments.
Result<std::vector<std::pair<std::string, std::string>>> Tokenize(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t i = 0;
  const size_t n = text.size();
  int line = 1;
  while (i < n) {
    while (i < n && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n')) {
      if (text[i] == '\n') ++line;
      ++i;
    }
    if (i >= n) break;
    if (text[i] == '#') {
      while (i < n && text[i] != '\n') ++i;
      continue;
    }
    size_t start = i;
    while (i < n && !std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    std::string command = Lower(text.substr(start, i - start));
    while (i < n && (text[i] == ' ' || text[i] == '\t')) ++i;
    std::string arg;
    if (text.compare(i, 3, "\"\"\"") == 0) {
      const size_t end = text.find("\"\"\"", i + 3);
      if (end == std::string::npos) {
        return Status::InvalidArgument(fmt::format("Modelfile line {}: unterminated \"\"\" string", line));
      }
      arg = text.substr(i + 3, end - i - 3);
      line += static_cast<int>(std::count(arg.begin(), arg.end(), '\n'));
      i = end + 3;
      while (i < n && text[i] != '\n') ++i;
    } else {
      start = i;
      while (i < n && text[i] != '\n') ++i;
      arg = text.substr(start, i - start);
      while (!arg.empty() && std::isspace(static_cast<unsigned char>(arg.back()))) arg.pop_back();
      if (arg.size() >= 2 && arg.front() == '"' && arg.back() == '"') arg = arg.substr(1, arg.size() - 2);
    }
    if (arg.empty() && command != "template" && command != "system") {
      return Status::InvalidArgument(fmt::format("Modelfile line {}: missing value for {}", line, util::Printable(command)));
    }
    out.emplace_back(command, arg);
  }
  return out;
}

}  // namespace

bool IsSafetensorsModelDir(const std::string& dir) {
  std::error_code ec;
  // Any entry named config.json: reading it says what is wrong when it is not a regular file.
  if (!fs::exists(fs::symlink_status(fs::path(dir) / "config.json", ec))) return false;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().filename().string().ends_with(".safetensors")) return true;
  }
  return false;
}

Result<OllamaModelfile> ParseOllamaModelfile(const std::string& text, const std::string& dir) {
  // Its strings end up in JSON (the params and config blobs), which must be UTF-8.
  if (const std::optional<size_t> bad = safetensors::internal::FindInvalidUtf8(text)) {
    return Status::InvalidArgument(fmt::format("Modelfile is not valid UTF-8 (byte 0x{:02x} at offset {})",
                                               static_cast<unsigned char>(text[*bad]), *bad));
  }
  OllamaModelfile mf;
  STQ_ASSIGN_OR_RETURN(auto commands, Tokenize(text));
  auto resolve = [&](const std::string& path) {
    return fs::path(path).is_absolute() ? path : (fs::path(dir) / path).lexically_normal().string();
  };
  for (const auto& [command, arg] : commands) {
    if (command == "from") {
      const std::string local = resolve(arg);
      mf.from = IsSafetensorsModelDir(local) ? local : arg;
    } else if (command == "template") {
      mf.template_text = arg;
    } else if (command == "system") {
      mf.system = arg;
    } else if (command == "license") {
      mf.license = arg;
    } else if (command == "parser") {
      mf.parser = arg;
    } else if (command == "renderer") {
      mf.renderer = arg;
    } else if (command == "draft") {
      std::error_code ec;
      const std::string path = resolve(arg);
      if (!fs::is_directory(path, ec)) {
        return Status::InvalidArgument("DRAFT model references are not supported with --experimental yet: " +
                                       util::Printable(arg));
      }
      mf.draft = path;
    } else if (command == "requires") {
      int have[3], min[3];
      if (!ParseSemver(arg, have)) return Status::InvalidArgument("requires must be a valid semver (e.g. 0.14.0)");
      ParseSemver(kOllamaMinVersion, min);
      if (std::lexicographical_compare(have, have + 3, min, min + 3)) {
        return Status::InvalidArgument(fmt::format("requires {} is below the minimum supported version {} for safetensors models",
                                                   util::Printable(arg), kOllamaMinVersion));
      }
      mf.requires_version = arg[0] == 'v' ? arg.substr(1) : arg;
    } else if (command == "adapter" || command == "message") {
      continue;
    } else if (command == "parameter") {
      const size_t space = arg.find_first_of(" \t");
      // A """quoted""" argument keeps its trailing blanks: "name   " has no value either.
      const size_t value_start = space == std::string::npos ? space : arg.find_first_not_of(" \t", space);
      if (value_start == std::string::npos) {
        return Status::InvalidArgument("PARAMETER needs a name and a value: " + util::Printable(arg));
      }
      const std::string key = Lower(arg.substr(0, space));
      std::string value = arg.substr(value_start);
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
      if (SilentlyIgnored(key)) continue;
      auto kind = ParamKinds().find(key);
      if (kind == ParamKinds().end()) {
        return Status::InvalidArgument(fmt::format("unknown parameter '{}'", util::Printable(key)));
      }
      try {
        size_t used = 0;
        switch (kind->second) {
          case ParamKind::kInt: {
            const long long v = std::stoll(value, &used);
            if (used != value.size()) throw std::invalid_argument(value);
            mf.parameters[key] = v;
            break;
          }
          case ParamKind::kFloat: {
            const float v = std::stof(value, &used);
            if (used != value.size()) throw std::invalid_argument(value);
            mf.parameters[key] = v;
            break;
          }
          case ParamKind::kBool: {
            const std::string v = Lower(value);
            if (v != "true" && v != "false") throw std::invalid_argument(value);
            mf.parameters[key] = v == "true";
            break;
          }
          case ParamKind::kStringList:
            if (!mf.parameters.contains(key)) mf.parameters[key] = nlohmann::ordered_json::array();
            mf.parameters[key].push_back(value);
            break;
          case ParamKind::kString:
            mf.parameters[key] = value;
            break;
        }
      } catch (const std::exception&) {
        return Status::InvalidArgument(
            fmt::format("invalid value for parameter '{}': {}", util::Printable(key), util::Printable(value)));
      }
    } else {
      return Status::InvalidArgument(fmt::format("unknown Modelfile command '{}'", util::Printable(command)));
    }
  }
  return mf;
}

std::string OllamaParserName(const nlohmann::json& config, const std::string& chat_template) {
  return ParserAndRenderer(config, chat_template).first;
}

std::string OllamaRendererName(const nlohmann::json& config, const std::string& chat_template) {
  return ParserAndRenderer(config, chat_template).second;
}

std::vector<std::string> OllamaCapabilities(const nlohmann::json& config, const std::string& tmpl,
                                            const std::string& parser) {
  std::vector<std::string> caps = {"completion"};
  auto has_vision = config.find("has_vision");
  if (Present(config, "vision_config") ||
      (has_vision != config.end() && has_vision->is_boolean() && has_vision->get<bool>())) {
    caps.push_back("vision");
  }
  if (Present(config, "audio_config") || Present(config, "sound_config")) caps.push_back("audio");
  if (ParserHasTools(parser)) caps.push_back("tools");
  bool thinking = (Has(tmpl, "<think>") && Has(tmpl, "</think>")) ||
                  (Has(tmpl, "content.split('</think>')") && !Has(tmpl, "reasoning_content") && !Has(tmpl, "<SPECIAL_12>"));
  std::vector<std::string> ids;
  if (auto it = config.find("architectures"); it != config.end() && it->is_array()) {
    for (const auto& a : *it) {
      if (a.is_string()) ids.push_back(Lower(a.get<std::string>()));
    }
  }
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) ids.push_back(Lower(it->get<std::string>()));
  for (const std::string& id : ids) thinking |= Has(id, "qwen3_5") || Has(id, "qwen3next");
  thinking |= ParserHasThinking(parser);
  if (thinking) caps.push_back("thinking");
  return caps;
}

Result<std::string> ReadChatTemplate(const std::string& dir) {
  auto present = [](const std::string& path) {
    std::error_code ec;
    return fs::exists(fs::symlink_status(path, ec));
  };
  const std::string tokenizer_config = (fs::path(dir) / "tokenizer_config.json").string();
  if (present(tokenizer_config)) {
    STQ_ASSIGN_OR_RETURN(std::string text, util::ReadRegularFile(tokenizer_config, util::kJsonConfigLimit));
    if (Result<nlohmann::json> j = util::ParseJson(text, tokenizer_config, util::kJsonConfigLimit); j.ok() && j->is_object()) {
      if (auto it = j->find("chat_template"); it != j->end() && it->is_string()) return it->get<std::string>();
    }
  }
  const std::string jinja = (fs::path(dir) / "chat_template.jinja").string();
  if (present(jinja)) return util::ReadRegularFile(jinja, util::kTextFileLimit);
  return std::string();
}

}  // namespace stquant::model
