#include "model/prequant.h"

#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/arch.h"
#include "model/copied_files.h"
#include "model/json_util.h"
#include "model/ollama_policy.h"
#include "safetensors/format.h"

namespace stquant::model {

namespace {

using nlohmann::json;
using safetensors::TensorInfo;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
std::string Strip(const std::string& s, std::string_view suffix) { return s.substr(0, s.size() - suffix.size()); }
std::string P(std::string_view name) { return safetensors::internal::Printable(name); }

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
uint64_t Bytes(DType dtype, const std::vector<int64_t>& shape) {
  return static_cast<uint64_t>(Elements(shape)) * DTypeBits(dtype) / 8;
}
std::string Shape(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

// The config's quantization blocks (top level and text_config; quantization, quantization_config,
// compression_config).
std::vector<const json*> QuantBlocks(const json& config) {
  std::vector<const json*> blocks;
  for (const json* root : {&config, config.contains("text_config") ? &config["text_config"] : nullptr}) {
    if (root == nullptr || !root->is_object()) continue;
    for (const char* key : {"quantization", "quantization_config", "compression_config"}) {
      if (auto it = root->find(key); it != root->end() && it->is_object()) blocks.push_back(&*it);
    }
  }
  return blocks;
}

std::string QuantMethod(const Inventory& inv) {
  for (const json* b : QuantBlocks(inv.config())) {
    if (auto it = b->find("quant_method"); it != b->end() && it->is_string()) return Lower(it->get<std::string>());
  }
  return "";
}

const json* CompressedTensorsBlock(const json& config) {
  for (const json* b : QuantBlocks(config)) {
    if (JsonString(*b, "quant_method") == "compressed-tensors") return b;
  }
  for (const json* b : QuantBlocks(config)) {
    if (b->contains("config_groups")) return b;
  }
  return nullptr;
}

bool Is(const Inventory& inv, const std::string& name, DType dtype) {
  const TensorInfo* info = inv.FindInfo(name);
  return info != nullptr && info->dtype == dtype;
}

bool IsScalarF32(const TensorInfo* info) {
  return info != nullptr && info->dtype == DType::kF32 && Elements(info->shape) == 1 && info->shape.size() <= 1;
}

// Which quantization formats a checkpoint's tensors show, each with one example tensor.
std::map<std::string, std::string> FormatEvidence(const Inventory& inv) {
  std::map<std::string, std::string> found;
  auto add = [&](const char* format, const std::string& name) { found.try_emplace(format, name); };
  for (const std::string& name : inv.names()) {
    if (EndsWith(name, ".scales") && Is(inv, Strip(name, ".scales") + ".weight", DType::kU32)) add("mlx", name);
    if (EndsWith(name, ".weight_packed")) add("compressed-tensors", name);
    if (EndsWith(name, ".weight_scale") && Is(inv, Strip(name, "_scale"), DType::kU8) &&
        inv.FindInfo(name + "_2") != nullptr) {
      add("modelopt-nvfp4", name);
    }
    if (EndsWith(name, "_blocks") && inv.FindInfo(Strip(name, "_blocks") + "_scales") != nullptr) {
      add("gpt-oss-mxfp4", name);
    }
    if (EndsWith(name, ".weight") && Is(inv, name, DType::kF8E4M3)) add("block-fp8", name);
    if (EndsWith(name, ".qweight")) add("gptq/awq", name);
  }
  return found;
}

// Activation / KV-cache calibration scales: meaningless to MLX's weight-only kernels.
bool IsActivationScale(std::string_view name) {
  return EndsWith(name, ".input_scale") || EndsWith(name, ".input_global_scale") || EndsWith(name, ".k_scale") ||
         EndsWith(name, ".v_scale") || EndsWith(name, ".output_scale");
}

// One quantized layer of the source, before expert stacking.
struct SourceLayer {
  std::string path;    // module path in the source
  QuantSpec spec;
  std::string weight;  // packed codes
  DType weight_dtype = DType::kU32;
  std::vector<int64_t> weight_shape;  // as output (U32 words)
  std::string scales;
  DType scales_dtype = DType::kU8;
  std::vector<int64_t> scales_shape;
  std::string scalar;  // nvfp4: ModelOpt weight_scale_2 / compressed-tensors weight_global_scale
  bool inverted = false;
  std::string zero_point;  // affine from compressed-tensors, asymmetric
  bool derive_bias = false;
};

struct Builder {
  const Inventory& inv;
  const PrequantOptions& options;
  PrequantPlan plan;
  std::string where;  // the model directory, for messages

  void Add(PrequantTensor t) {
    t.bytes = Bytes(t.dtype, t.shape);
    for (const std::string& s : t.sources) t.source_bytes += inv.FindInfo(s)->nbytes();
    for (const std::string& s : t.aux) {
      if (!s.empty() && t.op == PrequantOp::kAffineBias) t.source_bytes += inv.FindInfo(s)->nbytes();
    }
    plan.input_bytes += t.source_bytes;
    plan.output_bytes += t.bytes;
    plan.tensors.push_back(std::move(t));
  }

  // Groups (expert stacking for mlx-lm): output key -> index -> item.
  template <typename T>
  Result<std::map<std::string, std::map<int, T>>> Group(std::vector<std::pair<std::string, T>> items,
                                                         std::string_view suffix) {
    std::map<std::string, std::map<int, T>> groups;
    for (auto& [key, item] : items) {
      std::string out = key;
      int index = -1;
      if (options.target == PrequantTarget::kMlxLm) {
        if (auto e = ParseExpertName(key + std::string(suffix))) {
          out = e->stacked_name.substr(0, e->stacked_name.size() - suffix.size());
          index = e->index;
        }
      }
      auto& group = groups[out];
      if (!group.try_emplace(index, std::move(item)).second || (index < 0 && group.size() > 1) ||
          (index >= 0 && group.count(-1))) {
        return Status::InvalidInput(
            fmt::format("{}: tensor '{}{}' exists both stacked and per expert (or twice)", where, P(out), suffix));
      }
    }
    for (const auto& [out, group] : groups) {
      int expected = 0;
      for (const auto& [index, item] : group) {
        if (index >= 0 && index != expected) {
          return Status::InvalidInput(fmt::format("{}: experts of '{}' are not numbered 0..{} (expert {} missing)", where,
                                                  P(out), group.size() - 1, expected));
        }
        ++expected;
      }
    }
    return groups;
  }

  // Pass-through tensors (one source each), stacked when per-expert.
  Status AddPassThrough(const std::vector<std::string>& names) {
    std::vector<std::pair<std::string, std::string>> items;
    for (const std::string& n : names) items.emplace_back(n, n);
    STQ_ASSIGN_OR_RETURN(auto groups, Group(std::move(items), ""));
    for (const auto& [out, group] : groups) {
      PrequantTensor t;
      t.name = out;
      const TensorInfo* first = inv.FindInfo(group.begin()->second);
      for (const auto& [index, source] : group) {
        const TensorInfo* info = inv.FindInfo(source);
        if (info->dtype != first->dtype || info->shape != first->shape) {
          return Status::InvalidInput(fmt::format("{}: experts stacked into '{}' differ: '{}' is {} {} but '{}' is {} {}",
                                                  where, P(out), P(first->name), DTypeName(first->dtype),
                                                  Shape(first->shape), P(info->name), DTypeName(info->dtype),
                                                  Shape(info->shape)));
        }
        t.sources.push_back(source);
      }
      t.dtype = first->dtype;
      t.shape = first->shape;
      if (group.begin()->first >= 0) t.shape.insert(t.shape.begin(), static_cast<int64_t>(group.size()));
      Add(std::move(t));
    }
    return Status::Ok();
  }

  Status AddLayers(std::vector<SourceLayer> layers) {
    std::vector<std::pair<std::string, SourceLayer>> items;
    for (SourceLayer& l : layers) items.emplace_back(l.path, std::move(l));
    STQ_ASSIGN_OR_RETURN(auto groups, Group(std::move(items), ".weight"));
    for (auto& [out, group] : groups) {
      const SourceLayer& first = group.begin()->second;
      const bool stacked = group.begin()->first >= 0;
      std::vector<const SourceLayer*> members;
      for (const auto& [index, layer] : group) {
        if (!(layer.spec == first.spec) || layer.weight_shape != first.weight_shape ||
            layer.scales_shape != first.scales_shape || layer.scales_dtype != first.scales_dtype ||
            layer.zero_point.empty() != first.zero_point.empty()) {
          return Status::InvalidInput(fmt::format(
              "{}: experts stacked into '{}' are quantized differently: '{}' and '{}' differ in shape, dtype or "
              "parameters",
              where, P(out), P(first.weight), P(layer.weight)));
        }
        members.push_back(&layer);
      }
      auto lead = [&](std::vector<int64_t> shape) {
        if (stacked) shape.insert(shape.begin(), static_cast<int64_t>(members.size()));
        return shape;
      };
      PrequantLayer pl{out, first.spec};
      const bool nvfp4 = first.spec.mode == QuantMode::kNvfp4 && !first.scalar.empty();
      const bool mlx_global = nvfp4 && options.target == PrequantTarget::kMlxLm && stacked;

      PrequantTensor w;
      w.name = out + ".weight";
      w.role = PrequantRole::kWeight;
      w.layer = out;
      w.dtype = DType::kU32;
      w.shape = lead(first.weight_shape);
      for (const SourceLayer* m : members) w.sources.push_back(m->weight);
      Add(std::move(w));

      PrequantTensor s;
      s.name = out + ".scales";
      s.role = PrequantRole::kScales;
      s.layer = out;
      s.dtype = first.spec.mode == QuantMode::kAffine ? first.scales_dtype : DType::kU8;
      s.shape = lead(first.scales_shape);
      for (const SourceLayer* m : members) s.sources.push_back(m->scales);
      if (nvfp4 && options.target == PrequantTarget::kMlxLm && !stacked) {
        // mlx's QuantizedLinear has no global scale: fold it into the block scales, exactly or not at all.
        s.op = PrequantOp::kFoldScales;
        s.inverted = first.inverted;
        for (const SourceLayer* m : members) s.aux.push_back(m->scalar);
      }
      Add(std::move(s));

      if (first.derive_bias) {
        PrequantTensor b;
        b.name = out + ".biases";
        b.role = PrequantRole::kBiases;
        b.layer = out;
        b.dtype = first.scales_dtype;
        b.shape = lead(first.scales_shape);
        b.op = PrequantOp::kAffineBias;
        b.bits = first.spec.bits;
        for (const SourceLayer* m : members) {
          b.sources.push_back(m->scales);
          b.aux.push_back(m->zero_point);
        }
        Add(std::move(b));
      }
      if (nvfp4 && (mlx_global || options.target == PrequantTarget::kRaw)) {
        PrequantTensor g;
        g.name = out + ".global_scale";
        g.role = PrequantRole::kGlobalScale;
        g.layer = out;
        g.dtype = DType::kF32;
        g.shape = stacked ? std::vector<int64_t>{static_cast<int64_t>(members.size())} : std::vector<int64_t>{};
        g.inverted = first.inverted;
        for (const SourceLayer* m : members) {
          g.sources.push_back(m->scalar);
          g.aux.push_back(m->scales);
        }
        g.op = options.target == PrequantTarget::kRaw
                   ? (first.inverted ? PrequantOp::kReciprocalF32 : PrequantOp::kScalarF32)
                   : PrequantOp::kMlxGlobalScale;
        Add(std::move(g));
        pl.spec.global_scale = true;
      }
      plan.layers.push_back(std::move(pl));
    }
    return Status::Ok();
  }

  // The config block: the most common layer spec as default, others as per-layer entries.
  void MakeQuantizationBlock() {
    std::map<std::tuple<int, int, int>, int> counts;
    for (const PrequantLayer& l : plan.layers) {
      ++counts[{static_cast<int>(l.spec.mode), l.spec.bits, l.spec.group_size}];
    }
    if (counts.empty()) return;
    auto best = std::max_element(counts.begin(), counts.end(),
                                 [](const auto& a, const auto& b) { return a.second < b.second; })->first;
    const QuantMode mode = static_cast<QuantMode>(std::get<0>(best));
    json q = {{"group_size", std::get<2>(best)}, {"bits", std::get<1>(best)}, {"mode", ModeInfo(mode).name}};
    for (const PrequantLayer& l : plan.layers) {
      if (l.spec.mode == mode && l.spec.bits == std::get<1>(best) && l.spec.group_size == std::get<2>(best)) continue;
      json entry = {{"group_size", l.spec.group_size}, {"bits", l.spec.bits}, {"mode", ModeInfo(l.spec.mode).name}};
      if (l.spec.global_scale) entry["global_scale"] = true;
      q[l.path] = entry;
    }
    plan.quantization = q;
  }
};

// An nvfp4 layer from U8 weight (two E2M1 codes per byte, even element in the low nibble, as
// MLX), E4M3 block scales per 16, an F32 scalar.
Result<SourceLayer> Nvfp4Layer(const Inventory& inv, const std::string& where, const std::string& path,
                               const std::string& weight, const std::string& scale, const std::string& scalar,
                               bool inverted, const std::string& format) {
  const TensorInfo* w = inv.FindInfo(weight);
  const TensorInfo* s = inv.FindInfo(scale);
  const TensorInfo* g = inv.FindInfo(scalar);
  if (w->dtype != DType::kU8 || w->shape.size() < 2) {
    return Status::Unsupported(fmt::format("{}: {} tensor '{}' is {} {}; expected U8 [..., out, in/2] (two FP4 codes "
                                           "per byte)",
                                           where, format, P(weight), DTypeName(w->dtype), Shape(w->shape)));
  }
  if (s == nullptr || (s->dtype != DType::kF8E4M3 && s->dtype != DType::kU8)) {
    return Status::InvalidInput(fmt::format("{}: {} layer '{}': block scale '{}' missing or not F8_E4M3", where, format,
                                            P(path), P(scale)));
  }
  if (!IsScalarF32(g)) {
    return Status::InvalidInput(fmt::format("{}: {} layer '{}': global scale '{}' missing or not an F32 scalar", where,
                                            format, P(path), P(scalar)));
  }
  const int64_t in = w->shape.back() * 2;
  std::vector<int64_t> want_scales(w->shape.begin(), w->shape.end() - 1);
  want_scales.push_back(in / 16);
  if (in % 32 != 0 || s->shape != want_scales) {
    return Status::InvalidInput(fmt::format(
        "{}: {} layer '{}': weight '{}' {} and block scale '{}' {} do not fit NVFP4 group size 16 (want scales {}, "
        "input dimension a multiple of 32)",
        where, format, P(path), P(weight), Shape(w->shape), P(scale), Shape(s->shape), Shape(want_scales)));
  }
  SourceLayer l;
  l.path = path;
  l.spec = QuantSpec{QuantMode::kNvfp4, 4, 16, false, QuantProfile::kMlxCpu};
  l.weight = weight;
  l.weight_shape = w->shape;
  l.weight_shape.back() = in / 8;
  l.scales = scale;
  l.scales_shape = s->shape;
  l.scalar = scalar;
  l.inverted = inverted;
  return l;
}

Status PlanMlx(Builder& b) {
  Result<std::vector<MlxQuantizedTensor>> found = FindMlxQuantized(b.inv);
  if (!found.ok()) return found.status().Annotate(b.where);
  const std::vector<MlxQuantizedTensor>& layers = *found;
  for (const MlxQuantizedTensor& q : layers) {
    STQ_ASSIGN_OR_RETURN(QuantMode mode, ParseQuantMode(q.params.mode));
    b.plan.layers.push_back({q.base, QuantSpec{mode, q.params.bits, q.params.group_size, false, QuantProfile::kMlxCpu}});
    if (b.inv.FindInfo(q.base + ".global_scale")) b.plan.layers.back().spec.global_scale = true;
  }
  // Re-shard and copy: every tensor as it is, the config as it is.
  for (const std::string& name : b.inv.names()) {
    PrequantTensor t;
    t.name = name;
    const TensorInfo* info = b.inv.FindInfo(name);
    t.dtype = info->dtype;
    t.shape = info->shape;
    t.sources = {name};
    for (const MlxQuantizedTensor& q : layers) {
      if (name.rfind(q.base + ".", 0) != 0) continue;
      const std::string rest = name.substr(q.base.size() + 1);
      t.layer = q.base;
      t.role = rest == "weight" ? PrequantRole::kWeight
               : rest == "scales" ? PrequantRole::kScales
               : rest == "biases" ? PrequantRole::kBiases
               : rest == "global_scale" ? PrequantRole::kGlobalScale
                                        : PrequantRole::kTensor;
      if (t.role == PrequantRole::kTensor) t.layer.clear();
    }
    b.Add(std::move(t));
  }
  b.plan.keep_config = true;
  b.plan.format = "mlx";
  b.plan.notes.push_back("MLX-quantized source: tensors copied unchanged and re-sharded, config.json kept");
  return Status::Ok();
}

Status PlanModelOpt(Builder& b) {
  const Inventory& inv = b.inv;
  if (inv.hf_quant_config()) {
    const json* q = &*inv.hf_quant_config();
    if (auto it = q->find("quantization"); it != q->end() && it->is_object()) q = &*it;
    const std::string algo = JsonString(*q, "quant_algo");
    if (!algo.empty() && algo != "NVFP4") {
      return Status::Unsupported(fmt::format("{}: hf_quant_config.json: ModelOpt quant_algo '{}' is not supported (only "
                                             "NVFP4)",
                                             b.where, P(algo)));
    }
    if (auto gs = q->find("group_size"); gs != q->end() && !(gs->is_number_integer() && gs->get<int>() == 16)) {
      return Status::Unsupported(fmt::format("{}: hf_quant_config.json: ModelOpt NVFP4 group_size {} (MLX nvfp4 is 16)",
                                             b.where, P(gs->dump())));
    }
  }
  std::set<std::string> consumed;
  std::vector<SourceLayer> layers;
  for (const std::string& name : inv.names()) {
    if (!EndsWith(name, ".weight_scale_2")) continue;
    const std::string weight = Strip(name, "_scale_2");
    const std::string path = Strip(weight, ".weight");
    if (!inv.FindInfo(weight)) {
      return Status::InvalidInput(fmt::format("{}: ModelOpt '{}' has no weight '{}'", b.where, P(name), P(weight)));
    }
    STQ_ASSIGN_OR_RETURN(SourceLayer l, Nvfp4Layer(inv, b.where, path, weight, weight + "_scale", name, false,
                                                   "ModelOpt NVFP4"));
    consumed.insert({weight, weight + "_scale", name});
    layers.push_back(std::move(l));
  }
  if (layers.empty()) {
    return Status::InvalidInput(fmt::format("{}: ModelOpt NVFP4 checkpoint without any *.weight_scale_2 layer", b.where));
  }
  b.plan.format = "modelopt NVFP4 (group size 16)";
  std::vector<std::string> rest;
  for (const std::string& name : inv.names()) {
    if (consumed.count(name) || IsActivationScale(name)) continue;
    if (EndsWith(name, ".weight_scale") || EndsWith(name, ".weight_scale_2")) {
      return Status::InvalidInput(fmt::format("{}: ModelOpt scale '{}' has no NVFP4 weight beside it", b.where, P(name)));
    }
    rest.push_back(name);
  }
  STQ_RETURN_IF_ERROR(b.AddLayers(std::move(layers)));
  return b.AddPassThrough(rest);
}

Status PlanCompressedTensors(Builder& b) {
  const Inventory& inv = b.inv;
  const json* block = CompressedTensorsBlock(inv.config());
  if (block == nullptr) {
    return Status::InvalidInput(fmt::format(
        "{}: compressed-tensors tensors (*.weight_packed) without a config.json quantization_config", b.where));
  }
  std::string format = JsonString(*block, "format");
  // Per-group weight arguments (num_bits, symmetric, strategy, group_size) and format.
  struct Args {
    std::string format;
    int bits = 0;
    bool symmetric = true;
    std::string strategy, type;
    int group_size = 0;
  };
  std::vector<Args> groups;
  if (auto cg = block->find("config_groups"); cg != block->end() && cg->is_object()) {
    for (const auto& [key, g] : cg->items()) {
      if (!g.is_object()) continue;
      Args a;
      a.format = JsonString(g, "format", format);
      if (auto w = g.find("weights"); w != g.end() && w->is_object()) {
        a.bits = JsonInt(*w, "num_bits", 0);
        a.symmetric = JsonBool(*w, "symmetric", true);
        a.strategy = (*w)["strategy"].is_string() ? (*w)["strategy"].get<std::string>() : "";
        a.type = (*w)["type"].is_string() ? (*w)["type"].get<std::string>() : "";
        a.group_size = (*w)["group_size"].is_number_integer() ? (*w)["group_size"].get<int>() : 0;
        if (w->value("actorder", json()).is_string()) {
          return Status::Unsupported(fmt::format("{}: compressed-tensors group '{}' uses activation ordering (actorder); "
                                                 "MLX groups are contiguous, so it cannot be imported",
                                                 b.where, P(key)));
        }
      }
      groups.push_back(a);
    }
  }
  if (format.empty() && !groups.empty()) format = groups.front().format;
  for (const Args& a : groups) {
    if (a.format != format) {
      return Status::Unsupported(fmt::format("{}: compressed-tensors config mixes formats '{}' and '{}'", b.where,
                                             P(format), P(a.format)));
    }
  }
  const std::string first_packed = [&] {
    for (const std::string& n : inv.names()) {
      if (EndsWith(n, ".weight_packed")) return n;
    }
    return std::string();
  }();
  if (format != "nvfp4-pack-quantized" && format != "pack-quantized") {
    return Status::Unsupported(fmt::format(
        "{}: compressed-tensors format '{}' (tensor '{}') is not supported: stquant imports nvfp4-pack-quantized and "
        "pack-quantized (int2/4/8); dequantize to bf16 first",
        b.where, P(format.empty() ? "(none)" : format), P(first_packed)));
  }
  std::set<std::string> consumed;
  std::vector<SourceLayer> layers;
  for (const std::string& name : inv.names()) {
    if (!EndsWith(name, ".weight_packed")) continue;
    const std::string base = Strip(name, ".weight_packed");
    if (inv.FindInfo(base + ".weight_g_idx")) {
      return Status::Unsupported(fmt::format("{}: compressed-tensors layer '{}' has '{}.weight_g_idx' (activation "
                                             "ordering); MLX groups are contiguous, so it cannot be imported",
                                             b.where, P(base), P(base)));
    }
    if (format == "nvfp4-pack-quantized") {
      STQ_ASSIGN_OR_RETURN(SourceLayer l, Nvfp4Layer(inv, b.where, base, name, base + ".weight_scale",
                                                     base + ".weight_global_scale", true,
                                                     "compressed-tensors nvfp4-pack-quantized"));
      consumed.insert({name, base + ".weight_scale", base + ".weight_global_scale"});
      layers.push_back(std::move(l));
      continue;
    }
    // pack-quantized: int32 words of 32/bits codes, LSB first, each code q + 2^(bits-1).
    const TensorInfo* w = inv.FindInfo(name);
    const TensorInfo* s = inv.FindInfo(base + ".weight_scale");
    if (w->dtype != DType::kI32 || w->shape.size() != 2) {
      return Status::InvalidInput(fmt::format("{}: compressed-tensors tensor '{}' is {} {}; expected I32 [out, in*bits/32]",
                                              b.where, P(name), DTypeName(w->dtype), Shape(w->shape)));
    }
    if (s == nullptr || !IsFloatingDType(s->dtype) || s->dtype == DType::kF64 || s->shape.size() != 2 ||
        s->shape[0] != w->shape[0] || s->shape[1] <= 0) {
      return Status::InvalidInput(fmt::format("{}: compressed-tensors layer '{}': weight_scale missing or not a "
                                              "BF16/F16/F32 [out, groups] tensor",
                                              b.where, P(base)));
    }
    std::optional<Args> chosen;
    for (const Args& a : groups) {
      if (a.bits != 2 && a.bits != 4 && a.bits != 8) continue;
      const int64_t in = w->shape[1] * 32 / a.bits;
      const int64_t gs = a.strategy == "channel" ? in : a.group_size;
      if (gs > 0 && in % gs == 0 && in / gs == s->shape[1]) {
        chosen = a;
        chosen->group_size = static_cast<int>(gs);
        break;
      }
    }
    if (!chosen) {
      return Status::Unsupported(fmt::format(
          "{}: compressed-tensors layer '{}': packed {} with scales {} fits no config group with num_bits 2/4/8 and a "
          "group or channel strategy",
          b.where, P(base), Shape(w->shape), Shape(s->shape)));
    }
    if (chosen->type != "int" && !chosen->type.empty()) {
      return Status::Unsupported(fmt::format("{}: compressed-tensors layer '{}': pack-quantized type '{}' (only int)",
                                             b.where, P(base), P(chosen->type)));
    }
    const auto& allowed = ModeInfo(QuantMode::kAffine).allowed_group_sizes;
    if (std::find(allowed.begin(), allowed.end(), chosen->group_size) == allowed.end()) {
      return Status::Unsupported(fmt::format(
          "{}: compressed-tensors layer '{}': group size {} is not an MLX affine group size (32, 64, 128)", b.where,
          P(base), chosen->group_size));
    }
    SourceLayer l;
    l.path = base;
    l.spec = QuantSpec{QuantMode::kAffine, chosen->bits, chosen->group_size, false, QuantProfile::kMlxCpu};
    l.weight = name;
    l.weight_shape = w->shape;
    l.scales = base + ".weight_scale";
    l.scales_dtype = s->dtype;
    l.scales_shape = s->shape;
    l.derive_bias = true;
    consumed.insert({name, base + ".weight_scale", base + ".weight_shape"});
    if (!chosen->symmetric) {
      const TensorInfo* zp = inv.FindInfo(base + ".weight_zero_point");
      const int64_t pack = 32 / chosen->bits;
      if (zp == nullptr || zp->dtype != DType::kI32 || zp->shape.size() != 2 ||
          zp->shape[0] != (w->shape[0] + pack - 1) / pack || zp->shape[1] != s->shape[1]) {
        return Status::InvalidInput(fmt::format(
            "{}: compressed-tensors asymmetric layer '{}': weight_zero_point missing or not I32 [{}, {}] (packed along "
            "the output dimension)",
            b.where, P(base), (w->shape[0] + pack - 1) / pack, s->shape[1]));
      }
      l.zero_point = base + ".weight_zero_point";
      consumed.insert(l.zero_point);
    } else if (inv.FindInfo(base + ".weight_zero_point")) {
      consumed.insert(base + ".weight_zero_point");  // symmetric: all zero, not read
    }
    layers.push_back(std::move(l));
  }
  if (layers.empty()) return Status::InvalidInput(fmt::format("{}: compressed-tensors checkpoint without *.weight_packed", b.where));
  if (format == "nvfp4-pack-quantized") {
    b.plan.format = "compressed-tensors nvfp4-pack-quantized";
  } else {
    b.plan.format = fmt::format("compressed-tensors pack-quantized int{} (group {}, {})", layers.front().spec.bits,
                                layers.front().spec.group_size,
                                layers.front().zero_point.empty() ? "symmetric" : "asymmetric");
  }
  std::vector<std::string> rest;
  for (const std::string& name : inv.names()) {
    if (consumed.count(name) || IsActivationScale(name)) continue;
    if (EndsWith(name, ".weight_scale") || EndsWith(name, ".weight_zero_point") || EndsWith(name, ".weight_shape") ||
        EndsWith(name, ".weight_global_scale")) {
      return Status::InvalidInput(fmt::format("{}: compressed-tensors tensor '{}' has no *.weight_packed beside it",
                                              b.where, P(name)));
    }
    rest.push_back(name);
  }
  STQ_RETURN_IF_ERROR(b.AddLayers(std::move(layers)));
  return b.AddPassThrough(rest);
}

// OpenAI gpt-oss: "<p>_blocks" U8 [E, rows, G, 16] (32 FP4 codes per block, even element in the low
// nibble) and "<p>_scales" U8 [E, rows, G] (E8M0): MLX mxfp4 with the words of a row contiguous.
// mlx-lm's gpt_oss.sanitize splits the interleaved gate_up_proj rows (even: gate, odd: up).
Status PlanGptOss(Builder& b) {
  const Inventory& inv = b.inv;
  std::set<std::string> consumed;
  std::vector<std::string> rest;
  for (const std::string& name : inv.names()) {
    if (!EndsWith(name, "_blocks")) continue;
    const std::string prefix = Strip(name, "_blocks");
    const TensorInfo* blocks = inv.FindInfo(name);
    const TensorInfo* scales = inv.FindInfo(prefix + "_scales");
    if (scales == nullptr) {
      return Status::InvalidInput(fmt::format("{}: gpt-oss MXFP4 tensor '{}' has no '{}_scales'", b.where, P(name), P(prefix)));
    }
    const auto& bs = blocks->shape;
    if (blocks->dtype != DType::kU8 || scales->dtype != DType::kU8 || bs.size() < 3 || bs.back() != 16 ||
        scales->shape != std::vector<int64_t>(bs.begin(), bs.end() - 1)) {
      return Status::InvalidInput(fmt::format(
          "{}: gpt-oss MXFP4 '{}' {} {} with scales {} {}: expected U8 [..., rows, groups, 16] and U8 [..., rows, groups]",
          b.where, P(name), DTypeName(blocks->dtype), Shape(bs), DTypeName(scales->dtype), Shape(scales->shape)));
    }
    consumed.insert({name, prefix + "_scales"});
    std::vector<int64_t> wshape(bs.begin(), bs.end() - 2);
    wshape.push_back(bs[bs.size() - 2] * 4);
    const std::vector<int64_t> sshape = scales->shape;
    const int row_axis = static_cast<int>(bs.size()) - 3;
    std::vector<std::pair<std::string, int64_t>> outs;  // module path, row offset (-1: all rows)
    if (EndsWith(prefix, "gate_up_proj")) {
      if (bs[row_axis] % 2 != 0) {
        return Status::InvalidInput(fmt::format("{}: gpt-oss '{}' has an odd number of gate_up rows", b.where, P(name)));
      }
      const std::string stem = prefix.substr(0, prefix.size() - 12);
      outs = {{stem + "gate_proj", 0}, {stem + "up_proj", 1}};
    } else {
      outs = {{prefix, -1}};
    }
    for (const auto& [path, offset] : outs) {
      for (int part = 0; part < 2; ++part) {
        PrequantTensor t;
        t.name = path + (part == 0 ? ".weight" : ".scales");
        t.role = part == 0 ? PrequantRole::kWeight : PrequantRole::kScales;
        t.layer = path;
        t.dtype = part == 0 ? DType::kU32 : DType::kU8;
        t.shape = part == 0 ? wshape : sshape;
        t.sources = {part == 0 ? name : prefix + "_scales"};
        if (offset >= 0) {
          t.op = PrequantOp::kSelectRows;
          t.axis = row_axis;
          t.stride = 2;
          t.offset = offset;
          t.shape[row_axis] /= 2;
        }
        b.Add(std::move(t));
      }
      b.plan.layers.push_back({path, QuantSpec{QuantMode::kMxfp4, 4, 32, false, QuantProfile::kMlxCpu}});
    }
  }
  for (const std::string& name : inv.names()) {
    if (consumed.count(name)) continue;
    const TensorInfo* info = inv.FindInfo(name);
    if (EndsWith(name, "gate_up_proj_bias")) {
      const std::string stem = name.substr(0, name.size() - 17);
      if (info->shape.empty() || info->shape.back() % 2 != 0) {
        return Status::InvalidInput(fmt::format("{}: gpt-oss '{}' {} has an odd last dimension", b.where, P(name),
                                                Shape(info->shape)));
      }
      for (int64_t offset : {0, 1}) {
        PrequantTensor t;
        t.name = stem + (offset == 0 ? "gate_proj.bias" : "up_proj.bias");
        t.dtype = info->dtype;
        t.shape = info->shape;
        t.shape.back() /= 2;
        t.sources = {name};
        t.op = PrequantOp::kSelectRows;
        t.axis = static_cast<int>(info->shape.size()) - 1;
        t.stride = 2;
        t.offset = offset;
        b.Add(std::move(t));
      }
      continue;
    }
    if (EndsWith(name, "down_proj_bias")) {
      PrequantTensor t;
      t.name = name.substr(0, name.size() - 14) + "down_proj.bias";
      t.dtype = info->dtype;
      t.shape = info->shape;
      t.sources = {name};
      b.Add(std::move(t));
      continue;
    }
    rest.push_back(name);
  }
  b.plan.format = "gpt-oss MXFP4 (group size 32, E8M0 scales)";
  return b.AddPassThrough(rest);
}

}  // namespace

Result<PrequantPlan> PlanPrequant(const Inventory& inv, const Classification& kind, const PrequantOptions& options) {
  Builder b{inv, options, {}, inv.path()};
  b.plan.kind = kind.kind;
  // Two quantization formats in one checkpoint: which tensors belong to which is ambiguous.
  const auto evidence = FormatEvidence(inv);
  if (evidence.size() > 1) {
    std::string list;
    for (const auto& [format, tensor] : evidence) list += fmt::format("{}{} (e.g. '{}')", list.empty() ? "" : ", ", format, P(tensor));
    return Status::InvalidInput(fmt::format(
        "{}: the checkpoint mixes quantization formats: {}; stquant imports one format per checkpoint", b.where, list));
  }
  const std::string method = QuantMethod(inv);
  switch (kind.kind) {
    case SourceKind::kMlx:
      STQ_RETURN_IF_ERROR(PlanMlx(b));
      break;
    case SourceKind::kModelOptNvfp4:
      STQ_RETURN_IF_ERROR(PlanModelOpt(b));
      break;
    case SourceKind::kCompressedTensors:
      STQ_RETURN_IF_ERROR(PlanCompressedTensors(b));
      break;
    case SourceKind::kGptOssMxfp4:
      STQ_RETURN_IF_ERROR(PlanGptOss(b));
      break;
    default:
      return Status::Internal(fmt::format("PlanPrequant: source kind {} is not quantized", SourceKindName(kind.kind)));
  }
  // mlx-lm's sanitize drops (rotary buffers, a tied lm_head) for pass-through tensors.
  if (options.target == PrequantTarget::kMlxLm && !b.plan.keep_config) {
    const ArchRules rules = RulesFor(inv.config());
    std::erase_if(b.plan.tensors, [&](const PrequantTensor& t) {
      if (t.role != PrequantRole::kTensor || !DroppedBySanitize(rules, t.name)) return false;
      b.plan.input_bytes -= t.source_bytes;
      b.plan.output_bytes -= t.bytes;
      return true;
    });
  }
  std::sort(b.plan.tensors.begin(), b.plan.tensors.end(),
            [](const PrequantTensor& x, const PrequantTensor& y) { return x.name < y.name; });
  for (size_t i = 1; i < b.plan.tensors.size(); ++i) {
    if (b.plan.tensors[i].name == b.plan.tensors[i - 1].name) {
      return Status::InvalidInput(fmt::format("{}: two source tensors map to the output tensor '{}'", b.where,
                                              P(b.plan.tensors[i].name)));
    }
  }
  std::sort(b.plan.layers.begin(), b.plan.layers.end(),
            [](const PrequantLayer& x, const PrequantLayer& y) { return x.path < y.path; });
  if (!b.plan.keep_config) b.MakeQuantizationBlock();
  for (const PrequantLayer& l : b.plan.layers) {
    if (l.spec.mode == QuantMode::kNvfp4 && options.target == PrequantTarget::kMlxLm && !l.spec.global_scale &&
        kind.kind != SourceKind::kMlx) {
      b.plan.notes.push_back(fmt::format(
          "'{}': mlx's QuantizedLinear has no global scale; the NVFP4 global scale is folded into the E4M3 block scales "
          "where that is exact (checked while converting)",
          l.path));
      break;
    }
  }
  return std::move(b.plan);
}

std::string OllamaPrequantName(const PrequantTensor& t) {
  switch (t.role) {
    case PrequantRole::kTensor:
      return t.name;
    case PrequantRole::kWeight:
      return t.layer + ".weight";
    case PrequantRole::kScales:
      return t.layer + ".weight.scale";
    case PrequantRole::kBiases:
      return t.layer + ".weight.bias";
    case PrequantRole::kGlobalScale:
      return t.layer + ".weight.global_scale";
  }
  return t.name;
}

Result<std::vector<OllamaPrequantBlob>> OllamaPrequantBlobs(const PrequantPlan& plan, const std::string& where,
                                                            bool requantize) {
  std::map<std::string, OllamaPrequantBlob> blobs;
  std::map<std::string, std::string> blob_of;  // output tensor -> blob
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PrequantTensor& t = plan.tensors[i];
    const std::string name = OllamaPrequantName(t);
    const std::string blob_name = t.layer.empty() ? name : t.layer + ".weight";
    OllamaPrequantBlob& blob = blobs[blob_name];
    if (!blob.tensors.empty() && blob.layer != t.layer) {
      return Status::InvalidInput(fmt::format(
          "{}: two blobs named '{}' (source tensors '{}' and '{}' normalize to a clashing name)", where, P(blob_name),
          P(plan.tensors[blob.tensors.front()].sources.front()), P(t.sources.front())));
    }
    if (auto [it, fresh] = blob_of.emplace(name, blob_name); !fresh) {
      return Status::InvalidInput(fmt::format(
          "{}: output tensor '{}' planned in both blob '{}' and blob '{}' (source tensors normalize to a clashing name)",
          where, P(name), P(it->second), P(blob_name)));
    }
    blob.name = blob_name;
    blob.layer = t.layer;
    blob.tensors.push_back(i);
  }
  std::vector<OllamaPrequantBlob> out;
  for (auto& entry : blobs) {
    OllamaPrequantBlob& blob = entry.second;
    // Weight, scale, bias, global scale: the order of the roles.
    std::stable_sort(blob.tensors.begin(), blob.tensors.end(),
                     [&](size_t a, size_t b) { return plan.tensors[a].role < plan.tensors[b].role; });
    if (!blob.layer.empty() && !requantize) {
      const auto layer = std::find_if(plan.layers.begin(), plan.layers.end(),
                                      [&](const PrequantLayer& l) { return l.path == blob.layer; });
      if (layer == plan.layers.end()) {
        return Status::Internal(fmt::format("{}: layer '{}' is missing from the import plan", where, P(blob.layer)));
      }
      // sourceQuantType (ollama-create-spec §2.4): the runtime knows int4, int8, nvfp4, mxfp4, mxfp8.
      const std::string type = QuantTypeName(layer->spec);
      if (!OllamaTypeSpec(type)) {
        return Status::Unsupported(fmt::format(
            "{}: layer '{}' is {} (group {}), a type ollama's MLX runner does not have (int4, int8, nvfp4, mxfp4, "
            "mxfp8); import it into the mlx layout, or add -q TYPE --requantize (loses accuracy)",
            where, P(blob.layer), type, layer->spec.group_size));
      }
      blob.metadata["quant_type"] = type;
      // ModelOpt leaves the group size to the runtime (16), as ollama's importer.
      if (plan.kind != SourceKind::kModelOptNvfp4) blob.metadata["group_size"] = std::to_string(layer->spec.group_size);
    }
    out.push_back(std::move(blob));
  }
  return out;
}

DType DequantizedDType(const nlohmann::json& config) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    const auto it = config.find(key);
    if (it == config.end() || !it->is_string()) continue;
    if (*it == "float16") return DType::kF16;
    if (*it == "float32") return DType::kF32;
    break;
  }
  return DType::kBF16;
}

