#include "model/prequant.h"

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/arch.h"
#include "model/copied_files.h"
#include "model/fp8_source.h"
#include "model/json_util.h"
#include "model/ollama_policy.h"
#include "model/tensor_view.h"
#include "model/prequant_internal.h"
#include "safetensors/format.h"

namespace stquant::model {

using namespace prequant_internal;  // the planners' shared pieces (this file's own)

namespace {

// Which quantization formats a checkpoint's tensors show, each with one example tensor.
std::map<std::string, std::string> FormatEvidence(const Inventory& inv) {
  std::map<std::string, std::string> found;
  // FP8 weights of a compressed-tensors checkpoint with float-quantized groups are its own.
  const json* ct = CompressedTensorsBlock(inv.config());
  const bool ct_float = ct != nullptr && HasFloatQuantizedGroup(*ct);
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
    if (EndsWith(name, ".weight") && Is(inv, name, DType::kF8E4M3)) {
      add(ct_float ? "compressed-tensors" : "block-fp8", name);
    }
    if (EndsWith(name, ".qweight")) add("gptq/awq", name);
  }
  return found;
}

// The view of one source of t: the whole tensor, or one [1, ...] piece of a stack.
TensorView SourceView(const PrequantTensor& t) {
  if (t.sources.size() <= 1 || t.shape.empty()) return ContiguousView(t.shape);
  return UnsqueezeView(ContiguousView({t.shape.begin() + 1, t.shape.end()}));
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

PlannedTensor DecodedFp8Tensor(const PrequantTensor& t, std::string name) {
  PlannedTensor p;
  p.name = std::move(name);
  for (size_t i = 0; i < t.sources.size(); ++i) {
    PlannedSource source;
    source.tensor = t.sources[i];
    source.fp8_scale = t.aux[i];
    source.fp8_block = t.fp8_blocks[i];
    source.fp8_dtype = t.dtype;
    source.view = SourceView(t);
    p.sources.push_back(std::move(source));
  }
  p.transform = TensorTransform::kDecodeFp8;
  p.source_dtype = DType::kF8E4M3;
  p.dtype = t.dtype;
  p.shape = t.shape;
  p.output_bytes = PlannedOutputBytes(p);
  return p;
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
    for (const std::string& s : t.sources) {
      PlannedSource source;
      source.tensor = s;
      source.view = SourceView(t);
      p.sources.push_back(std::move(source));
    }
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
        const PrequantTensor& t = pq.tensors[i];
        PlannedTensor p = planned(t, OllamaPrequantName(t));
        if (t.op == PrequantOp::kDecodeFp8) {
          // Decoded FP8 weights take the type ollama's policy gives them, mxfp8 by default (as block
          // FP8 sources).
          p = DecodedFp8Tensor(t, OllamaPrequantName(t));
          p.quant = OllamaTypeSpec(policy->Type(p.name, p.shape, options.quant ? OllamaTypeOf(*options.quant) : "mxfp8"));
          if (p.quant) p.quant->profile = options.profile;
        }
        p.blob = blob.name;
        plan.tensors.push_back(std::move(p));
      }
    }
  }
  for (const PrequantTensor& t : pq.tensors) {
    if (ollama) break;
    if (t.op == PrequantOp::kDecodeFp8) {
      PlannedTensor p = DecodedFp8Tensor(t, t.name);
      if (options.quant && p.shape.back() % options.quant->group_size == 0) p.quant = options.quant;
      plan.tensors.push_back(std::move(p));
    } else if (!rewrite || t.layer.empty()) {
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
