#include "model/prequant_internal.h"

namespace stquant::model::prequant_internal {

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

}  // namespace stquant::model::prequant_internal
