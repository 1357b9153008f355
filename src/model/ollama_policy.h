// Ollama's quantization policy for its MLX runner (ollama-create-spec §3, §6.2, §7, §8: the "V2"
// importer, x/create): which type each tensor of a safetensors import is stored as, by tensor
// name and shape only. Types are ollama's canonical names, "" meaning "keep at source precision":
//   "int4", "int8"     affine, group 64
//   "nvfp4"            group 16
//   "mxfp4", "mxfp8"   group 32
// Pure functions of names, shapes and config.json; no weight is read.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant::model {

// quant.Canonical: trims and lowercases; aliases q4/fp4 -> int4, q8/fp8 -> int8; "" for an
// unknown or empty name.
std::string OllamaCanonicalType(std::string_view name);
// The QuantSpec of a canonical type (profile kMlxCpu); nullopt for "" or an unknown name.
std::optional<QuantSpec> OllamaTypeSpec(std::string_view canonical);
// The canonical type of a spec ("" when ollama's runtime has no such type, e.g. int3 or int4 g32).
std::string OllamaTypeOf(const QuantSpec& spec);

// isAligned: shape[-1] divisible by the type's group (16 nvfp4, 64 int4/int8, 32 otherwise); an
// empty shape is never aligned.
bool OllamaAligned(std::span<const int64_t> shape, std::string_view type);
// eightBit: int8 for int4/int8, mxfp8 for every other type.
std::string OllamaEightBit(std::string_view type);
// ShouldQuantize (§7 step 1).
bool OllamaShouldQuantize(std::string_view name);
// ExpertGroupPrefix (§6.2): "<layers prefix><marker>" for a tensor under an expert marker, else "".
std::string OllamaExpertGroupPrefix(std::string_view name);
// layerIndex: the N of the first ".layers.<N>.", or -1.
int OllamaLayerIndex(std::string_view name);
// useMoreBits / useMoreBitsWithMiddleEnd (integer division).
bool UseMoreBitsWithMiddleEnd(int layer, int layers, int middle_end);
bool UseMoreBits(int layer, int layers);

// GetTensorQuantization (§7), the default policy. `promote` false gives Laguna's "base" type:
// the same rules without the lm_head and v/k/down 8-bit promotions.
std::string OllamaDefaultType(std::string_view name, std::span<const int64_t> shape, std::string_view requested,
                              bool promote = true);

// config.json's Architecture(): architectures[0], else model_type, else text_config.model_type.
std::string OllamaArchitecture(const nlohmann::json& config);

// The policy registry (§8), chosen by Architecture().
class OllamaPolicy {
 public:
  enum class Family { kDefault, kQwen35, kGemma4, kLaguna, kGlimmer, kCohere2Moe, kNemotronH };

  // InvalidInput `build quantization policy for "<arch>": <family>: parse config.json: ...` when a
  // field the family reads has the wrong JSON type.
  static Result<OllamaPolicy> ForConfig(const nlohmann::json& config);
  static OllamaPolicy Default() { return OllamaPolicy(); }

  // The type to store `name` as, given the requested (canonical or alias) type; "" keeps it.
  std::string Type(std::string_view name, std::span<const int64_t> shape, std::string_view requested) const;

  Family family() const { return family_; }
  std::string_view FamilyName() const;
  int num_layers() const { return num_layers_; }
  int num_experts() const { return num_experts_; }
  const std::set<int>& dense_layers() const { return dense_layers_; }

  // draftPolicy (§7 "Draft models"): the output head (embed_tokens.weight / lm_head.weight) takes
  // the requested type when aligned, else "", with no 8-bit promotion; the rest as the family.
  OllamaPolicy AsDraft() const {
    OllamaPolicy p = *this;
    p.draft_ = true;
    return p;
  }
  bool draft() const { return draft_; }

 private:
  std::string FamilyType(std::string_view name, std::span<const int64_t> shape, const std::string& q) const;
  Family family_ = Family::kDefault;
  int num_layers_ = 0;
  int num_experts_ = 0;
  std::set<int> dense_layers_;
  bool draft_ = false;
};

}  // namespace stquant::model
