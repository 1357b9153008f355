// PlanConversion: the pure planning step of `stquant convert` (headers only).
#include <algorithm>
#include <charconv>
#include <limits>
#include <map>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "model/arch.h"
#include "model/arch_table.h"
#include "model/copied_files.h"
#include "model/inventory.h"
#include "model/json_util.h"
#include "model/ollama_policy.h"
#include "model/plan_internal.h"
#include "model/prequant.h"
#include "model/sanitize.h"
#include "model/tensor_view.h"
#include "safetensors/format.h"
#include "stquant/convert.h"
#include "stquant/fp8_block.h"

namespace stquant {

namespace {

using model::Classification;
using model::Inventory;
using model::OllamaExpertGroupPrefix;
using model::OllamaPolicy;
using model::OllamaTypeOf;
using model::OllamaTypeSpec;
using model::SourceKind;
using safetensors::TensorInfo;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool IsFloat(DType d) { return d == DType::kBF16 || d == DType::kF16 || d == DType::kF32; }

// A tensor name for a one-line message (control characters escaped).
std::string P(std::string_view name) { return safetensors::internal::Printable(name); }

// Shapes are planned only when their non-zero dimensions multiply to at most this, so that no
// size computed from a shape (elements x bits, cols x bits) can overflow. Real tensors are far
// below (their bytes exist); only a zero-size tensor can declare more.
constexpr int64_t kMaxNominalElements = int64_t{1} << 56;

// REQUIRES: the shape passed the kMaxNominalElements check.
int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// mlx_lm.convert casts every floating parameter to config "torch_dtype" (or text_config "dtype")
// when it names a float type. Transformers 5 writes "dtype" where transformers 4 wrote
// "torch_dtype": it is read the same way.
std::optional<DType> ConversionDType(const ConvertOptions& options, const nlohmann::json& config) {
  if (options.dtype) return options.dtype;  // mlx_lm.convert --dtype
  std::string name;
  if (auto it = config.find("torch_dtype"); it != config.end() && it->is_string()) {
    name = it->get<std::string>();
  } else if (auto dtype = config.find("dtype"); dtype != config.end() && dtype->is_string()) {
    name = dtype->get<std::string>();
  } else if (auto text = config.find("text_config"); text != config.end() && text->is_object()) {
    if (auto d = text->find("dtype"); d != text->end() && d->is_string()) name = d->get<std::string>();
  }
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float16") return DType::kF16;
  if (name == "float32") return DType::kF32;
  return std::nullopt;
}

// The block-FP8 scale companion of an F8_E4M3 weight, if any.
std::string Fp8ScaleName(const Inventory& inventory, const std::string& weight) {
  for (const char* suffix : {"_scale_inv", "_scale"}) {
    if (inventory.FindInfo(weight + suffix)) return weight + suffix;
  }
  return "";
}

// mlx-lm's mixed recipes (mlx_lm/convert.py mixed_quant_predicate_builder).
struct Recipe {
  int low_bits = 0, high_bits = 6;
};
Result<Recipe> ParseRecipe(const std::string& name) {
  if (name == "mixed_2_6") return Recipe{2, 6};
  if (name == "mixed_3_4") return Recipe{3, 4};
  if (name == "mixed_3_6") return Recipe{3, 6};
  if (name == "mixed_4_6") return Recipe{4, 6};
  return Status::InvalidArgument(
      fmt::format("unknown recipe '{}' (expected mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6)", name));
}

// The layer index of a module path for the recipes: the path component at the position of the
// first numeric component of the first down_proj path; 0 when the path is shorter.
int64_t RecipeLayerIndex(const std::string& path, size_t location) {
  size_t start = 0;
  for (size_t i = 0; i < location; ++i) {
    start = path.find('.', start);
    if (start == std::string::npos) return 0;
    ++start;
  }
  const size_t end = path.find('.', start);
  const std::string part = path.substr(start, end == std::string::npos ? std::string::npos : end - start);
  if (part.empty() || !std::all_of(part.begin(), part.end(), ::isdigit)) return 0;
  // Python's int() has no upper bound; a number past int64 is simply beyond every layer.
  int64_t index = 0;
  const auto [end_ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), index);
  if (ec != std::errc() || end_ptr != part.data() + part.size()) return std::numeric_limits<int64_t>::max();
  return index;
}

// HFFP8WeightBlockSize (ollama-create-spec §2.4): the block size of the six config quantization
// blocks, or nullopt.
std::optional<std::pair<int64_t, int64_t>> Fp8WeightBlockSize(const nlohmann::json& config) {
  std::vector<const nlohmann::json*> blocks;
  for (const nlohmann::json* root : {&config, config.contains("text_config") ? &config["text_config"] : nullptr}) {
    if (!root || !root->is_object()) continue;
    for (const char* key : {"quantization", "quantization_config", "compression_config"}) {
      if (auto it = root->find(key); it != root->end() && it->is_object()) blocks.push_back(&*it);
    }
  }
  auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  auto pair = [](const nlohmann::json& v) -> std::optional<std::pair<int64_t, int64_t>> {
    if (!v.is_array() || v.size() != 2 || !v[0].is_number_integer() || !v[1].is_number_integer()) return std::nullopt;
    return std::make_pair(v[0].get<int64_t>(), v[1].get<int64_t>());
  };
  for (const nlohmann::json* b : blocks) {
    const std::string method = lower(model::JsonString(*b, "quant_method"));
    if (method == "fp8" && b->contains("weight_block_size")) {
      if (auto p = pair((*b)["weight_block_size"])) return p;
    }
    if (method == "compressed-tensors" || model::JsonString(*b, "format") == "float-quantized") {
      if (auto groups = b->find("config_groups"); groups != b->end() && groups->is_object()) {
        for (const auto& [key, g] : groups->items()) {
          if (!g.is_object() || model::JsonString(g, "format") != "float-quantized") continue;
          auto w = g.find("weights");
          if (w == g.end() || !w->is_object() || model::JsonInt(*w, "num_bits", 0) != 8 || model::JsonString(*w, "type") != "float") {
            continue;
          }
          if (auto bs = w->find("block_structure"); bs != w->end()) {
            if (auto p = pair(*bs)) return p;
          }
        }
      }
    }
  }
  return std::nullopt;
}

Status UnsupportedOllamaType(const std::string& what, const QuantSpec& spec) {
  return Status::InvalidArgument(fmt::format(
      "unsupported {} \"{}\"{}: supported types are int4, int8, nvfp4, mxfp4, mxfp8", what, QuantTypeName(spec),
      spec.mode == QuantMode::kAffine ? fmt::format(" (group {})", spec.group_size) : ""));
}

struct QuantChoice {
  std::optional<QuantSpec> spec;
  bool config_entry = false;
  std::string entry_mode;
};

// --override REGEX=TYPE, compiled.
using CompiledOverrides = std::vector<std::pair<std::regex, std::optional<QuantSpec>>>;
Result<CompiledOverrides> CompileOverrides(const std::vector<QuantOverride>& overrides) {
  CompiledOverrides out;
  for (const QuantOverride& o : overrides) {
    try {
      out.emplace_back(std::regex(o.pattern, std::regex::ECMAScript), o.spec);
    } catch (const std::regex_error& e) {
      return Status::InvalidArgument(fmt::format("--override '{}': invalid regular expression: {}", o.pattern, e.what()));
    }
    if (o.spec) STQ_RETURN_IF_ERROR(ValidateQuantSpec(*o.spec).Annotate("--override " + o.pattern));
  }
  return out;
}

// The option checks of a float or block-FP8 source that depend on the layout and policy.
Status CheckLayoutOptions(const ConvertOptions& options, const Inventory& inv, const Classification& kind) {
  const bool ollama_layout = options.layout == OutputLayout::kOllama;
  const bool ollama_policy = options.policy == QuantPolicy::kOllama;
  if (ollama_layout && !ollama_policy) {
    return Status::InvalidArgument("the ollama layout takes the ollama policy only (--policy ollama)");
  }
  if (ollama_policy && !options.recipe.empty()) {
    return Status::InvalidArgument("--recipe is an mlx-lm policy; it does not combine with --policy ollama");
  }
  if (ollama_policy && options.quant && OllamaTypeOf(*options.quant).empty()) {
    return UnsupportedOllamaType("--quantize", *options.quant);
  }
  if (ollama_layout) {
    for (const QuantOverride& o : options.overrides) {
      if (o.spec && OllamaTypeOf(*o.spec).empty()) return UnsupportedOllamaType("--override type", *o.spec);
    }
  }
  if (ollama_layout && kind.kind == SourceKind::kBlockFp8) {
    const auto block = Fp8WeightBlockSize(inv.config());
    if (!block) {
      return Status::InvalidInput(fmt::format("{}: fp8 source model is missing weight_block_size metadata", options.source_dir));
    }
    if (block->first != kFp8BlockSize || block->second != kFp8BlockSize) {
      return Status::Unsupported(fmt::format("{}: unsupported fp8 source block size {}x{} (only 128x128 is supported)",
                                             options.source_dir, block->first, block->second));
    }
  }
  return Status::Ok();
}

// The architecture entry whose rules the mlx layout applies: the table's verified entry for the
// config's model_type; a model_type the table lacks is refused unless
// --allow-unknown-architecture (then the generic rules, with a warning); a refused entry is
// refused with its reason.
Result<const model::ArchEntry*> ChooseArchitecture(const ConvertOptions& options, const Inventory& inv,
                                                   ConversionPlan& plan) {
  STQ_ASSIGN_OR_RETURN(const model::ArchTable* table, model::ArchTable::Builtin());
  const model::ArchRules verdict = model::RulesFor(inv.config());
  plan.architecture = verdict.model_type;
  const std::string shown = verdict.model_type.empty() ? "(none)" : P(verdict.model_type);
  if (verdict.refused) {
    return Status::Unsupported(fmt::format(
        "{}: config.json model_type '{}' is refused by stquant for the mlx layout: {} (see {}; the ollama layout, "
        "--layout ollama, does not use mlx-lm's rules)",
        options.source_dir, shown, verdict.reason, verdict.entry->file));
  }
  if (verdict.known) return verdict.entry;
  if (!options.allow_unknown_architecture) {
    return Status::Unsupported(fmt::format(
        "{}: config.json model_type '{}' is not in stquant's architecture table, so stquant cannot tell what mlx-lm's "
        "model expects (its sanitize rules, which weights it quantizes). Add --allow-unknown-architecture to convert it "
        "with generic rules (every rank >= 2 .weight treated as a Linear/Embedding weight, experts stacked into "
        "switch_mlp; the output may not load in mlx-lm), or add the architecture to the table "
        "(src/model/arch/README.md: one entry and one zoo checkpoint)",
        options.source_dir, shown));
  }
  plan.warnings.push_back(fmt::format(
      "architecture '{}' is not one stquant has checked against mlx-lm; generic rules applied (every rank >= 2 .weight "
      "is treated as a Linear/Embedding, experts stacked into switch_mlp)",
      shown));
  return &table->generic();
}

// The source tensors the plan works on (block-FP8 scale companions and, for the mlx layout,
// static activation scales are consumed, not outputs), after the FP8 checks.
Result<std::vector<model::SourceHeader>> SourceTensors(const ConvertOptions& options, const Inventory& inv) {
  std::set<std::string> companions;
  for (const std::string& name : inv.names()) {
    const TensorInfo* info = inv.FindInfo(name);
    if (info->dtype == DType::kF8E5M2 && EndsWith(name, ".weight")) {
      return Status::Unsupported(fmt::format("{}: tensor '{}' is F8_E5M2; only E4M3 block-FP8 weights are supported",
                                             options.source_dir, P(name)));
    }
    if (info->dtype == DType::kF8E4M3) {
      const std::string scale = Fp8ScaleName(inv, name);
      if (scale.empty()) {
        return Status::InvalidInput(fmt::format(
            "{}: tensor '{}' is F8_E4M3 but has no '{}_scale_inv' or '{}_scale' companion", options.source_dir, P(name),
            P(name), P(name)));
      }
      companions.insert(scale);
    }
  }
  std::vector<model::SourceHeader> out;
  for (const std::string& name : inv.names()) {
    if (companions.count(name)) continue;
    // FP8 activation scales: static-activation inference only (ollama imports every tensor).
    if (options.layout == OutputLayout::kMlx && EndsWith(name, ".input_scale")) continue;
    const TensorInfo* info = inv.FindInfo(name);
    out.push_back({name, info->dtype, info->shape});
  }
  return out;
}

// The ollama layout's grouping (ollama-create-spec §6.2): "<prefix>.<index>.<proj>.weight" of an
// expert group is stacked into "<prefix>.<proj>.weight"; every other tensor is itself.
// `expert_group`: stacked name -> group prefix.
Result<std::vector<model::RuleTensor>> OllamaTensors(const ConvertOptions& options,
                                                      const std::vector<model::SourceHeader>& sources,
                                                      std::map<std::string, std::string>& expert_group) {
  struct Pending {
    std::map<int, const model::SourceHeader*> experts;
    const model::SourceHeader* single = nullptr;
  };
  std::map<std::string, Pending> outputs;
  for (const model::SourceHeader& s : sources) {
    const std::string& name = s.name;
    const std::string prefix = OllamaExpertGroupPrefix(name);
    if (!prefix.empty()) {
      const std::string rest = name.substr(prefix.size() + 1);
      const size_t dot = rest.find('.');
      const std::string index = rest.substr(0, dot);
      if (dot != std::string::npos && dot > 0 && index.size() < 9 && std::all_of(index.begin(), index.end(), ::isdigit)) {
        const std::string proj = rest.substr(dot + 1, rest.size() - dot - 1 - 7);
        if (proj.empty()) {
          return Status::InvalidInput(fmt::format("{}: expert tensor '{}' is not <index>.<projection>.weight",
                                                  options.source_dir, name));
        }
        const std::string stacked = prefix + "." + proj + ".weight";
        outputs[stacked].experts[std::stoi(index)] = &s;
        expert_group[stacked] = prefix;
        continue;
      }
    }
    outputs[name].single = &s;
  }
  std::vector<model::RuleTensor> out;
  for (const auto& [name, pending] : outputs) {
    if (pending.single && !pending.experts.empty()) {
      return Status::InvalidInput(fmt::format("{}: tensor '{}' exists both stacked and as per-expert tensors",
                                              options.source_dir, P(name)));
    }
    model::RuleTensor t;
    t.name = name;
    if (pending.single) {
      t.dtype = pending.single->dtype;
      t.shape = pending.single->shape;
      t.pieces.push_back({pending.single->name, "", ContiguousView(t.shape)});
      out.push_back(std::move(t));
      continue;
    }
    const model::SourceHeader& first = *pending.experts.begin()->second;
    int expected = 0;
    for (const auto& [index, s] : pending.experts) {
      if (index != expected++) {
        return Status::InvalidInput(fmt::format("{}: experts of '{}' are not numbered 0..{} (expert {} missing)",
                                                options.source_dir, P(name), pending.experts.size() - 1, expected - 1));
      }
      if (s->dtype != first.dtype || s->shape != first.shape) {
        return Status::InvalidInput(fmt::format(
            "{}: experts stacked into '{}' differ: '{}' is {} {} but '{}' is {} {}", options.source_dir, P(name),
            P(first.name), DTypeName(first.dtype), fmt::join(first.shape, "x"), P(s->name), DTypeName(s->dtype),
            fmt::join(s->shape, "x")));
      }
      t.pieces.push_back({s->name, "", model::UnsqueezeView(ContiguousView(s->shape))});
    }
    t.dtype = first.dtype;
    t.shape = first.shape;
    t.shape.insert(t.shape.begin(), static_cast<int64_t>(pending.experts.size()));
    t.steps.push_back(fmt::format("stack {} experts ('{}', ...)", pending.experts.size(), first.name));
    out.push_back(std::move(t));
  }
  return out;
}

// A rule tensor's values: its sources (with FP8 scales, checked), transform and dtype. `cast_to`:
// mlx_lm.convert's cast to the config dtype, except for `keep_dtype` names.
Result<PlannedTensor> PlanValues(const ConvertOptions& options, const Inventory& inv, model::RuleTensor rt,
                                 const std::optional<DType>& cast_to, const std::vector<model::TableRegex>& keep_dtype) {
  PlannedTensor t;
  t.name = std::move(rt.name);
  t.shape = std::move(rt.shape);
  t.value_ops = std::move(rt.value_ops);
  t.steps = std::move(rt.steps);
  t.source_dtype = rt.dtype;
  const TensorInfo* first = inv.FindInfo(rt.pieces.front().tensor);
  if (const auto nominal = safetensors::internal::NonZeroElementCount(t.shape); !nominal || *nominal > kMaxNominalElements) {
    return Status::InvalidInput(fmt::format(
        "{}: tensor '{}': shape [{}] is out of range: its non-zero dimensions multiply to more than 2^56 (corrupt "
        "header?)",
        options.source_dir, P(first->name), fmt::join(t.shape, ", ")));
  }
  for (PlannedSource& piece : rt.pieces) {
    const TensorInfo* info = inv.FindInfo(piece.tensor);
    if (info->dtype == DType::kF8E4M3) {
      piece.fp8_scale = Fp8ScaleName(inv, piece.tensor);
      // 2-D weights, or 3-D pre-stacked experts with one [E, sr, sc] scale (ollama-create-spec §6.6).
      if (info->shape.size() != 2 && info->shape.size() != 3) {
        return Status::Unsupported(fmt::format("{}: F8_E4M3 tensor '{}' has rank {}; block-FP8 weights must be 2-D or 3-D",
                                               options.source_dir, P(info->name), info->shape.size()));
      }
      const TensorInfo* sc = inv.FindInfo(piece.fp8_scale);
      std::vector<int64_t> want(info->shape.begin(), info->shape.end() - 2);
      want.push_back((info->shape[info->shape.size() - 2] + kFp8BlockSize - 1) / kFp8BlockSize);
      want.push_back((info->shape.back() + kFp8BlockSize - 1) / kFp8BlockSize);
      if (sc->shape != want || (sc->dtype != DType::kF32 && sc->dtype != DType::kBF16)) {
        return Status::InvalidInput(fmt::format(
            "{}: tensor '{}': unexpected fp8 scale '{}' {} [{}] for weight shape [{}]; want F32 or BF16 [{}]",
            options.source_dir, P(piece.tensor), P(sc->name), DTypeName(sc->dtype), fmt::join(sc->shape, ", "),
            fmt::join(info->shape, ", "), fmt::join(want, ", ")));
      }
    }
    t.sources.push_back(std::move(piece));
  }
  if (t.source_dtype == DType::kF8E4M3) {
    t.transform = TensorTransform::kDecodeFp8;
    t.dtype = DType::kBF16;
  } else {
    t.dtype = t.source_dtype;
  }
  const bool keep = std::any_of(keep_dtype.begin(), keep_dtype.end(), [&](const model::TableRegex& r) { return r.Search(t.name); });
  if (cast_to && IsFloat(t.dtype) && t.dtype != *cast_to && !keep) {
    t.dtype = *cast_to;
    if (t.transform == TensorTransform::kCopy) t.transform = TensorTransform::kCast;
  }
  return t;
}

// mlx-lm's recipes: where the layer index sits in a module path, and the number of layers.
struct RecipeLayers {
  size_t location = 0;
  int64_t num_layers = 0;
};
Result<RecipeLayers> FindRecipeLayers(const ConvertOptions& options, const Inventory& inv,
                                      const std::vector<PlannedTensor>& tensors) {
  std::string down;
  for (const PlannedTensor& t : tensors) {
    if (t.name.find("down_proj") != std::string::npos) {
      down = t.name;
      break;
    }
  }
  if (down.empty()) return Status::InvalidArgument("--recipe: the model has no down_proj layers (as mlx-lm requires)");
  RecipeLayers r;
  size_t start = 0;
  while (true) {
    const size_t end = down.find('.', start);
    const std::string part = down.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) break;
    if (end == std::string::npos) break;
    start = end + 1;
    ++r.location;
  }
  if (auto it = inv.config().find("num_hidden_layers"); it != inv.config().end()) {
    // Bounded, so that 7 * num_layers below cannot overflow.
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > (int64_t{1} << 32)) {
      return Status::InvalidInput(fmt::format("{}: config.json: num_hidden_layers {} is not a layer count (--recipe needs one)",
                                              options.source_dir, P(it->dump())));
    }
    r.num_layers = it->get<int64_t>();
  }
  return r;
}

