#include "model/prequant_internal.h"

namespace stquant::model::prequant_internal {

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

}  // namespace stquant::model::prequant_internal
