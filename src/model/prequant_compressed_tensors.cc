#include "model/prequant_internal.h"

#include <algorithm>
#include <set>

#include "model/fp8_source.h"
#include "model/json_util.h"

namespace stquant::model::prequant_internal {

Status PlanCompressedTensors(Builder& b) {
  const Inventory& inv = b.inv;
  const json* block = CompressedTensorsBlock(inv.config());
  if (block == nullptr) {
    return Status::InvalidInput(fmt::format(
        "{}: compressed-tensors tensors (*.weight_packed) without a config.json quantization_config", b.where));
  }
  const std::string format = JsonString(*block, "format");
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
        // JsonString / JsonInt: a const json's operator[] must not meet a missing key.
        a.strategy = JsonString(*w, "strategy");
        a.type = JsonString(*w, "type");
        a.group_size = static_cast<int>(JsonInt(*w, "group_size", 0));
        if (w->value("actorder", json()).is_string()) {
          return Status::Unsupported(fmt::format("{}: compressed-tensors group '{}' uses activation ordering (actorder); "
                                                 "MLX groups are contiguous, so it cannot be imported",
                                                 b.where, P(key)));
        }
      }
      groups.push_back(a);
    }
  }
  // The formats of the groups: one, or several in a "mixed-precision" container, each layer
  // reading as the group its tensors fit.
  std::set<std::string> formats;
  for (const Args& a : groups) formats.insert(a.format);
  if (formats.empty()) formats.insert(format);
  const std::string first_packed = [&] {
    for (const std::string& n : inv.names()) {
      if (EndsWith(n, ".weight_packed")) return n;
    }
    return std::string();
  }();
  for (const std::string& f : formats) {
    if (f == "nvfp4-pack-quantized" || f == "pack-quantized" || f == "float-quantized") continue;
    return Status::Unsupported(fmt::format(
        "{}: compressed-tensors format '{}' (tensor '{}') is not supported: stquant imports nvfp4-pack-quantized, "
        "pack-quantized (int2/4/8) and float-quantized (FP8), also as the groups of a mixed-precision container; "
        "dequantize to bf16 first",
        b.where, P(f.empty() ? "(none)" : f), P(first_packed)));
  }
  const bool has_nvfp4 = formats.count("nvfp4-pack-quantized") > 0, has_int = formats.count("pack-quantized") > 0;
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
    // NVFP4 layers carry a global scale; pack-quantized ones do not.
    if (has_nvfp4 && (!has_int || inv.FindInfo(base + ".weight_global_scale") != nullptr)) {
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
      if (a.format != "pack-quantized" || (a.bits != 2 && a.bits != 4 && a.bits != 8)) continue;
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
  // The float-quantized (FP8) layers of a mixed-precision container: decoded to the model's dtype
  // (E4M3 x scale, as a compressed-tensors-fp8 source), float tensors of the output.
  std::vector<std::string> fp8;
  for (const std::string& name : inv.names()) {
    if (!EndsWith(name, ".weight") || !Is(inv, name, DType::kF8E4M3) || !formats.count("float-quantized")) continue;
    if (!inv.FindInfo(name + "_scale")) {
      return Status::InvalidInput(fmt::format("{}: compressed-tensors float-quantized tensor '{}' has no '{}_scale'",
                                              b.where, P(name), P(name)));
    }
    fp8.push_back(name);
    consumed.insert({name, name + "_scale"});
  }
  const DType fp8_dtype = DequantizedDType(inv.config());
  STQ_RETURN_IF_ERROR(b.AddPassThrough(fp8, [&](PrequantTensor& t) -> Status {
    for (const std::string& source : t.sources) {
      STQ_ASSIGN_OR_RETURN(const Fp8Block block, Fp8ScaleBlock(inv, SourceKind::kCompressedTensorsFp8,
                                                               *inv.FindInfo(source), *inv.FindInfo(source + "_scale")));
      t.fp8_blocks.push_back(block);
      t.aux.push_back(source + "_scale");
    }
    t.op = PrequantOp::kDecodeFp8;
    t.dtype = fp8_dtype;
    return Status::Ok();
  }));
  // "compressed-tensors pack-quantized int4 (group 64, symmetric)"; a mixed-precision container
  // lists what its layers are.
  std::set<std::string> kinds;
  if (!fp8.empty()) kinds.insert("float-quantized FP8 (decoded)");
  for (const SourceLayer& l : layers) {
    kinds.insert(l.spec.mode == QuantMode::kNvfp4
                     ? std::string("nvfp4-pack-quantized")
                     : fmt::format("pack-quantized int{} (group {}, {})", l.spec.bits, l.spec.group_size,
                                   l.zero_point.empty() ? "symmetric" : "asymmetric"));
  }
  b.plan.format = kinds.size() == 1 ? "compressed-tensors " + *kinds.begin()
                                    : fmt::format("compressed-tensors mixed-precision ({})", fmt::join(kinds, ", "));
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

}  // namespace stquant::model::prequant_internal