// The ollama policy's type for each tensor (ollama-create-spec §7, §8), --override first.
Status ChooseOllamaQuant(const ConvertOptions& options, const OllamaPolicy& ollama, const CompiledOverrides& overrides,
                         const std::optional<QuantSpec>& requested, bool fp8_default, std::vector<PlannedTensor>& tensors) {
  for (PlannedTensor& t : tensors) {
    std::optional<QuantSpec> spec;
    bool decided = false;
    if (IsFloat(t.dtype) && t.shape.size() >= 2) {
      for (const auto& [pattern, override_spec] : overrides) {
        if (std::regex_search(t.name, pattern)) {
          spec = override_spec;
          decided = true;
          break;
        }
      }
    }
    // Under the fp8 default only the FP8 weights are converted; other tensors pass through.
    if (!decided && requested && IsFloat(t.dtype) && !(fp8_default && t.transform != TensorTransform::kDecodeFp8)) {
      const std::string type = ollama.Type(t.name, t.shape, OllamaTypeOf(*requested));
      if (!type.empty()) {
        spec = OllamaTypeSpec(type);
        spec->profile = requested->profile;
      }
    }
    if (spec && (t.shape.empty() || t.shape.back() % spec->group_size != 0)) {
      return Status::InvalidArgument(fmt::format("tensor '{}': last dimension {} is not divisible by the group size {} chosen for it",
                                                 t.name, t.shape.empty() ? 0 : t.shape.back(), spec->group_size));
    }
    t.quant = spec;
    t.has_config_entry = spec.has_value() && (!requested || !(*spec == *requested));
    t.entry_mode = spec ? std::string(ModeInfo(spec->mode).name) : "";
  }
  return Status::Ok();
}

