// Convert: carries out a ConversionPlan into an mlx-lm model directory.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "model/plan_internal.h"
#include "output/ollama_layout.h"
#include "output/mlx_files.h"
#include "output/output_dir.h"
#include "output/planned_rows.h"
#include "output/preflight.h"
#include "output/prequant_write.h"
#include "output/read_ahead.h"
#include "output/tensor_stream.h"
#include "stquant/convert.h"

namespace stquant {

namespace {

using model::Inventory;
using safetensors::TensorDecl;
using safetensors::TensorInfo;
using safetensors::Writer;

constexpr std::string_view kWeightSuffix = ".weight";

std::string ModulePath(const std::string& name) {
  return name.size() > kWeightSuffix.size() && name.ends_with(kWeightSuffix)
             ? name.substr(0, name.size() - kWeightSuffix.size())
             : name;
}

// One tensor of the output files.
struct OutputTensor {
  TensorDecl decl;
  uint64_t bytes = 0;
  size_t planned = 0;  // index into plan.tensors
  int shard = 0;
};

std::vector<OutputTensor> OutputTensors(const ConversionPlan& plan) {
  std::vector<OutputTensor> out;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape) {
      OutputTensor o;
      o.decl = {std::move(name), dtype, std::move(shape)};
      int64_t elements = 1;
      for (int64_t d : o.decl.shape) elements *= d;
      o.bytes = elements * DTypeBits(dtype) / 8;
      o.planned = i;
      out.push_back(std::move(o));
    };
    if (!t.quant) {
      add(t.name, t.dtype, t.shape);
      continue;
    }
    std::vector<int64_t> packed = t.shape, scales = t.shape;
    packed.back() = PackedWordsPerRow(*t.quant, t.shape.back());
    scales.back() = GroupsPerRow(*t.quant, t.shape.back());
    const std::string base = ModulePath(t.name);
    add(t.name, DType::kU32, packed);
    add(base + ".scales", ScaleDType(*t.quant, t.dtype), scales);
    if (ModeInfo(t.quant->mode).has_biases) add(base + ".biases", t.dtype, scales);
  }
  std::sort(out.begin(), out.end(), [](const OutputTensor& a, const OutputTensor& b) { return a.decl.name < b.decl.name; });
  return out;
}

// mlx-lm's make_shards: a new shard when the next tensor would pass the limit.
int AssignShards(std::vector<OutputTensor>& tensors, uint64_t limit) {
  int shard = -1;
  uint64_t size = 0;
  for (OutputTensor& t : tensors) {
    if (shard < 0 || size + t.bytes > limit) {
      ++shard;
      size = 0;
    }
    t.shard = shard;
    size += t.bytes;
  }
  return shard + 1;
}


nlohmann::json QuantParams(const QuantSpec& spec, bool with_mode) {
  nlohmann::json params = {{"group_size", spec.group_size}, {"bits", spec.bits}};
  if (with_mode) params["mode"] = std::string(ModeInfo(spec.mode).name);
  return params;
}

Result<std::string> OutputConfig(const Inventory& inv, const ConversionPlan& plan) {
  STQ_ASSIGN_OR_RETURN(nlohmann::json config, output::MlxConfigBase(inv, plan.copied_files));
  // The source's FP8 quantization is decoded away (mlx-lm refuses compressed-tensors
  // float-quantized configs).
  if (plan.source_kind == "block-fp8" || plan.source_kind == "compressed-tensors-fp8") {
    config.erase("quantization_config");
    config.erase("compression_config");
  }
  if (plan.default_quant) {
    nlohmann::json quantization = QuantParams(*plan.default_quant, true);
    for (const PlannedTensor& t : plan.tensors) {
      if (t.has_config_entry) {
        nlohmann::json entry = QuantParams(*t.quant, false);
        if (!t.entry_mode.empty()) entry["mode"] = t.entry_mode;
        quantization[ModulePath(t.name)] = entry;
      }
    }
    config["quantization"] = quantization;
    config["quantization_config"] = quantization;
  }
  return config.dump(4) + "\n";
}

uint64_t PeakRssBytes() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;
}

}  // namespace

// The ollama layout's plan resolves the Modelfile and the store (PlanOllamaImport).
Result<ConversionPlan> PlanConversion(const ConvertOptions& options) {
  if (options.layout == OutputLayout::kOllama) return output::PlanOllamaImport(options);
  STQ_ASSIGN_OR_RETURN(model::PlanContext context, model::BuildPlan(options));
  return std::move(context.plan);
}

