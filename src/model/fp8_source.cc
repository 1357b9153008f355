#include "model/fp8_source.h"

#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "model/json_util.h"
#include "safetensors/format.h"

namespace stquant::model {

namespace {

using nlohmann::json;
using safetensors::TensorInfo;

std::string P(std::string_view name) { return safetensors::internal::Printable(name); }

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The compressed-tensors block of the config (top level or text_config; quantization_config or
// compression_config).
const json* CompressedTensorsBlock(const json& config) {
  for (const json* root : {&config, config.contains("text_config") ? &config["text_config"] : nullptr}) {
    if (root == nullptr || !root->is_object()) continue;
    for (const char* key : {"quantization_config", "compression_config", "quantization"}) {
      const auto it = root->find(key);
      if (it != root->end() && it->is_object() && JsonString(*it, "quant_method") == "compressed-tensors") return &*it;
    }
  }
  return nullptr;
}

// One config group's weight layout: a block, or (strategy "tensor") one scale per matrix.
struct GroupLayout {
  std::string group;
  std::string strategy;
  Fp8Block block;  // rows / cols 0: the whole dimension
};

Result<std::vector<GroupLayout>> GroupLayouts(const Inventory& inv) {
  const std::string& where = inv.path();
  const json* block = CompressedTensorsBlock(inv.config());
  std::vector<GroupLayout> layouts;
  const json* groups = nullptr;
  if (block != nullptr) {
    if (const auto it = block->find("config_groups"); it != block->end()) groups = &*it;
  }
  if (groups == nullptr || !groups->is_object() || groups->empty()) {
    return Status::Unsupported(fmt::format(
        "{}: compressed-tensors float-quantized checkpoint without config_groups: the scale strategy is unknown", where));
  }
  for (const auto& item : groups->items()) {
    // Not a structured binding: clang 14 cannot capture one in the lambda below.
    const std::string& key = item.key();
    const json& group = item.value();
    // A mixed-precision container's packed groups are not this module's.
    if (JsonString(group, "format", JsonString(*block, "format")) != "float-quantized") continue;
    const auto found = group.is_object() ? group.find("weights") : group.end();
    const json& weights = found != group.end() ? *found : json();
    auto refuse = [&](const std::string& what) {
      return Status::Unsupported(fmt::format("{}: compressed-tensors float-quantized group '{}': {}; stquant decodes "
                                             "8-bit E4M3 weights with a symmetric tensor, channel, group or block "
                                             "strategy",
                                             where, P(key), what));
    };
    if (!weights.is_object()) return refuse("no weights arguments");
    if (JsonInt(weights, "num_bits", 0) != 8 || JsonString(weights, "type", "float") != "float") {
      return refuse(fmt::format("weights are {} with num_bits {}", P(JsonString(weights, "type", "(none)")),
                                JsonInt(weights, "num_bits", 0)));
    }
    if (!JsonBool(weights, "symmetric", true)) return refuse("asymmetric weights (a zero point)");
    if (weights.contains("actorder") && !weights["actorder"].is_null() && weights["actorder"] != false) {
      return refuse("activation ordering (actorder)");
    }
    GroupLayout layout{key, JsonString(weights, "strategy"), {}};
    if (layout.strategy == "tensor") {
      layout.block = {0, 0};
    } else if (layout.strategy == "channel") {
      layout.block = {1, 0};
    } else if (layout.strategy == "group") {
      const int64_t size = JsonInt(weights, "group_size", 0);
      if (size <= 0) return refuse("strategy group without a positive group_size");
      layout.block = {1, size};
    } else if (layout.strategy == "block") {
      const json& bs = weights.contains("block_structure") ? weights["block_structure"] : json();
      if (!bs.is_array() || bs.size() != 2 || !bs[0].is_number_integer() || !bs[1].is_number_integer() ||
          bs[0].get<int64_t>() <= 0 || bs[1].get<int64_t>() <= 0) {
        return refuse("strategy block without a block_structure [rows, cols]");
      }
      layout.block = {bs[0].get<int64_t>(), bs[1].get<int64_t>()};
    } else {
      return refuse(fmt::format("weight strategy '{}'", P(layout.strategy)));
    }
    layouts.push_back(std::move(layout));
  }
  if (layouts.empty()) {
    return Status::Unsupported(fmt::format("{}: compressed-tensors checkpoint without a float-quantized config group",
                                           where));
  }
  return layouts;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Status CheckFloatQuantizedConfig(const Inventory& inventory) { return GroupLayouts(inventory).status(); }

Result<Fp8Block> Fp8ScaleBlock(const Inventory& inv, SourceKind kind, const TensorInfo& weight, const TensorInfo& scale) {
  const std::string& where = inv.path();
  const std::vector<int64_t>& shape = weight.shape;
  if (shape.size() != 2 && shape.size() != 3) {
    return Status::Unsupported(fmt::format("{}: F8_E4M3 tensor '{}' has rank {}; FP8 weights must be 2-D or 3-D", where,
                                           P(weight.name), shape.size()));
  }
  const int64_t rows = shape[shape.size() - 2], cols = shape.back();
  const std::vector<int64_t> lead(shape.begin(), shape.end() - 2);
  auto grid = [&](Fp8Block block) {
    std::vector<int64_t> want = lead;
    want.push_back(CeilDiv(rows, block.rows));
    want.push_back(CeilDiv(cols, block.cols));
    return want;
  };
  if (kind == SourceKind::kBlockFp8) {
    const std::vector<int64_t> want = grid(Fp8Block{});
    if (scale.shape != want || (scale.dtype != DType::kF32 && scale.dtype != DType::kBF16)) {
      return Status::InvalidInput(fmt::format(
          "{}: tensor '{}': unexpected fp8 scale '{}' {} [{}] for weight shape [{}]; want F32 or BF16 [{}]", where,
          P(weight.name), P(scale.name), DTypeName(scale.dtype), fmt::join(scale.shape, ", "), fmt::join(shape, ", "),
          fmt::join(want, ", ")));
    }
    return Fp8Block{};
  }
  if (inv.FindInfo(weight.name + "_shape_original") != nullptr) {
    return Status::Unsupported(fmt::format("{}: tensor '{}' is stored padded to its block structure ('{}_shape_original'); "
                                           "padded FP8 block weights are not supported",
                                           where, P(weight.name), P(weight.name)));
  }
  STQ_ASSIGN_OR_RETURN(std::vector<GroupLayout> layouts, GroupLayouts(inv));
  std::vector<std::string> wanted;
  for (const GroupLayout& layout : layouts) {
    // Rows / cols 0 stand for the whole dimension (one scale per matrix or per row).
    const Fp8Block block{layout.block.rows > 0 ? layout.block.rows : std::max<int64_t>(1, rows),
                         layout.block.cols > 0 ? layout.block.cols : std::max<int64_t>(1, cols)};
    std::vector<std::vector<int64_t>> fits = {grid(block)};
    if (layout.strategy == "tensor") {  // also stored as [] / [1] (2-D) or [E] (3-D)
      std::vector<int64_t> flat = lead;
      fits.push_back(flat);
      flat.push_back(1);
      fits.push_back(flat);
    }
    for (const std::vector<int64_t>& fit : fits) {
      if (scale.shape == fit && (scale.dtype == DType::kF32 || scale.dtype == DType::kBF16 || scale.dtype == DType::kF16)) {
        return block;
      }
    }
    wanted.push_back(fmt::format("[{}] (group '{}', strategy {})", fmt::join(fits.front(), ", "), P(layout.group),
                                 layout.strategy));
  }
  return Status::InvalidInput(fmt::format(
      "{}: tensor '{}': unexpected fp8 scale '{}' {} [{}] for weight shape [{}]; want F32, BF16 or F16 {}", where,
      P(weight.name), P(scale.name), DTypeName(scale.dtype), fmt::join(scale.shape, ", "), fmt::join(shape, ", "),
      fmt::join(wanted, " or ")));
}

bool IsCalibrationScale(std::string_view name) {
  return EndsWith(name, ".input_scale") || EndsWith(name, ".input_global_scale") || EndsWith(name, ".k_scale") ||
         EndsWith(name, ".v_scale") || EndsWith(name, ".output_scale");
}

}  // namespace stquant::model