// What mlx_lm.convert quantizes: weights of modules with to_quantized (a ".weight" of rank >= 2
// that the entry does not list as not_quantizable) whose last dimension the model-wide group size
// divides; then --override, the recipe or the model's quant_predicate decide.
Status ChooseMlxLmQuant(const ConvertOptions& options, const Inventory& inv, const model::ArchEntry& entry,
                        const nlohmann::json& args_config, const CompiledOverrides& overrides,
                        std::vector<PlannedTensor>& tensors) {
  std::optional<Recipe> recipe;
  RecipeLayers layers;
  if (!options.recipe.empty()) {
    STQ_ASSIGN_OR_RETURN(recipe, ParseRecipe(options.recipe));
    STQ_ASSIGN_OR_RETURN(layers, FindRecipeLayers(options, inv, tensors));
  }
  const model::ArchArgs args(entry, args_config);
  for (PlannedTensor& t : tensors) {
    QuantChoice choice;
    // A last dimension of 0 has no groups to quantize (and would divide by zero below).
    const bool candidate =
        options.quant && EndsWith(t.name, ".weight") && t.shape.size() >= 2 && t.shape.back() > 0 && IsFloat(t.dtype) &&
        std::none_of(entry.not_quantizable.begin(), entry.not_quantizable.end(),
                     [&](const model::TableRegex& r) { return r.Search(t.name); });
    // mlx-lm checks the model-wide group size first, whatever the layer gets.
    if (candidate && t.shape.back() % options.quant->group_size == 0) {
      const std::string path = t.name.substr(0, t.name.size() - 7);
      bool decided = false;
      for (const auto& [pattern, spec] : overrides) {
        if (std::regex_search(t.name, pattern)) {
          choice.spec = spec;
          choice.config_entry = spec.has_value() && !(*spec == *options.quant);
          choice.entry_mode = spec ? std::string(ModeInfo(spec->mode).name) : "";
          decided = true;
          break;
        }
      }
      if (!decided && recipe) {
        const int64_t index = RecipeLayerIndex(path, layers.location);
        const int64_t n = layers.num_layers;
        const bool more_bits = index < n / 8 || index >= 7 * n / 8 || (((index - n / 8) % 3) + 3) % 3 == 2;
        const bool high = ((path.find("v_proj") != std::string::npos || path.find("v_a_proj") != std::string::npos ||
                            path.find("v_b_proj") != std::string::npos || path.find("down_proj") != std::string::npos) &&
                           more_bits) ||
                          path.find("lm_head") != std::string::npos;
        QuantSpec spec = *options.quant;
        spec.bits = high ? recipe->high_bits : recipe->low_bits;
        choice.spec = spec;
        choice.config_entry = true;
        choice.entry_mode = "affine";
        decided = true;
      }
      for (const model::QuantPredicateRule& rule : entry.quant_predicate) {
        if (decided) break;
        std::smatch m;
        if (!rule.match.Search(path, &m)) continue;
        if (rule.condition) {
          std::vector<std::string> groups;
          for (const auto& g : m) groups.push_back(g.str());
          Result<bool> holds = rule.condition->Test(args.Scope(&t.shape, &groups));
          if (!holds.ok()) {
            return holds.status().Annotate(fmt::format("{}: architecture '{}' ({} quant_predicate '{}'): tensor '{}'",
                                                       options.source_dir, entry.model_type, entry.file, rule.match.text,
                                                       P(t.name)));
          }
          if (!*holds) continue;
        }
        decided = true;
        if (rule.quantize) {
          QuantMode mode = QuantMode::kAffine;
          for (QuantMode m2 : {QuantMode::kMxfp4, QuantMode::kMxfp8, QuantMode::kNvfp4}) {
            if (ModeInfo(m2).name == rule.mode) mode = m2;
          }
          choice.spec = QuantSpec{mode, rule.bits, rule.group_size, false, options.quant->profile};
          choice.config_entry = true;
          choice.entry_mode = rule.mode;
        }
      }
      if (!decided) choice.spec = options.quant;
      if (choice.spec && t.shape.back() % choice.spec->group_size != 0) {
        return Status::InvalidArgument(fmt::format("tensor '{}': last dimension {} is not divisible by the group size {} chosen for it",
                                                   P(t.name), t.shape.back(), choice.spec->group_size));
      }
    }
    t.quant = choice.spec;
    t.has_config_entry = choice.config_entry && choice.spec.has_value();
    t.entry_mode = choice.entry_mode;
  }
  return Status::Ok();
}

