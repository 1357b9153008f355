// The pieces the planners of already-quantized sources share (model/prequant.h's PlanPrequant
// dispatches to one planner per source format, each in its own prequant_<format>.cc): name and
// shape helpers, the config's quantization blocks, a source layer, and the Builder that stacks
// experts and adds tensors and layers to the plan.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "model/arch.h"
#include "model/inventory.h"
#include "model/prequant.h"
#include "safetensors/format.h"

namespace stquant::model::prequant_internal {

using nlohmann::json;
using safetensors::TensorInfo;

inline bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
inline std::string Strip(const std::string& s, std::string_view suffix) { return s.substr(0, s.size() - suffix.size()); }
inline std::string P(std::string_view name) { return safetensors::internal::Printable(name); }

inline int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
inline uint64_t Bytes(DType dtype, const std::vector<int64_t>& shape) {
  return static_cast<uint64_t>(Elements(shape)) * DTypeBits(dtype) / 8;
}
inline std::string Shape(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

inline std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

// The config's quantization blocks (top level and text_config; quantization, quantization_config,
// compression_config).
std::vector<const json*> QuantBlocks(const json& config);

// The lowercase quant_method of the first block that has one; "" when none.
std::string QuantMethod(const Inventory& inv);
// The compressed-tensors block (quant_method "compressed-tensors", else one with config_groups).
const json* CompressedTensorsBlock(const json& config);
// The tensor exists and has `dtype`.
bool Is(const Inventory& inv, const std::string& name, DType dtype);
bool IsScalarF32(const TensorInfo* info);


// A compressed-tensors block with a float-quantized (FP8) group, or of that format itself.
bool HasFloatQuantizedGroup(const json& block);


// Activation / KV-cache calibration scales: meaningless to MLX's weight-only kernels.
inline bool IsActivationScale(std::string_view name) {
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

  void Add(PrequantTensor t);

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

  // Pass-through tensors (one source each), stacked when per-expert; `finish` (optional) completes
  // each before it is added.
  Status AddPassThrough(const std::vector<std::string>& names,
                        const std::function<Status(PrequantTensor&)>& finish = nullptr);

  Status AddLayers(std::vector<SourceLayer> layers);

  // The config block: the most common layer spec as default, others as per-layer entries.
  void MakeQuantizationBlock();
};

// An nvfp4 layer from U8 weight (two E2M1 codes per byte, even element in the low nibble, as
// MLX), E4M3 block scales per 16, an F32 scalar.
Result<SourceLayer> Nvfp4Layer(const Inventory& inv, const std::string& where, const std::string& path,
                               const std::string& weight, const std::string& scale, const std::string& scalar,
                               bool inverted, const std::string& format);


// The planners, one per source format: each adds the checkpoint's tensors and layers to b.plan
// and names the format (b.plan.format).
Status PlanMlx(Builder& b);
Status PlanModelOpt(Builder& b);
Status PlanCompressedTensors(Builder& b);
Status PlanGptOss(Builder& b);

}  // namespace stquant::model::prequant_internal
