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

namespace {

// One mlx-layout output being written: its plan, its temporary directory and shard writers.
struct MlxOutput {
  const ConvertOptions* options = nullptr;
  model::PlanContext context;
  std::optional<output::OutputDir> dir;
  std::vector<OutputTensor> tensors;
  int shard_count = 0;
  std::vector<std::unique_ptr<Writer>> writers;
  std::map<std::string, const OutputTensor*> by_name;
  std::vector<TensorQuantError> quant_errors;

  output::WriteTarget Target(const std::string& name) const {
    Writer* w = writers[by_name.at(name)->shard].get();
    return output::WriteTarget{w, *w->IndexOf(name)};
  }
};

// Creates the temporary directory and every shard's header (all sizes are known), so that tensors
// can stream in.
Status OpenMlxOutput(MlxOutput& out) {
  STQ_ASSIGN_OR_RETURN(output::OutputDir dir, output::OutputDir::Create(out.options->output_dir, out.options->force));
  out.dir.emplace(std::move(dir));
  out.tensors = OutputTensors(out.context.plan);
  out.shard_count = AssignShards(out.tensors, out.options->shard_bytes);
  for (int s = 0; s < out.shard_count; ++s) {
    std::vector<TensorDecl> decls;
    for (const OutputTensor& t : out.tensors) {
      if (t.shard == s) decls.push_back(t.decl);
    }
    STQ_ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer,
                         Writer::Create(out.dir->PathOf(output::MlxShardName(s, out.shard_count)), std::move(decls),
                                        std::map<std::string, std::string>{{"format", "mlx"}}));
    out.writers.push_back(std::move(writer));
  }
  for (const OutputTensor& t : out.tensors) out.by_name[t.decl.name] = &t;
  return Status::Ok();
}

// The shards committed, then the index, config.json and copied files (the directory is renamed
// into place by the caller).
Status FinishMlxOutput(MlxOutput& out) {
  const Inventory& inv = *out.context.inventory;
  const ConversionPlan& plan = out.context.plan;
  for (auto& writer : out.writers) STQ_RETURN_IF_ERROR(writer->Commit());
  nlohmann::json index;
  index["metadata"] = {{"total_size", plan.output_bytes}, {"total_parameters", plan.parameters}};
  index["weight_map"] = nlohmann::json::object();
  for (const OutputTensor& t : out.tensors) {
    index["weight_map"][t.decl.name] = output::MlxShardName(t.shard, out.shard_count);
  }
  STQ_RETURN_IF_ERROR(output::WriteFileAtomically(out.dir->PathOf("model.safetensors.index.json"), index.dump(4) + "\n"));
  STQ_ASSIGN_OR_RETURN(std::string config, OutputConfig(inv, plan));
  STQ_RETURN_IF_ERROR(output::WriteFileAtomically(out.dir->PathOf("config.json"), config));
  for (const std::string& file : plan.copied_files) {
    STQ_RETURN_IF_ERROR(output::CopyFileAtomically(inv.path() + "/" + file, out.dir->PathOf(file)));
  }
  return Status::Ok();
}

ConvertSummary SummaryOf(MlxOutput& out, std::chrono::steady_clock::time_point start) {
  const ConversionPlan& plan = out.context.plan;
  ConvertSummary summary;
  summary.input_bytes = plan.input_bytes;
  summary.output_bytes = plan.output_bytes;
  summary.parameters = plan.parameters;
  summary.tensors = out.tensors.size();
  for (const PlannedTensor& t : plan.tensors) summary.quantized_tensors += t.quant.has_value();
  summary.shards = out.shard_count;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.peak_rss_bytes = PeakRssBytes();
  summary.warnings = plan.warnings;
  summary.quant_errors = std::move(out.quant_errors);
  return summary;
}

// Whether the outputs' plans read the same rows for every tensor, so that one read can feed them
// all (they differ only in quantization).
bool SameRows(const std::vector<MlxOutput>& outputs) {
  const std::vector<PlannedTensor>& first = outputs.front().context.plan.tensors;
  for (const MlxOutput& out : outputs) {
    const std::vector<PlannedTensor>& tensors = out.context.plan.tensors;
    if (tensors.size() != first.size()) return false;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const PlannedTensor &a = first[i], &b = tensors[i];
      if (a.name != b.name || a.shape != b.shape || a.dtype != b.dtype || a.transform != b.transform ||
          a.value_ops.size() != b.value_ops.size() || a.sources.size() != b.sources.size()) {
        return false;
      }
      for (size_t j = 0; j < a.sources.size(); ++j) {
        if (a.sources[j].tensor != b.sources[j].tensor || a.sources[j].view.offset != b.sources[j].view.offset ||
            a.sources[j].view.shape != b.sources[j].view.shape || a.sources[j].view.strides != b.sources[j].view.strides) {
          return false;
        }
      }
    }
  }
  return true;
}

