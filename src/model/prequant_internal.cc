#include "model/prequant_internal.h"

#include <algorithm>

#include "model/json_util.h"

namespace stquant::model::prequant_internal {

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

// A compressed-tensors block with a float-quantized (FP8) group, or of that format itself.
bool HasFloatQuantizedGroup(const json& block) {
  const std::string format = JsonString(block, "format");
  if (format == "float-quantized") return true;
  const auto groups = block.find("config_groups");
  if (groups == block.end() || !groups->is_object()) return false;
  return std::any_of(groups->begin(), groups->end(),
                     [&](const json& g) { return JsonString(g, "format", format) == "float-quantized"; });
}

void Builder::Add(PrequantTensor t) {
  t.bytes = Bytes(t.dtype, t.shape);
  for (const std::string& s : t.sources) t.source_bytes += inv.FindInfo(s)->nbytes();
  for (const std::string& s : t.aux) {
    const bool read = t.op == PrequantOp::kAffineBias || t.op == PrequantOp::kDecodeFp8;
    if (!s.empty() && read) t.source_bytes += inv.FindInfo(s)->nbytes();
  }
  plan.input_bytes += t.source_bytes;
  plan.output_bytes += t.bytes;
  plan.tensors.push_back(std::move(t));
}

Status Builder::AddPassThrough(const std::vector<std::string>& names,
                      const std::function<Status(PrequantTensor&)>& finish) {
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
    if (finish) STQ_RETURN_IF_ERROR(finish(t));
    Add(std::move(t));
  }
  return Status::Ok();
}

Status Builder::AddLayers(std::vector<SourceLayer> layers) {
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

void Builder::MakeQuantizationBlock() {
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
}  // namespace stquant::model::prequant_internal