Result<ConvertSummary> Convert(const ConvertOptions& options,
                               const std::function<void(const ConvertProgress&)>& progress) {
  if (options.layout == OutputLayout::kOllama) return output::ConvertToOllamaStore(options, progress);
  const auto start = std::chrono::steady_clock::now();
  STQ_ASSIGN_OR_RETURN(model::PlanContext context, model::BuildPlan(options));
  STQ_RETURN_IF_ERROR(output::Preflight(options, &context, output::ProjectMlxOutput(options, context)));
  if (context.prequant) return output::ConvertPrequantMlx(options, context, progress);  // already quantized
  const Inventory& inv = *context.inventory;
  const ConversionPlan& plan = context.plan;

  STQ_ASSIGN_OR_RETURN(output::OutputDir dir, output::OutputDir::Create(options.output_dir, options.force));
  std::vector<OutputTensor> tensors = OutputTensors(plan);
  const int shard_count = AssignShards(tensors, options.shard_bytes);

  // Every shard's header is written first (all sizes are known), then tensors stream in.
  std::vector<std::unique_ptr<Writer>> writers;
  for (int s = 0; s < shard_count; ++s) {
    std::vector<TensorDecl> decls;
    for (const OutputTensor& t : tensors) {
      if (t.shard == s) decls.push_back(t.decl);
    }
    STQ_ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer,
                         Writer::Create(dir.PathOf(output::MlxShardName(s, shard_count)), std::move(decls),
                                        std::map<std::string, std::string>{{"format", "mlx"}}));
    writers.push_back(std::move(writer));
  }
  std::map<std::string, const OutputTensor*> by_name;
  for (const OutputTensor& t : tensors) by_name[t.decl.name] = &t;
  auto target = [&](const std::string& name) {
    Writer* w = writers[by_name.at(name)->shard].get();
    return output::WriteTarget{w, *w->IndexOf(name)};
  };

  ConvertProgress state;
  state.tensors_total = plan.tensors.size();
  state.bytes_total = plan.input_bytes;
  std::vector<output::ReadAhead::Range> source_ranges;
  for (const PlannedTensor& t : plan.tensors) {
    for (const PlannedSource& s : t.sources) {
      const model::TensorRef* ref = inv.Find(s.tensor);
      source_ranges.push_back({inv.shards()[ref->shard].reader.get(), ref->info});
    }
  }
  output::ReadAhead read_ahead(std::move(source_ranges));
  std::vector<TensorQuantError> quant_errors;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    state.current = t.name;
    const output::RowSource rows = output::PlannedRows(inv, t, options.profile);
    // Progress in source bytes: a block of rows of the output dtype stands for its share of the
    // source tensor bytes.
    uint64_t source_bytes = 0;
    for (const PlannedSource& s : t.sources) source_bytes += inv.FindInfo(s.tensor)->nbytes();
    const uint64_t value_bytes = std::max<uint64_t>(1, static_cast<uint64_t>(rows.rows) * rows.cols * DTypeBits(t.dtype) / 8);
    auto on_block = [&](uint64_t bytes) {
      state.bytes_done += bytes * source_bytes / value_bytes;
      read_ahead.ConsumedUpTo(state.bytes_done);
      if (progress) progress(state);
    };
    if (!t.quant) {
      STQ_RETURN_IF_ERROR(output::CopyRows(rows, target(t.name), options.threads, on_block));
    } else {
      const std::string base = ModulePath(t.name);
      output::QuantizedTargets targets{target(t.name), target(base + ".scales"), std::nullopt};
      if (ModeInfo(t.quant->mode).has_biases) targets.biases = target(base + ".biases");
      std::optional<output::QuantErrorMeter> meter;
      if (options.measure_quant_error) targets.error = &meter.emplace(t.name, *t.quant, rows.dtype);
      STQ_RETURN_IF_ERROR(output::QuantizeRowSource(rows, *t.quant, 0.0f, targets, options.threads, on_block));
      if (meter) quant_errors.push_back(meter->Total());
    }
    ++state.tensors_done;
    if (progress) progress(state);
  }
  for (auto& writer : writers) STQ_RETURN_IF_ERROR(writer->Commit());

  nlohmann::json index;
  index["metadata"] = {{"total_size", plan.output_bytes}, {"total_parameters", plan.parameters}};
  index["weight_map"] = nlohmann::json::object();
  for (const OutputTensor& t : tensors) index["weight_map"][t.decl.name] = output::MlxShardName(t.shard, shard_count);
  STQ_RETURN_IF_ERROR(output::WriteFileAtomically(dir.PathOf("model.safetensors.index.json"), index.dump(4) + "\n"));
  STQ_ASSIGN_OR_RETURN(std::string config, OutputConfig(inv, plan));
  STQ_RETURN_IF_ERROR(output::WriteFileAtomically(dir.PathOf("config.json"), config));
  for (const std::string& file : plan.copied_files) {
    STQ_RETURN_IF_ERROR(output::CopyFileAtomically(inv.path() + "/" + file, dir.PathOf(file)));
  }
  STQ_RETURN_IF_ERROR(dir.Commit());

  ConvertSummary summary;
  summary.input_bytes = plan.input_bytes;
  summary.output_bytes = plan.output_bytes;
  summary.parameters = plan.parameters;
  summary.tensors = tensors.size();
  for (const PlannedTensor& t : plan.tensors) summary.quantized_tensors += t.quant.has_value();
  summary.shards = shard_count;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.peak_rss_bytes = PeakRssBytes();
  summary.warnings = plan.warnings;
  summary.quant_errors = std::move(quant_errors);
  return summary;
}