Status PlanPrequantConversion(const ConvertOptions& options, const Classification& kind,
                              const OllamaPolicy* policy, PlanContext& context) {
  const Inventory& inv = *context.inventory;
  const std::string where = options.source_dir;
  const bool ollama = options.layout == OutputLayout::kOllama;
  if (ollama && policy == nullptr) return Status::Internal("PlanPrequantConversion: the ollama layout without a policy");
  if (options.quant && !options.requantize) {
    if (ollama) {
      // ollama-create-spec §5, with how to get there anyway.
      return Status::InvalidArgument(fmt::format(
          "{}: cannot requantize an already-quantized source model (requested \"{}\"): only bf16/fp16/fp32 sources "
          "can be quantized ({}: {}). Leave out -q to import it losslessly, or add --requantize to dequantize it and "
          "quantize again (loses accuracy)",
          where, QuantTypeName(*options.quant), SourceKindName(kind.kind), kind.detail));
    }
    return Status::InvalidArgument(fmt::format(
        "{}: the checkpoint is already quantized ({}: {}); -q would dequantize it and quantize again, which loses "
        "accuracy. Leave out -q to import it losslessly (its codes and scales unchanged), or add --requantize",
        where, SourceKindName(kind.kind), kind.detail));
  }
  if (options.requantize && !options.quant) {
    return Status::InvalidArgument("--requantize needs a quantization type (-q TYPE or --mode)");
  }
  if (options.dequantize && (ollama || options.quant)) {
    return Status::InvalidArgument("--dequantize writes the mlx layout without quantization");
  }
  // The formerly quantized layers are rewritten from their dequantized values (--requantize,
  // --dequantize) instead of imported as they are.
  const bool rewrite = options.requantize || options.dequantize;
  if (!options.recipe.empty() || !options.overrides.empty()) {
    return Status::InvalidArgument(fmt::format(
        "{}: --recipe and --override are not supported for an already-quantized source ({})", where,
        SourceKindName(kind.kind)));
  }
  if (options.quant) STQ_RETURN_IF_ERROR(ValidateQuantSpec(*options.quant));
  STQ_ASSIGN_OR_RETURN(PrequantPlan pq,
                       PlanPrequant(inv, kind, {.target = ollama ? PrequantTarget::kRaw : PrequantTarget::kMlxLm}));
  ConversionPlan& plan = context.plan;
  plan.architecture = RulesFor(inv.config()).model_type;
  plan.source_kind = std::string(SourceKindName(kind.kind));
  plan.default_quant = options.quant;
  plan.input_bytes = pq.input_bytes;
  auto planned = [&](const PrequantTensor& t, std::string name) {
    PlannedTensor p;
    p.name = std::move(name);
    for (const std::string& s : t.sources) p.sources.push_back({s, ""});
    p.source_dtype = inv.FindInfo(t.sources.front())->dtype;
    p.dtype = t.dtype;
    p.shape = t.shape;
    return p;
  };
  // --requantize: a layer's weight as the float tensor of its dequantized values.
  const DType float_dtype = DequantizedDType(inv.config());
  auto dequantized = [&](const PrequantTensor& weight, std::string name) {
    PlannedTensor p = planned(weight, std::move(name));
    for (const PrequantLayer& l : pq.layers) {
      if (l.path == weight.layer) p.shape.back() = p.shape.back() * 32 / l.spec.bits;
    }
    p.dtype = float_dtype;
    p.transform = TensorTransform::kCast;
    return p;
  };
  if (ollama) {
    STQ_ASSIGN_OR_RETURN(std::vector<OllamaPrequantBlob> blobs, OllamaPrequantBlobs(pq, where, options.requantize));
    for (const OllamaPrequantBlob& blob : blobs) {
      if (options.requantize && !blob.layer.empty()) {
        // The type ollama's policy gives the dequantized weight.
        PlannedTensor p = dequantized(pq.tensors[blob.tensors.front()], blob.name);
        p.quant = OllamaTypeSpec(policy->Type(p.name, p.shape, OllamaTypeOf(*options.quant)));
        if (p.quant) p.quant->profile = options.quant->profile;
        p.blob = blob.name;
        plan.tensors.push_back(std::move(p));
        continue;
      }
      for (size_t i : blob.tensors) {
        PlannedTensor p = planned(pq.tensors[i], OllamaPrequantName(pq.tensors[i]));
        p.blob = blob.name;
        plan.tensors.push_back(std::move(p));
      }
    }
  }
  for (const PrequantTensor& t : pq.tensors) {
    if (ollama) break;
    if (!rewrite || t.layer.empty()) {
      plan.tensors.push_back(planned(t, t.name));
    } else if (t.role == PrequantRole::kWeight) {
      PlannedTensor p = dequantized(t, t.name);
      if (options.quant && p.shape.back() % options.quant->group_size == 0) p.quant = options.quant;
      plan.tensors.push_back(std::move(p));
    }
  }
  for (PlannedTensor& t : plan.tensors) {
    t.output_bytes = PlannedOutputBytes(t);
    plan.output_bytes += t.output_bytes;
  }
  // Logical parameters: a packed weight counts its codes, scales/biases/global scales nothing.
  for (const PrequantTensor& t : pq.tensors) {
    if (t.role == PrequantRole::kTensor) {
      plan.parameters += Elements(t.shape);
    } else if (t.role == PrequantRole::kWeight) {
      for (const PrequantLayer& l : pq.layers) {
        if (l.path == t.layer) plan.parameters += Elements(t.shape) * 32 / l.spec.bits;
      }
    }
  }
  plan.warnings.push_back(fmt::format("source format: {}", pq.format));
  for (const std::string& n : pq.notes) plan.warnings.push_back(n);
  if (options.requantize) {
    plan.warnings.push_back(fmt::format(
        "--requantize: the {} source is dequantized and quantized again to {}; this loses accuracy compared with a "
        "lossless import",
        pq.format, QuantTypeName(*options.quant)));
  }
  // Files copied beside the weights (hf_quant_config.json is not: config.json describes the output).
  STQ_ASSIGN_OR_RETURN(plan.copied_files, CopiedFiles(options.source_dir, plan.warnings));
  for (const std::string& w : inv.warnings()) plan.warnings.push_back(w);
  context.prequant = std::make_shared<const PrequantPlan>(std::move(pq));
  return Status::Ok();
}