// Writes every output of `outputs` (planned from one source, SameRows) in one pass over the
// source: each block of a tensor is read once and written to every output.
Result<std::vector<ConvertSummary>> WriteMlxOutputs(std::vector<MlxOutput>& outputs,
                                                    const std::function<void(const ConvertProgress&)>& progress,
                                                    std::chrono::steady_clock::time_point start) {
  for (MlxOutput& out : outputs) STQ_RETURN_IF_ERROR(OpenMlxOutput(out));
  const ConvertOptions& options = *outputs.front().options;
  const Inventory& inv = *outputs.front().context.inventory;
  const ConversionPlan& plan = outputs.front().context.plan;

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
    std::vector<output::RowDestination> destinations;
    std::vector<std::optional<output::QuantErrorMeter>> meters(outputs.size());
    for (size_t o = 0; o < outputs.size(); ++o) {
      const MlxOutput& out = outputs[o];
      const PlannedTensor& planned = out.context.plan.tensors[i];
      output::RowDestination d;
      if (!planned.quant) {
        d.copy = out.Target(planned.name);
      } else {
        const std::string base = ModulePath(planned.name);
        d.spec = *planned.quant;
        d.quantized = {out.Target(planned.name), out.Target(base + ".scales"), std::nullopt};
        if (ModeInfo(planned.quant->mode).has_biases) d.quantized.biases = out.Target(base + ".biases");
        if (out.options->measure_quant_error) d.quantized.error = &meters[o].emplace(planned.name, *planned.quant, rows.dtype);
      }
      destinations.push_back(d);
    }
    STQ_RETURN_IF_ERROR(output::WriteRows(rows, destinations, options.threads, on_block));
    for (size_t o = 0; o < outputs.size(); ++o) {
      if (meters[o]) outputs[o].quant_errors.push_back(meters[o]->Total());
    }
    ++state.tensors_done;
    if (progress) progress(state);
  }
  for (MlxOutput& out : outputs) STQ_RETURN_IF_ERROR(FinishMlxOutput(out).Annotate(out.options->output_dir));
  for (MlxOutput& out : outputs) STQ_RETURN_IF_ERROR(out.dir->Commit());
  std::vector<ConvertSummary> summaries;
  for (MlxOutput& out : outputs) summaries.push_back(SummaryOf(out, start));
  return summaries;
}

}  // namespace

Result<ConvertSummary> Convert(const ConvertOptions& options,
                               const std::function<void(const ConvertProgress&)>& progress) {
  if (options.layout == OutputLayout::kOllama) return output::ConvertToOllamaStore(options, progress);
  const auto start = std::chrono::steady_clock::now();
  STQ_ASSIGN_OR_RETURN(model::PlanContext context, model::BuildPlan(options));
  STQ_RETURN_IF_ERROR(output::Preflight(options, &context, output::ProjectMlxOutput(options, context)));
  if (context.prequant) return output::ConvertPrequantMlx(options, context, progress);  // already quantized
  std::vector<MlxOutput> outputs(1);
  outputs[0].options = &options;
  outputs[0].context = std::move(context);
  STQ_ASSIGN_OR_RETURN(std::vector<ConvertSummary> summaries, WriteMlxOutputs(outputs, progress, start));
  return std::move(summaries.front());
}

Result<std::vector<ConvertSummary>> ConvertMany(const std::vector<ConvertOptions>& outputs,
                                                const std::function<void(const ConvertProgress&)>& progress) {
  if (outputs.empty()) return Status::InvalidArgument("no output to convert to");
  std::vector<ConvertSummary> summaries;
  auto one_by_one = [&]() -> Result<std::vector<ConvertSummary>> {
    for (const ConvertOptions& options : outputs) {
      STQ_ASSIGN_OR_RETURN(ConvertSummary summary, Convert(options, progress));
      summaries.push_back(std::move(summary));
    }
    return summaries;
  };
  const bool all_mlx = std::all_of(outputs.begin(), outputs.end(), [&](const ConvertOptions& o) {
    return o.layout == OutputLayout::kMlx && o.source_dir == outputs.front().source_dir;
  });
  if (outputs.size() == 1 || !all_mlx) return one_by_one();
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (outputs[i].output_dir == outputs[j].output_dir) {
        return Status::InvalidArgument(fmt::format("two outputs write '{}'", outputs[i].output_dir));
      }
    }
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<MlxOutput> planned(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    planned[i].options = &outputs[i];
    STQ_ASSIGN_OR_RETURN(planned[i].context, model::BuildPlan(outputs[i]));
    STQ_RETURN_IF_ERROR(output::Preflight(outputs[i], &planned[i].context,
                                          output::ProjectMlxOutput(outputs[i], planned[i].context)));
  }
  // An already-quantized source is imported tensor by tensor in its own way: one output at a time.
  const bool prequant = std::any_of(planned.begin(), planned.end(), [](const MlxOutput& o) { return o.context.prequant; });
  if (prequant || !SameRows(planned)) return one_by_one();
  return WriteMlxOutputs(planned, progress, start);
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