std::string FormatPlanText(const ConversionPlan& plan) {
  std::string out = fmt::format("architecture: {}\nsource:       {}\n", plan.architecture.empty() ? "(unknown)" : plan.architecture,
                                plan.source_kind);
  out += fmt::format("{:<60} {:<9} {:<18} {:<16} {}\n", "OUTPUT TENSOR", "FROM", "SHAPE", "QUANT", "BYTES");
  for (const PlannedTensor& t : plan.tensors) {
    std::string from = t.sources.size() > 1 ? fmt::format("stack{}", t.sources.size())
                       : t.transform == TensorTransform::kDecodeFp8 ? "fp8"
                       : t.transform == TensorTransform::kCast       ? "cast"
                                                                     : "copy";
    std::string quant = t.quant ? fmt::format("{} b{} g{}", ModeInfo(t.quant->mode).name, t.quant->bits, t.quant->group_size)
                                : std::string(DTypeName(t.dtype));
    out += fmt::format("{:<60} {:<9} {:<18} {:<16} {}", t.name, from, fmt::format("[{}]", fmt::join(t.shape, ",")), quant,
                       t.output_bytes);
    out += t.blob.empty() ? "\n" : fmt::format("  -> blob {}\n", t.blob);
    // The architecture rules beyond stacking (which FROM shows).
    for (const std::string& step : t.steps) {
      if (!step.starts_with("stack ")) out += fmt::format("    {}\n", step);
    }
  }
  const double bpw = plan.parameters ? 8.0 * plan.output_bytes / plan.parameters : 0.0;
  out += fmt::format("{} tensors; input {} bytes -> output {} bytes ({:.3f} bits per weight, {} parameters)\n",
                     plan.tensors.size(), plan.input_bytes, plan.output_bytes, bpw, plan.parameters);
  if (!plan.manifest_path.empty()) {
    out += fmt::format("manifest {} ({} layers + the config blob; digests are computed when the blobs are written):\n",
                       plan.manifest_path, plan.manifest_layers.size());
    for (const PlannedLayer& l : plan.manifest_layers) {
      out += fmt::format("  {:<40} {:<60} {:>12}{}\n", l.media_type, l.name.empty() ? "-" : l.name, l.bytes,
                         l.digest.empty() ? "" : "  " + l.digest);
    }
  }
  for (const std::string& w : plan.warnings) out += "warning: " + w + "\n";
  return out;
}

std::string FormatPlanJson(const ConversionPlan& plan) {
  nlohmann::json j;
  j["architecture"] = plan.architecture;
  j["source_kind"] = plan.source_kind;
  j["input_bytes"] = plan.input_bytes;
  j["output_bytes"] = plan.output_bytes;
  j["parameters"] = plan.parameters;
  j["copied_files"] = plan.copied_files;
  j["warnings"] = plan.warnings;
  j["tensors"] = nlohmann::json::array();
  for (const PlannedTensor& t : plan.tensors) {
    nlohmann::json row = {{"name", t.name}, {"shape", t.shape}, {"dtype", DTypeName(t.dtype)},
                          {"source_dtype", DTypeName(t.source_dtype)}, {"output_bytes", t.output_bytes}};
    row["transform"] = t.transform == TensorTransform::kDecodeFp8 ? "decode-fp8"
                       : t.transform == TensorTransform::kCast    ? "cast"
                                                                  : "copy";
    row["sources"] = nlohmann::json::array();
    for (const PlannedSource& s : t.sources) {
      nlohmann::json src = {{"tensor", s.tensor}};
      if (!s.fp8_scale.empty()) src["fp8_scale"] = s.fp8_scale;
      if (!s.view.strides.empty() || s.view.offset != 0) {
        src["view"] = {{"offset", s.view.offset}, {"shape", s.view.shape}, {"strides", s.view.strides}};
      }
      row["sources"].push_back(src);
    }
    if (!t.steps.empty()) row["steps"] = t.steps;
    if (t.quant) {
      row["quant"] = {{"mode", ModeInfo(t.quant->mode).name}, {"bits", t.quant->bits}, {"group_size", t.quant->group_size}};
    } else {
      row["quant"] = nullptr;
    }
    if (!t.blob.empty()) row["blob"] = t.blob;
    j["tensors"].push_back(row);
  }
  if (!plan.manifest_path.empty()) {
    j["manifest"] = {{"path", plan.manifest_path}, {"layers", nlohmann::json::array()}};
    for (const PlannedLayer& l : plan.manifest_layers) {
      nlohmann::json layer = {{"mediaType", l.media_type}, {"name", l.name}, {"bytes", l.bytes}};
      if (!l.digest.empty()) layer["digest"] = l.digest;
      j["manifest"]["layers"].push_back(layer);
    }
  }
  return j.dump(2) + "\n";
}

}  // namespace stquant
