#include "model/ollama_policy.h"

#include "stquant/convert.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>

#include <fmt/format.h>

namespace stquant::model {

namespace {

bool Contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }
bool ContainsAny(std::string_view s, std::initializer_list<std::string_view> parts) {
  return std::any_of(parts.begin(), parts.end(), [&](std::string_view p) { return Contains(s, p); });
}
bool EndsWithAny(std::string_view s, std::initializer_list<std::string_view> suffixes) {
  return std::any_of(suffixes.begin(), suffixes.end(), [&](std::string_view p) { return s.ends_with(p); });
}

int64_t Elements(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The §7 "stacked" test: a name under an expert bank (not a companion).
bool IsStacked(std::string_view name) {
  return !EndsWithAny(name, {".bias", ".scale", ".qbias"}) &&
         ContainsAny(name, {".experts.", ".mlp.switch_mlp.", ".mlp.shared_experts.", ".mixer.shared_experts."});
}

bool IsRoutingGate(std::string_view name) {
  return EndsWithAny(name, {".mlp.gate.weight", ".mixer.gate.weight", ".shared_expert_gate.weight", ".router.proj.weight"});
}

bool IsVision(std::string_view name) { return ContainsAny(name, {"vision", "visual"}); }
bool IsAudioTower(std::string_view name) { return ContainsAny(name, {"audio_tower", "embed_audio"}); }
bool IsEmbedTokensWeight(std::string_view name) {
  return name.ends_with("embed_tokens.weight") && !Contains(name, "per_layer");
}
bool IsFourBit(const std::string& q) { return !q.empty() && OllamaEightBit(q) != q; }

// promoteEmbedding: the 8-bit type of q's family when aligned, else "".
std::string PromoteEmbedding(std::span<const int64_t> shape, const std::string& q) {
  std::string e = OllamaEightBit(q);
  return OllamaAligned(shape, e) ? e : "";
}

// sensitiveType.
std::string SensitiveType(bool promote, std::span<const int64_t> shape, const std::string& q) {
  if (promote) {
    std::string e = OllamaEightBit(q);
    if (OllamaAligned(shape, e)) return e;
  }
  return OllamaAligned(shape, q) ? q : "";
}

// Embedding doubling as the head (Gemma4, Glimmer): 8-bit when aligned, else q when aligned.
std::string TiedEmbeddingType(std::span<const int64_t> shape, const std::string& q) {
  if (std::string e = PromoteEmbedding(shape, q); !e.empty()) return e;
  return OllamaAligned(shape, q) ? q : "";
}

// Steps 1-3 of §7: a weight the generic policy would consider at all. The family rules for v/k/down
// projections apply only to these (a ".v_proj.bias" or a 1-D tensor is never quantized).
bool Eligible(std::string_view name, std::span<const int64_t> shape) {
  const bool stacked = IsStacked(name);
  if (!stacked && !OllamaShouldQuantize(name)) return false;
  if (shape.size() != 2 && !(shape.size() == 3 && stacked)) return false;
  return Elements(shape) >= 1024;
}

// An integer config field: absent or null gives 0; another JSON type is a parse error (Go's
// json.Unmarshal into an int).
Status ReadInt(const nlohmann::json& object, const char* key, int* out, const std::string& where) {
  *out = 0;
  if (!object.is_object()) return Status::Ok();
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return Status::Ok();
  if (!it->is_number_integer()) {
    return Status::InvalidInput(fmt::format("{}: parse config.json: field {} is {}, not an integer", where, key,
                                            it->type_name()));
  }
  *out = it->get<int>();
  return Status::Ok();
}

const nlohmann::json& Sub(const nlohmann::json& config, const char* key) {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  auto it = config.find(key);
  return it != config.end() && it->is_object() ? *it : kEmpty;
}

}  // namespace

std::string OllamaCanonicalType(std::string_view name) {
  std::string s;
  for (char c : name) {
    if (!std::isspace(static_cast<unsigned char>(c))) s.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  if (s == "int4" || s == "q4" || s == "fp4") return "int4";
  if (s == "int8" || s == "q8" || s == "fp8") return "int8";
  if (s == "nvfp4" || s == "mxfp4" || s == "mxfp8") return s;
  return "";
}

}  // namespace stquant::model

namespace stquant {

Result<QuantSpec> ParseOllamaQuantType(std::string_view name, std::string_view what) {
  std::optional<QuantSpec> spec = model::OllamaTypeSpec(model::OllamaCanonicalType(name));
  if (!spec) {
    return Status::InvalidArgument(
        fmt::format("unsupported {} \"{}\": supported types are int4, int8, nvfp4, mxfp4, mxfp8", what, name));
  }
  return *spec;
}

}  // namespace stquant

namespace stquant::model {

std::optional<QuantSpec> OllamaTypeSpec(std::string_view canonical) {
  if (canonical == "int4") return QuantSpec{QuantMode::kAffine, 4, 64, false, QuantProfile::kMlxCpu};
  if (canonical == "int8") return QuantSpec{QuantMode::kAffine, 8, 64, false, QuantProfile::kMlxCpu};
  if (canonical == "nvfp4") return QuantSpec{QuantMode::kNvfp4, 4, 16, false, QuantProfile::kMlxCpu};
  if (canonical == "mxfp4") return QuantSpec{QuantMode::kMxfp4, 4, 32, false, QuantProfile::kMlxCpu};
  if (canonical == "mxfp8") return QuantSpec{QuantMode::kMxfp8, 8, 32, false, QuantProfile::kMlxCpu};
  return std::nullopt;
}

std::string OllamaTypeOf(const QuantSpec& spec) {
  const std::string name = QuantTypeName(spec);
  std::optional<QuantSpec> canonical = OllamaTypeSpec(name);
  if (!canonical || canonical->bits != spec.bits || canonical->group_size != spec.group_size) return "";
  return name;
}

bool OllamaAligned(std::span<const int64_t> shape, std::string_view type) {
  if (shape.empty()) return false;
  const int64_t group = type == "nvfp4" ? 16 : (type == "int4" || type == "int8") ? 64 : 32;
  return shape.back() % group == 0;
}

std::string OllamaEightBit(std::string_view type) {
  return type == "int4" || type == "int8" ? "int8" : "mxfp8";
}

bool OllamaShouldQuantize(std::string_view name) {
  if (IsAudioTower(name)) return false;
  if (Contains(name, "embed")) return false;
  if (ContainsAny(name, {"norm", "ln_", "layernorm"})) return false;
  if (name.ends_with(".bias")) return false;
  return name.ends_with(".weight");
}

std::string OllamaExpertGroupPrefix(std::string_view name) {
  if (!name.ends_with(".weight")) return "";
  static constexpr std::array<std::string_view, 6> kMarkers = {
      ".mlp.experts.", ".mlp.shared_experts.", ".mlp.switch_mlp.", ".moe.experts.", ".mixer.experts.",
      ".mixer.shared_experts."};
  size_t at = std::string_view::npos;
  std::string_view marker;
  for (std::string_view m : kMarkers) {
    const size_t found = name.find(m);
    if (found != std::string_view::npos && found < at) {
      at = found;
      marker = m;
    }
  }
  if (at == std::string_view::npos) return "";
  // ^(?:model\.language_model\.backbone\.|model\.language_model\.|language_model(?:\.model)?\.|
  //    language_model\.backbone\.|model\.|backbone\.|mtp\.)?layers\.\d+$
  std::string_view head = name.substr(0, at);
  static constexpr std::array<std::string_view, 8> kPrefixes = {
      "model.language_model.backbone.", "model.language_model.", "language_model.model.", "language_model.backbone.",
      "language_model.", "model.", "backbone.", "mtp."};
  auto is_layers = [](std::string_view s) {
    if (!s.starts_with("layers.")) return false;
    s.remove_prefix(7);
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  bool ok = is_layers(head);
  for (std::string_view p : kPrefixes) ok = ok || (head.starts_with(p) && is_layers(head.substr(p.size())));
  if (!ok) return "";
  return std::string(name.substr(0, at)) + std::string(marker.substr(0, marker.size() - 1));
}

int OllamaLayerIndex(std::string_view name) {
  size_t from = 0;
  while (true) {
    const size_t at = name.find(".layers.", from);
    if (at == std::string_view::npos) return -1;
    const size_t start = at + 8;
    size_t end = start;
    while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
    if (end > start && end < name.size() && name[end] == '.') {
      int value = -1;
      auto [ptr, ec] = std::from_chars(name.data() + start, name.data() + end, value);
      return ec == std::errc() ? value : -1;
    }
    from = at + 1;
  }
}

bool UseMoreBitsWithMiddleEnd(int i, int n, int m) {
  if (i < 0 || n <= 0) return false;
  return i < n / 8 || i >= 7 * n / 8 || (n / 8 <= i && i < m && (i - n / 8) % 3 == 2);
}

bool UseMoreBits(int i, int n) { return UseMoreBitsWithMiddleEnd(i, n, 7 * n / 8); }

std::string OllamaDefaultType(std::string_view name, std::span<const int64_t> shape, std::string_view requested,
                              bool promote) {
  const bool stacked = IsStacked(name);
  if (!stacked && !OllamaShouldQuantize(name)) return "";
  if (shape.size() != 2 && !(shape.size() == 3 && stacked)) return "";
  if (Elements(shape) < 1024) return "";
  const std::string q = OllamaCanonicalType(requested);
  if (q.empty()) return "";
  if (IsRoutingGate(name)) return "";
  if (name.ends_with("lm_head.weight")) {
    const std::string e = promote ? OllamaEightBit(q) : q;
    return OllamaAligned(shape, e) ? e : "";
  }
  if (IsVision(name)) return "";
  if (!OllamaAligned(shape, q)) return "";
  if (promote && (q == "int4" || ((q == "nvfp4" || q == "mxfp4") && !stacked))) {
    if (ContainsAny(name, {".v_proj", ".k_proj", "down_proj"}) && OllamaAligned(shape, OllamaEightBit(q))) {
      return OllamaEightBit(q);
    }
  }
  return q;
}

std::string OllamaArchitecture(const nlohmann::json& config) {
  if (auto it = config.find("architectures"); it != config.end() && it->is_array() && !it->empty() &&
                                              (*it)[0].is_string()) {
    return (*it)[0].get<std::string>();
  }
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) return it->get<std::string>();
  const nlohmann::json& text = Sub(config, "text_config");
  if (auto it = text.find("model_type"); it != text.end() && it->is_string()) return it->get<std::string>();
  return "";
}

Result<OllamaPolicy> OllamaPolicy::ForConfig(const nlohmann::json& config) {
  OllamaPolicy p;
  const std::string arch = OllamaArchitecture(config);
  static const std::set<std::string, std::less<>> kQwen35 = {
      "Qwen3_5ForCausalLM",      "Qwen3_5ForConditionalGeneration",      "Qwen3NextForCausalLM",
      "Qwen3NextForConditionalGeneration", "Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration",
      "Qwen3NextMoeForCausalLM", "Qwen3NextMoeForConditionalGeneration"};
  static const std::set<std::string, std::less<>> kGemma4 = {
      "Gemma4ForCausalLM",          "Gemma4ForConditionalGeneration",        "Gemma4UnifiedForCausalLM",
      "Gemma4UnifiedForConditionalGeneration", "gemma4_unified",           "gemma4_unified_text",
      "Gemma4AssistantForCausalLM", "Gemma4UnifiedAssistantForCausalLM",     "gemma4_unified_assistant"};
  static const std::set<std::string, std::less<>> kNemotron = {"NemotronH_Nano_VL_V2",
                                                               "NemotronH_Nano_Omni_Reasoning_V3",
                                                               "NemotronHForCausalLM"};
  std::string family;
  Status status;
  auto wrap = [&](Status s) {
    return Status::InvalidInput(fmt::format("build quantization policy for \"{}\": {}", arch, s.message()));
  };
  if (kQwen35.count(arch)) {
    p.family_ = Family::kQwen35;
  } else if (kGemma4.count(arch)) {
    p.family_ = Family::kGemma4;
    int n = 0, e = 0, tn = 0, te = 0;
    const nlohmann::json& text = Sub(config, "text_config");
    for (Status s : {ReadInt(config, "num_hidden_layers", &n, "gemma4"), ReadInt(config, "num_experts", &e, "gemma4"),
                     ReadInt(text, "num_hidden_layers", &tn, "gemma4"), ReadInt(text, "num_experts", &te, "gemma4")}) {
      if (!s.ok()) return wrap(s);
    }
    p.num_layers_ = n ? n : tn;
    p.num_experts_ = e ? e : te;
  } else if (arch == "LagunaForCausalLM") {
    p.family_ = Family::kLaguna;
    int n = 0;
    if (Status s = ReadInt(config, "num_hidden_layers", &n, "laguna"); !s.ok()) return wrap(s);
    std::set<int> dense;
    size_t types = 0;
    if (auto it = config.find("mlp_layer_types"); it != config.end() && !it->is_null()) {
      if (!it->is_array()) return wrap(Status::InvalidInput("laguna: parse config.json: mlp_layer_types is not an array"));
      types = it->size();
      for (size_t i = 0; i < it->size(); ++i) {
        if (!(*it)[i].is_string()) return wrap(Status::InvalidInput("laguna: parse config.json: mlp_layer_types[] is not a string"));
        if ((*it)[i].get<std::string>() == "dense") dense.insert(static_cast<int>(i));
      }
    }
    if (auto it = config.find("mlp_only_layers"); it != config.end() && !it->is_null()) {
      if (!it->is_array()) return wrap(Status::InvalidInput("laguna: parse config.json: mlp_only_layers is not an array"));
      for (const auto& v : *it) {
        if (!v.is_number_integer()) return wrap(Status::InvalidInput("laguna: parse config.json: mlp_only_layers[] is not an integer"));
        dense.insert(v.get<int>());
      }
    }
    p.num_layers_ = n ? n : types ? static_cast<int>(types) : 40;
    p.dense_layers_ = dense.empty() ? std::set<int>{0} : dense;
  } else if (arch == "MuseGlimmerForConditionalGeneration") {
    p.family_ = Family::kGlimmer;
    int n = 0, tn = 0;
    if (Status s = ReadInt(config, "num_hidden_layers", &n, "glimmer"); !s.ok()) return wrap(s);
    if (Status s = ReadInt(Sub(config, "text_config"), "num_hidden_layers", &tn, "glimmer"); !s.ok()) return wrap(s);
    p.num_layers_ = n ? n : tn;
  } else if (arch == "Cohere2MoeForCausalLM") {
    p.family_ = Family::kCohere2Moe;
    if (Status s = ReadInt(config, "num_hidden_layers", &p.num_layers_, "cohere2moe"); !s.ok()) return wrap(s);
  } else if (kNemotron.count(arch)) {
    p.family_ = Family::kNemotronH;
    int n = 0, ln = 0;
    if (Status s = ReadInt(config, "num_hidden_layers", &n, "nemotron_h"); !s.ok()) return wrap(s);
    if (Status s = ReadInt(Sub(config, "llm_config"), "num_hidden_layers", &ln, "nemotron_h"); !s.ok()) return wrap(s);
    p.num_layers_ = n ? n : ln;
  }
  return p;
}

std::string_view OllamaPolicy::FamilyName() const {
  switch (family_) {
    case Family::kQwen35: return "qwen35";
    case Family::kGemma4: return "gemma4";
    case Family::kLaguna: return "laguna";
    case Family::kGlimmer: return "glimmer";
    case Family::kCohere2Moe: return "cohere2moe";
    case Family::kNemotronH: return "nemotron_h";
    case Family::kDefault: break;
  }
  return "default";
}

std::string OllamaPolicy::Type(std::string_view name, std::span<const int64_t> shape, std::string_view requested) const {
  const std::string q = OllamaCanonicalType(requested);
  if (q.empty()) return "";
  if (draft_ && EndsWithAny(name, {"embed_tokens.weight", "lm_head.weight"})) {
    return OllamaAligned(shape, q) ? q : "";
  }
  return FamilyType(name, shape, q);
}

std::string OllamaPolicy::FamilyType(std::string_view name, std::span<const int64_t> shape, const std::string& q) const {
  const int layer = OllamaLayerIndex(name);
  const int n = num_layers_;
  switch (family_) {
    case Family::kDefault:
      break;
    case Family::kQwen35:
      if (EndsWithAny(name, {".linear_attn.in_proj_a.weight", ".linear_attn.in_proj_b.weight",
                             ".linear_attn.in_proj_ba.weight"})) {
        return "";
      }
      break;
    case Family::kGemma4: {
      if (IsEmbedTokensWeight(name)) return TiedEmbeddingType(shape, q);
      const bool v = Contains(name, ".v_proj"), k = Contains(name, ".k_proj"), down = Contains(name, "down_proj");
      if ((v || k || down) && !IsVision(name) && !IsAudioTower(name) && IsFourBit(q) && Eligible(name, shape)) {
        bool promote = false;
        if (n > 0) {
          if (num_experts_ == 8 && (v || k)) promote = true;
          else if (k) promote = false;
          else promote = layer >= 0 && UseMoreBits(layer, n);
        }
        return SensitiveType(promote, shape, q);
      }
      break;
    }
    case Family::kGlimmer: {
      if (IsVision(name)) return "";
      if (IsEmbedTokensWeight(name)) return TiedEmbeddingType(shape, q);
      const bool attention = ContainsAny(name, {".self_attn.q_proj", ".self_attn.o_proj", ".self_attn.k_proj",
                                                ".self_attn.v_proj"});
      const bool cadence = ContainsAny(name, {".self_attn.gate_proj", ".self_attn.output_gate_proj", ".mlp.down_proj"});
      if ((attention || cadence) && IsFourBit(q) && Eligible(name, shape)) {
        return SensitiveType(attention || (n > 0 && layer >= 0 && UseMoreBits(layer, n)), shape, q);
      }
      break;
    }
    case Family::kCohere2Moe: {
      if (IsEmbedTokensWeight(name) && shape.size() == 2) return PromoteEmbedding(shape, q);
      if (name.ends_with(".mlp.gate.weight")) return "";
      const bool sensitive = ContainsAny(name, {".v_proj", ".k_proj", "down_proj"});
      if (sensitive && IsFourBit(q) && n > 0 && layer >= 0 && Eligible(name, shape)) {
        return SensitiveType(UseMoreBits(layer, n), shape, q);
      }
      break;
    }
    case Family::kNemotronH: {
      if (name.starts_with("vision_model.") || name.starts_with("mlp1.") || name.starts_with("sound_encoder.") ||
          name.starts_with("sound_projection.")) {
        return "";
      }
      if (EndsWithAny(name, {".mixer.gate.weight", ".mixer.conv1d.weight"})) return "";
      if (EndsWithAny(name, {"embeddings.weight", "lm_head.weight"})) return PromoteEmbedding(shape, q);
      if ((q == "nvfp4" || q == "mxfp4") && Eligible(name, shape)) {
        const bool attention = EndsWithAny(name, {".mixer.q_proj.weight", ".mixer.k_proj.weight",
                                                  ".mixer.v_proj.weight", ".mixer.o_proj.weight"});
        const bool other = EndsWithAny(name, {".mixer.out_proj.weight", ".mixer.down_proj.weight",
                                              ".mixer.shared_experts.down_proj.weight"}) ||
                           (Contains(name, ".mixer.experts.") && name.ends_with(".down_proj.weight"));
        if (attention || other) {
          const bool promote = attention || layer < 0 || UseMoreBits(layer, n);
          if (promote && OllamaAligned(shape, "mxfp8")) return "mxfp8";
          return OllamaAligned(shape, q) ? q : "";
        }
      }
      break;
    }
    case Family::kLaguna: {
      if (q != "nvfp4" && q != "mxfp4" && q != "mxfp8") break;
      if (EndsWithAny(name, {"embed_tokens.weight", "lm_head.weight"})) return PromoteEmbedding(shape, q);
      if (name.ends_with(".mlp.gate.weight")) return "";
      const std::string base = OllamaDefaultType(name, shape, q, /*promote=*/false);
      if (ContainsAny(name, {".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.o_proj",
                             ".self_attn.g_proj"})) {
        return q == "mxfp8" ? "" : base;
      }
      const bool dense_layer = layer >= 0 && dense_layers_.count(layer) > 0;
      if (dense_layer && Contains(name, ".mlp.")) return base;
      const bool routed = Contains(name, ".mlp.experts.");
      const bool shared = Contains(name, ".mlp.shared_experts.") || Contains(name, ".mlp.shared_expert.");
      const bool down = Contains(name, "down_proj");
      const bool cadence = UseMoreBitsWithMiddleEnd(layer, n, n / 2 - 4);
      if (routed && down) {
        if (q == "mxfp8") return cadence ? "" : "mxfp8";
        return base;
      }
      if (shared && down) {
        if (q == "mxfp8") return "";
        if (cadence && !base.empty() && OllamaAligned(shape, "mxfp8")) return "mxfp8";
        return base;
      }
      if (routed || shared) return base;
      return "";  // everything else is kept
    }
  }
  return OllamaDefaultType(name, shape, q);
}

}  // namespace stquant::model
