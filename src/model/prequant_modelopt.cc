#include "model/prequant_internal.h"

#include "model/json_util.h"

namespace stquant::model::prequant_internal {

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

}  // namespace stquant::model::prequant_internal