// Blobs (ollama-create-spec §6.2): one per plain tensor, named after it; a stacked expert group's
// projections share one blob named after the group when they have one type, else one each.
// Order: plain blobs by name, then expert groups by prefix (block-FP8 groups last).
void AssignOllamaBlobs(const std::map<std::string, std::string>& expert_group, std::vector<PlannedTensor>& tensors) {
  std::map<std::string, std::vector<size_t>> groups;
  std::vector<size_t> order;
  for (size_t i = 0; i < tensors.size(); ++i) {
    PlannedTensor& t = tensors[i];
    auto g = expert_group.find(t.name);
    if (g == expert_group.end()) {
      t.blob = t.name;
      order.push_back(i);
    } else {
      groups[g->second].push_back(i);
    }
  }
  for (int fp8_pass = 0; fp8_pass < 2; ++fp8_pass) {
    for (const auto& [prefix, members] : groups) {
      const bool fp8 = tensors[members.front()].transform == TensorTransform::kDecodeFp8;
      if (fp8 != (fp8_pass == 1)) continue;
      bool uniform = true;
      for (size_t m : members) uniform &= tensors[m].quant == tensors[members.front()].quant;
      for (size_t m : members) {
        tensors[m].blob = uniform ? prefix : tensors[m].name;
        order.push_back(m);
      }
    }
  }
  std::vector<PlannedTensor> ordered;
  ordered.reserve(order.size());
  for (size_t i : order) ordered.push_back(std::move(tensors[i]));
  tensors = std::move(ordered);
}

}  // namespace