Status CheckNoUnknownQuantization(const Inventory& inv) {
  const std::string where = inv.path();
  const std::string method = QuantMethod(inv);
  static const std::set<std::string> kKnown = {"", "fp8", "compressed-tensors", "modelopt", "mxfp4"};
  auto first_tensor = [&](auto pred) {
    for (const std::string& n : inv.names()) {
      if (pred(n)) return n;
    }
    return std::string();
  };
  const std::string qweight = first_tensor([](const std::string& n) {
    return EndsWith(n, ".qweight") || EndsWith(n, ".qzeros") || EndsWith(n, ".g_idx");
  });
  const std::string bnb = first_tensor([](const std::string& n) {
    return EndsWith(n, ".SCB") || EndsWith(n, ".absmax") || EndsWith(n, ".quant_map") ||
           n.find(".quant_state.") != std::string::npos || EndsWith(n, ".weight_format");
  });
  const std::string int_weight = first_tensor([&](const std::string& n) {
    const TensorInfo* info = inv.FindInfo(n);
    const DType d = info->dtype;
    return EndsWith(n, ".weight") && info->shape.size() >= 2 &&
           (d == DType::kI8 || d == DType::kU8 || d == DType::kI32 || d == DType::kU32 || d == DType::kI16 ||
            d == DType::kU16 || d == DType::kF4 || d == DType::kF6E2M3 || d == DType::kF6E3M2 || d == DType::kF8E8M0);
  });
  const std::string example = !qweight.empty() ? qweight : !bnb.empty() ? bnb : int_weight;
  if (!kKnown.count(method)) {
    return Status::Unsupported(fmt::format(
        "{}: the checkpoint is quantized with quant_method '{}'{} , which stquant cannot import (supported: MLX, "
        "ModelOpt NVFP4, compressed-tensors nvfp4/int pack-quantized, gpt-oss MXFP4, block FP8); dequantize it to bf16 "
        "first",
        where, P(method), example.empty() ? "" : fmt::format(" (tensor '{}')", P(example))));
  }
  if (!qweight.empty()) {
    return Status::Unsupported(fmt::format("{}: tensor '{}' is a GPTQ/AWQ packed tensor; GPTQ/AWQ checkpoints are not "
                                           "supported (dequantize to bf16 first)",
                                           where, P(qweight)));
  }
  if (!bnb.empty()) {
    return Status::Unsupported(fmt::format(
        "{}: tensor '{}' is a bitsandbytes quantization state; bitsandbytes checkpoints are not supported", where, P(bnb)));
  }
  if (!int_weight.empty()) {
    const TensorInfo* info = inv.FindInfo(int_weight);
    return Status::Unsupported(fmt::format("{}: weight '{}' is {} in a checkpoint of no known quantization format; "
                                           "stquant cannot tell how to decode it",
                                           where, P(int_weight), DTypeName(info->dtype)));
  }
  return Status::Ok();
}

}  // namespace stquant::model