namespace model {

uint64_t PlannedInputBytes(const Inventory& inv, const PlannedTensor& t) {
  uint64_t bytes = 0;
  for (const PlannedSource& piece : t.sources) {
    const TensorInfo* info = inv.FindInfo(piece.tensor);
    const int64_t elements = ElementCount(piece.view.shape);
    bytes += static_cast<uint64_t>(elements) * DTypeBits(info->dtype) / 8;
    const int64_t total = ElementCount(info->shape);
    if (!piece.fp8_scale.empty() && total > 0) bytes += inv.FindInfo(piece.fp8_scale)->nbytes() * elements / total;
  }
  return bytes;
}

uint64_t PlannedOutputBytes(const PlannedTensor& t) {
  const int64_t elements = Elements(t.shape);
  if (!t.quant) return elements * DTypeBits(t.dtype) / 8;
  const int64_t rows = elements / t.shape.back();
  const int scale_bytes = t.quant->mode == QuantMode::kAffine ? DTypeBits(t.dtype) / 8 : 1;
  return rows * PackedWordsPerRow(*t.quant, t.shape.back()) * 4 +
         rows * GroupsPerRow(*t.quant, t.shape.back()) * scale_bytes * (ModeInfo(t.quant->mode).has_biases ? 2 : 1);
}

Result<PlanContext> BuildPlan(const ConvertOptions& options, bool draft) {
  PlanContext context;
  STQ_ASSIGN_OR_RETURN(Inventory inventory, Inventory::Open(options.source_dir));
  context.inventory = std::make_unique<Inventory>(std::move(inventory));
  const Inventory& inv = *context.inventory;
  ConversionPlan& plan = context.plan;

  const Classification kind = Classify(inv);
  const bool prequant = kind.kind != SourceKind::kFloat && kind.kind != SourceKind::kBlockFp8;
  if (!prequant) STQ_RETURN_IF_ERROR(CheckNoUnknownQuantization(inv));
  plan.source_kind = std::string(SourceKindName(kind.kind));
  STQ_RETURN_IF_ERROR(CheckLayoutOptions(options, inv, kind));
  const bool ollama_layout = options.layout == OutputLayout::kOllama;
  const bool ollama_policy = options.policy == QuantPolicy::kOllama;
  std::optional<OllamaPolicy> ollama;
  if (ollama_policy) {
    STQ_ASSIGN_OR_RETURN(OllamaPolicy p, OllamaPolicy::ForConfig(inv.config()));
    ollama = draft ? p.AsDraft() : p;
    plan.policy = "ollama/" + std::string(ollama->FamilyName());
  } else {
    plan.policy = "mlx-lm";
  }
  if (prequant) {
    STQ_RETURN_IF_ERROR(PlanPrequantConversion(options, kind, ollama ? &*ollama : nullptr, context));  // model/prequant.h
    return context;
  }
  // The ollama layout has its own naming (ollama-create-spec §6.2); the mlx layout follows mlx-lm's
  // model for the architecture.
  const ArchEntry* arch = nullptr;
  if (ollama_layout) {
    plan.architecture = RulesFor(inv.config()).model_type;
  } else {
    STQ_ASSIGN_OR_RETURN(arch, ChooseArchitecture(options, inv, plan));
  }
  if (options.quant) STQ_RETURN_IF_ERROR(ValidateQuantSpec(*options.quant));
  if (!options.recipe.empty() && (!options.quant || options.quant->mode != QuantMode::kAffine)) {
    return Status::InvalidArgument("--recipe needs an affine quantization type (mlx-lm's recipes are affine only)");
  }
  STQ_ASSIGN_OR_RETURN(CompiledOverrides overrides, CompileOverrides(options.overrides));

  // 1. Which source tensors make which output tensor: mlx-lm's sanitize (the table's rules), or
  // ollama's expert groups.
  STQ_ASSIGN_OR_RETURN(std::vector<SourceHeader> sources, SourceTensors(options, inv));
  std::map<std::string, std::string> expert_group;  // ollama: stacked name -> group prefix
  // What mlx-lm's ModelArgs read: the config as stquant writes it (transformers-5 fields added).
  const nlohmann::json args_config = NormalizeConfigForMlxLm(inv.config(), nullptr);
  std::vector<RuleTensor> rule_tensors;
  if (ollama_layout) {
    STQ_ASSIGN_OR_RETURN(rule_tensors, OllamaTensors(options, sources, expert_group));
  } else {
    Result<std::vector<RuleTensor>> sanitized = ApplySanitize(*arch, args_config, sources);
    if (!sanitized.ok()) return sanitized.status().Annotate(options.source_dir);
    rule_tensors = std::move(*sanitized);
  }

  // 2. Each output tensor's values: sources, transform, dtype. mlx_lm.convert casts to the config
  // dtype (but the names the model's cast_predicate excludes); ollama never casts a kept tensor.
  const std::optional<DType> cast_to = ollama_policy ? std::nullopt : ConversionDType(options, inv.config());
  static const std::vector<TableRegex> kNoRegexes;
  for (RuleTensor& rt : rule_tensors) {
    STQ_ASSIGN_OR_RETURN(PlannedTensor t, PlanValues(options, inv, std::move(rt), cast_to, arch ? arch->keep_dtype : kNoRegexes));
    plan.tensors.push_back(std::move(t));
  }

  // 3. Quantization. The ollama policy converts block-FP8 sources to mxfp8 by default.
  const bool fp8_default = ollama_policy && !options.quant && kind.kind == SourceKind::kBlockFp8;
  std::optional<QuantSpec> requested = options.quant;
  if (fp8_default) {
    requested = *OllamaTypeSpec("mxfp8");
    requested->profile = options.profile;
  }
  if (ollama_policy) {
    STQ_RETURN_IF_ERROR(ChooseOllamaQuant(options, *ollama, overrides, requested, fp8_default, plan.tensors));
  } else {
    STQ_ASSIGN_OR_RETURN(const ArchTable* table, ArchTable::Builtin());
    STQ_RETURN_IF_ERROR(ChooseMlxLmQuant(options, inv, arch ? *arch : table->generic(), args_config, overrides, plan.tensors));
  }

  // 4. Sizes.
  for (PlannedTensor& t : plan.tensors) {
    plan.parameters += Elements(t.shape);
    t.output_bytes = PlannedOutputBytes(t);
    plan.output_bytes += t.output_bytes;
    plan.input_bytes += PlannedInputBytes(inv, t);
  }
  plan.default_quant = requested;
  if (ollama_layout) AssignOllamaBlobs(expert_group, plan.tensors);

  // 5. Files copied beside the weights (tokenizer, generation config, chat templates, license, ...).
  STQ_ASSIGN_OR_RETURN(plan.copied_files, model::CopiedFiles(options.source_dir, plan.warnings));
  for (const std::string& w : inv.warnings()) plan.warnings.push_back(w);
  return context;
}

}  // namespace model

}  // namespace stquant
