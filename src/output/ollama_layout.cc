#include "output/ollama_layout.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/ollama_meta.h"
#include "model/ollama_policy.h"
#include "model/plan_internal.h"
#include "model/prequant.h"
#include "output/ollama_store.h"
#include "output/planned_rows.h"
#include "output/preflight.h"
#include "output/prequant_write.h"
#include "output/tensor_stream.h"
#include "util/input_file.h"
#include "util/json_input.h"

namespace stquant::output {

namespace {

namespace fs = std::filesystem;
using safetensors::TensorDecl;
using safetensors::Writer;

struct Progress {
  ConvertProgress state;
  const std::function<void(const ConvertProgress&)>* callback = nullptr;
};

// Moves committed tensor blobs into the store (SHA-256 of the file, rename to its digest name) on
// a thread of its own while the next blob is being written: hashing is one sequential pass that
// would otherwise leave the other cores idle. One blob is in flight at a time; its layer takes the
// place in `layers` it was given when added, so the order of the layers is the order of Add.
class BlobQueue {
 public:
  BlobQueue(OllamaStore& store, std::vector<OllamaLayer>& layers) : store_(store), layers_(layers) {}
  ~BlobQueue() { (void)Drain(); }  // an error was returned already, or Drain was called
  BlobQueue(const BlobQueue&) = delete;
  BlobQueue& operator=(const BlobQueue&) = delete;

  OllamaStore& store() { return store_; }

  Status Add(std::string temp, std::string blob_name) {
    STQ_RETURN_IF_ERROR(Drain());
    slot_ = layers_.size();
    layers_.emplace_back();
    pending_ = std::async(std::launch::async, [this, temp = std::move(temp), name = std::move(blob_name)] {
      return store_.AddBlobFile(temp, kOllamaMediaTensor, name);
    });
    return Status::Ok();
  }

  // Waits for the blob in flight; its error, if any.
  Status Drain() {
    if (!pending_.valid()) return Status::Ok();
    Result<OllamaLayer> layer = pending_.get();
    STQ_RETURN_IF_ERROR(layer.status());
    layers_[slot_] = std::move(*layer);
    return Status::Ok();
  }

 private:
  OllamaStore& store_;
  std::vector<OllamaLayer>& layers_;
  std::future<Result<OllamaLayer>> pending_;
  size_t slot_ = 0;
};

// Writes one tensor blob into the store: `decls` (final names) and `metadata`, the data written by
// `fill` into the writer.
Status WriteBlob(BlobQueue& blobs, const std::string& blob_name, std::vector<TensorDecl> decls,
                 const std::optional<std::map<std::string, std::string>>& metadata,
                 const std::function<Status(Writer&)>& fill, ConvertSummary& summary) {
  const std::string temp = blobs.store().NewTempPath();
  STQ_ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer,
                       Writer::Create(temp, std::move(decls), metadata, Writer::CacheUse::kKeep));  // hashed next
  STQ_RETURN_IF_ERROR(fill(*writer));
  STQ_RETURN_IF_ERROR(writer->Commit().Annotate("write blob " + blob_name));
  summary.output_bytes += writer->file_size();
  return blobs.Add(temp, blob_name);
}

// After one output tensor (with its scales) is written: `status` annotated with blob and tensor.
Status TensorDone(const Status& status, const std::string& blob_name, const std::string& name, Progress& progress,
                  ConvertSummary& summary) {
  STQ_RETURN_IF_ERROR(status.Annotate(fmt::format("blob {}: tensor {}", blob_name, name)));
  ++summary.tensors;
  ++progress.state.tensors_done;
  if (*progress.callback) (*progress.callback)(progress.state);
  return Status::Ok();
}

// Writes one tensor blob: the planned tensors `members` (in order), names prefixed by `prefix`,
// their values read from `rows_of`.
Status WriteTensorBlob(BlobQueue& blobs, const model::Inventory& inv,
                                    const std::vector<const PlannedTensor*>& members, const std::string& prefix,
                                    const std::function<RowSource(const PlannedTensor&)>& rows_of,
                                    const ConvertOptions& options, Progress& progress, ConvertSummary& summary) {
  std::vector<TensorDecl> decls;
  for (const PlannedTensor* t : members) {
    const std::string name = prefix + t->name;
    if (!t->quant) {
      decls.push_back({name, t->dtype, t->shape});
      continue;
    }
    std::vector<int64_t> packed = t->shape, scales = t->shape;
    packed.back() = PackedWordsPerRow(*t->quant, t->shape.back());
    scales.back() = GroupsPerRow(*t->quant, t->shape.back());
    decls.push_back({name, DType::kU32, packed});
    decls.push_back({name + ".scale", ScaleDType(*t->quant, t->dtype), scales});
    if (ModeInfo(t->quant->mode).has_biases) decls.push_back({name + ".bias", t->dtype, scales});
    if (t->quant->global_scale) decls.push_back({name + ".global_scale", DType::kF32, {}});
  }
  // __metadata__ (ollama-create-spec §6.5 step 6): uniform quant_type/group_size, else per tensor;
  // none without quantization.
  std::optional<std::map<std::string, std::string>> metadata;
  const bool any = std::any_of(members.begin(), members.end(), [](const PlannedTensor* t) { return t->quant.has_value(); });
  if (any) {
    metadata.emplace();
    const bool uniform = std::all_of(members.begin(), members.end(), [&](const PlannedTensor* t) {
      return t->quant && model::OllamaTypeOf(*t->quant) == model::OllamaTypeOf(*members.front()->quant) &&
             t->quant->group_size == members.front()->quant->group_size;
    });
    for (const PlannedTensor* t : members) {
      if (!t->quant) continue;
      const std::string type = QuantTypeName(*t->quant), group = std::to_string(t->quant->group_size);
      if (uniform) {
        (*metadata)["quant_type"] = type;
        (*metadata)["group_size"] = group;
      } else {
        (*metadata)[prefix + t->name + ".quant_type"] = type;
        (*metadata)[prefix + t->name + ".group_size"] = group;
      }
    }
  }
  const std::string blob_name = prefix + members.front()->blob;
  auto fill = [&](Writer& writer) -> Status {
    auto target = [&](const std::string& name) { return WriteTarget{&writer, *writer.IndexOf(name)}; };
    for (const PlannedTensor* t : members) {
      const std::string name = prefix + t->name;
      progress.state.current = name;
      const RowSource rows = rows_of(*t);
      uint64_t source_bytes = 0;
      for (const PlannedSource& s : t->sources) source_bytes += inv.FindInfo(s.tensor)->nbytes();
      const uint64_t value_bytes =
          std::max<uint64_t>(1, static_cast<uint64_t>(rows.rows) * rows.cols * DTypeBits(t->dtype) / 8);
      auto on_block = [&](uint64_t bytes) {
        progress.state.bytes_done += bytes * source_bytes / value_bytes;
        if (*progress.callback) (*progress.callback)(progress.state);
      };
      Status status;
      if (!t->quant) {
        status = CopyRows(rows, target(name), options.threads, on_block);
      } else {
        float global_scale = 0.0f;
        if (t->quant->global_scale) {
          STQ_ASSIGN_OR_RETURN(global_scale, RowsAbsMax(rows));
          uint8_t bytes[4];
          std::memcpy(bytes, &global_scale, 4);
          STQ_RETURN_IF_ERROR(target(name + ".global_scale").Write(0, bytes));
        }
        QuantizedTargets targets{target(name), target(name + ".scale"), std::nullopt};
        if (ModeInfo(t->quant->mode).has_biases) targets.biases = target(name + ".bias");
        status = QuantizeRowSource(rows, *t->quant, global_scale, targets, options.threads, on_block);
        ++summary.quantized_tensors;
      }
      STQ_RETURN_IF_ERROR(TensorDone(status, blob_name, name, progress, summary));
    }
    return Status::Ok();
  };
  return WriteBlob(blobs, blob_name, std::move(decls), metadata, fill, summary);
}

// An already-quantized source (ollama-create-spec §6.3): the blobs of model::OllamaPrequantBlobs,
// each tensor a byte transform of source tensors (WritePrequantTensor); with --requantize a layer's
// blob is instead the planned float tensor "<layer>.weight" of its dequantized values, quantized
// as planned.
Status WritePrequantBlobs(BlobQueue& blobs, const model::PlanContext& context, const std::string& prefix,
                          const ConvertOptions& options, Progress& progress, ConvertSummary& summary) {
  const model::Inventory& inv = *context.inventory;
  const model::PrequantPlan& pq = *context.prequant;
  STQ_ASSIGN_OR_RETURN(std::vector<model::OllamaPrequantBlob> prequant_blobs,
                       model::OllamaPrequantBlobs(pq, inv.path(), options.requantize));
  std::map<std::string, const PlannedTensor*> planned;  // by blob: a requantized layer's one tensor
  for (const PlannedTensor& t : context.plan.tensors) planned.emplace(t.blob, &t);
  for (const model::OllamaPrequantBlob& blob : prequant_blobs) {
    std::vector<const model::PrequantTensor*> tensors;
    for (size_t i : blob.tensors) tensors.push_back(&pq.tensors[i]);
    const std::string blob_name = prefix + blob.name;
    // A float-quantized (FP8) layer of a mixed-precision container, decoded and quantized as planned.
    if (const auto decoded = planned.find(blob.name);
        decoded != planned.end() && decoded->second->transform == TensorTransform::kDecodeFp8 && decoded->second->quant) {
      auto rows_of = [&](const PlannedTensor& t) { return PlannedRows(inv, t, options.profile); };
      STQ_RETURN_IF_ERROR(WriteTensorBlob(blobs, inv, {decoded->second}, prefix, rows_of, options, progress, summary));
      continue;
    }
    if (options.requantize && !blob.layer.empty()) {
      const auto layer = std::find_if(pq.layers.begin(), pq.layers.end(),
                                      [&](const model::PrequantLayer& l) { return l.path == blob.layer; });
      const auto tensor = planned.find(blob.name);
      if (layer == pq.layers.end() || tensor == planned.end()) {
        return Status::Internal(fmt::format("{}: layer '{}' is missing from the plan", inv.path(), blob.layer));
      }
      auto rows_of = [&](const PlannedTensor& t) {
        return PrequantLayerRows(inv, *layer, tensors, t.shape, t.dtype, pq.kind);
      };
      STQ_RETURN_IF_ERROR(WriteTensorBlob(blobs, inv, {tensor->second}, prefix, rows_of, options, progress, summary));
      continue;
    }
    std::vector<TensorDecl> decls;
    for (const model::PrequantTensor* t : tensors) {
      decls.push_back({prefix + model::OllamaPrequantName(*t), t->dtype, t->shape});
    }
    std::optional<std::map<std::string, std::string>> metadata;
    if (!blob.metadata.empty()) metadata = blob.metadata;
    auto fill = [&](Writer& writer) -> Status {
      auto on_bytes = [&](uint64_t bytes) {
        progress.state.bytes_done += bytes;
        if (*progress.callback) (*progress.callback)(progress.state);
      };
      for (const model::PrequantTensor* t : tensors) {
        const std::string name = prefix + model::OllamaPrequantName(*t);
        progress.state.current = name;
        const Status status = WritePrequantTensor(inv, *t, WriteTarget{&writer, *writer.IndexOf(name)}, on_bytes);
        STQ_RETURN_IF_ERROR(TensorDone(status, blob_name, name, progress, summary));
      }
      if (!blob.layer.empty()) ++summary.quantized_tensors;
      return Status::Ok();
    };
    STQ_RETURN_IF_ERROR(WriteBlob(blobs, blob_name, std::move(decls), metadata, fill, summary));
  }
  return Status::Ok();
}

// The tensor blobs of a plan, in plan (blob) order.
Status WritePlanBlobs(BlobQueue& blobs, const model::PlanContext& context, const std::string& prefix,
                      const ConvertOptions& options, Progress& progress, ConvertSummary& summary) {
  if (context.prequant) return WritePrequantBlobs(blobs, context, prefix, options, progress, summary);
  const std::vector<PlannedTensor>& tensors = context.plan.tensors;
  auto rows_of = [&](const PlannedTensor& t) { return PlannedRows(*context.inventory, t, options.profile); };
  for (size_t i = 0; i < tensors.size();) {
    std::vector<const PlannedTensor*> members;
    size_t j = i;
    while (j < tensors.size() && tensors[j].blob == tensors[i].blob) members.push_back(&tensors[j++]);
    STQ_RETURN_IF_ERROR(WriteTensorBlob(blobs, *context.inventory, members, prefix, rows_of, options, progress, summary));
    i = j;
  }
  return Status::Ok();
}

// Every *.json of the source directory but the index, sorted (ollama-create-spec §4).
Result<std::vector<std::string>> ConfigFiles(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (!file.ends_with(".json") || file == "model.safetensors.index.json" || !entry.is_regular_file(ec)) continue;
    files.push_back(file);
  }
  if (ec) return Status::IoError(fmt::format("list '{}': {}", dir, ec.message()));
  std::sort(files.begin(), files.end());
  return files;
}

Status WriteConfigLayers(OllamaStore& store, const std::string& dir, const std::string& prefix,
                         std::vector<OllamaLayer>& layers) {
  STQ_ASSIGN_OR_RETURN(const std::vector<std::string> files, ConfigFiles(dir));
  if (!std::binary_search(files.begin(), files.end(), std::string("config.json"))) {
    return Status::InvalidInput("config.json not found in " + dir);
  }
  for (const std::string& file : files) {
    STQ_ASSIGN_OR_RETURN(OllamaLayer layer, store.AddBlobCopy(dir + "/" + file, kOllamaMediaJson, prefix + file));
    layers.push_back(std::move(layer));
  }
  return Status::Ok();
}

// The ConfigV2 file_type (ollama-create-spec §5, §9.3): the requested type; for a source imported
// as it is, the quant_type every quantized layer's blob shares ("" when they differ).
std::string FileType(const model::PlanContext& context) {
  if (context.plan.default_quant) return model::OllamaTypeOf(*context.plan.default_quant);
  if (!context.prequant) return "";
  Result<std::vector<model::OllamaPrequantBlob>> blobs =
      model::OllamaPrequantBlobs(*context.prequant, context.inventory->path(), /*requantize=*/false);
  if (!blobs.ok()) return "";  // not reached: the plan checked the same blobs
  std::vector<std::string> types;  // of the layer blobs, and of decoded FP8 weights
  for (const model::OllamaPrequantBlob& blob : *blobs) {
    if (!blob.metadata.empty()) types.push_back(blob.metadata.at("quant_type"));
  }
  for (const PlannedTensor& t : context.plan.tensors) {
    if (t.transform == TensorTransform::kDecodeFp8 && t.quant) types.push_back(model::OllamaTypeOf(*t.quant));
  }
  if (types.empty() || std::any_of(types.begin(), types.end(), [&](const std::string& t) { return t != types[0]; })) {
    return "";
  }
  return types.front();
}

uint64_t PeakRss() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;
}

// What an import reads before it writes anything (ollama-create-spec §1): the Modelfile, the
// source (or, FROM an existing model, that model's manifest and config), the plans of the model and
// of its draft, and where it goes. Shared by the import and its --dry-run.
struct PreparedImport {
  ConvertOptions options;  // source_dir and draft_dir resolved from the Modelfile
  model::OllamaModelfile modelfile;
  OllamaName name;
  std::string root;
  std::optional<model::PlanContext> context;  // none FROM an existing model
  std::optional<model::PlanContext> draft;
  nlohmann::ordered_json draft_info;
  // FROM an existing model of the store: its name, manifest and ConfigV2 (reused as they are).
  std::optional<OllamaName> base;
  OllamaManifest base_manifest;
  nlohmann::ordered_json base_config;
};

// FROM names an existing model of the store (not a directory): "FROM qwen3:8b" as in ollama.
// The manifest is validated by ParseOllamaManifest (digests, sizes, names).
Result<bool> ReadBaseModel(PreparedImport& im) {
  const std::string& from = im.options.source_dir;
  std::error_code ec;
  if (fs::exists(from, ec)) return false;
  Result<OllamaName> base = ParseOllamaName(from);
  if (!base.ok()) return false;
  const OllamaStore reader = OllamaStore::OpenForReading(im.root);
  Result<OllamaManifest> manifest = reader.ReadManifest(*base);
  if (!manifest.ok()) {
    if (manifest.status().code() == StatusCode::kInvalidArgument) return false;  // no model of that name
    return manifest.status();
  }
  if (!manifest->config) return Status::InvalidInput(fmt::format("model '{}': manifest has no config digest", from));
  const std::string config_path = reader.BlobPath(manifest->config->digest);
  STQ_ASSIGN_OR_RETURN(std::string bytes, util::ReadRegularFile(config_path, util::kJsonConfigLimit));
  STQ_ASSIGN_OR_RETURN(im.base_config, util::ParseOrderedJson(bytes, config_path, util::kJsonConfigLimit));
  if (!im.base_config.is_object()) return Status::InvalidInput(fmt::format("model '{}': config blob is not a JSON object", from));
  if (im.base_config.value("model_format", "") != "safetensors") {
    return Status::InvalidArgument(fmt::format("base model {} is not a safetensors model", from));
  }
  // Every layer's blob present: the new manifest names them all.
  bool has_config_json = false;
  for (const OllamaLayer& layer : manifest->layers) {
    if (!fs::is_regular_file(reader.BlobPath(layer.digest), ec)) {
      return Status::InvalidInput(
          fmt::format("model '{}': blob {} of its manifest is missing from the store", from, layer.digest));
    }
    has_config_json |= layer.name == "config.json";
  }
  if (!has_config_json) return Status::InvalidInput(fmt::format("base model {} does not contain config.json", from));
  im.base = *base;
  im.base_manifest = std::move(*manifest);
  return true;
}

Result<PreparedImport> PrepareImport(const ConvertOptions& given) {
  PreparedImport im;
  im.options = given;
  ConvertOptions& options = im.options;
  // The Modelfile (ollama-create-spec §1).
  if (!options.modelfile.empty()) {
    STQ_ASSIGN_OR_RETURN(std::string text, util::ReadRegularFile(options.modelfile, util::kTextFileLimit));
    const std::string dir = fs::path(options.modelfile).parent_path().string();
    STQ_ASSIGN_OR_RETURN(im.modelfile, model::ParseOllamaModelfile(text, dir.empty() ? "." : dir));
    if (options.source_dir.empty()) options.source_dir = im.modelfile.from;
    if (options.draft_dir.empty()) options.draft_dir = im.modelfile.draft;
  }
  if (options.source_dir.empty()) options.source_dir = ".";
  if (options.draft_quant && options.draft_dir.empty()) {
    return Status::InvalidArgument("--draft-quantize requires a DRAFT model");
  }
  if (options.model_name.empty()) return Status::InvalidArgument("the ollama layout needs a model name (--name NAME)");
  STQ_ASSIGN_OR_RETURN(im.name, ParseOllamaName(options.model_name));
  STQ_ASSIGN_OR_RETURN(im.root, ResolveOllamaModelsDir(options.models_dir));
  STQ_ASSIGN_OR_RETURN(const bool from_base, ReadBaseModel(im));
  if (from_base && options.quant) {
    return Status::InvalidArgument(fmt::format(
        "FROM {} names an existing model, whose layers are reused as they are: -q applies to a source directory",
        options.source_dir));
  }
  if (!from_base && !model::IsSafetensorsModelDir(options.source_dir)) {
    return Status::InvalidArgument(fmt::format(
        "{} is not a supported safetensors model directory (needs config.json + *.safetensors), nor a model of the "
        "store {}",
        options.source_dir, im.root));
  }
  if (!options.draft_dir.empty() && !model::IsSafetensorsModelDir(options.draft_dir)) {
    return Status::InvalidArgument(fmt::format("draft {} is not a supported safetensors model directory", options.draft_dir));
  }

  // Everything that can fail on the input is checked before the first blob is written.
  if (!from_base) {
    STQ_ASSIGN_OR_RETURN(model::PlanContext context, model::BuildPlan(options));
    im.context = std::move(context);
  }
  if (!options.draft_dir.empty()) {
    ConvertOptions draft_options = options;
    draft_options.source_dir = options.draft_dir;
    draft_options.quant = options.draft_quant;
    STQ_ASSIGN_OR_RETURN(model::PlanContext d, model::BuildPlan(draft_options, /*draft=*/true));
    const std::string arch = model::OllamaArchitecture(d.inventory->config());
    if (arch.empty()) return Status::InvalidInput("draft architecture not found in " + options.draft_dir);
    im.draft_info["model_format"] = "safetensors";
    im.draft_info["architecture"] = arch;
    im.draft_info["tensor_prefix"] = "draft.";
    im.draft_info["config"] = "draft/config.json";
    im.draft = std::move(d);
  }
  return im;
}

// The layers of a base model's manifest that the import keeps: all but those of a kind the
// Modelfile gives anew (TEMPLATE, SYSTEM, LICENSE, PARAMETER), as ollama replaces them.
std::vector<OllamaLayer> BaseLayers(const PreparedImport& im) {
  std::vector<OllamaLayer> layers;
  const model::OllamaModelfile& mf = im.modelfile;
  for (OllamaLayer layer : im.base_manifest.layers) {
    layer.reused = true;
    const bool replaced = (layer.media_type == kOllamaMediaTemplate && !mf.template_text.empty()) ||
                          (layer.media_type == kOllamaMediaSystem && !mf.system.empty()) ||
                          (layer.media_type == kOllamaMediaLicense && !mf.license.empty()) ||
                          (layer.media_type == kOllamaMediaParams && !mf.parameters.empty());
    if (!replaced) layers.push_back(std::move(layer));
  }
  return layers;
}

}  // namespace

Result<ConversionPlan> PlanOllamaImport(const ConvertOptions& given) {
  STQ_ASSIGN_OR_RETURN(PreparedImport im, PrepareImport(given));
  ConversionPlan plan;
  if (im.context) plan = im.context->plan;
  if (im.base) {
    plan.architecture = im.base_config.value("architecture", "");
    plan.source_kind = "ollama model " + im.base->Display();
    for (const OllamaLayer& l : BaseLayers(im)) plan.manifest_layers.push_back({l.media_type, l.name, l.size, l.digest});
  }
  auto add_tensor_layers = [&](const ConversionPlan& p, const std::string& prefix) {
    for (const PlannedTensor& t : p.tensors) {
      const std::string name = prefix + t.blob;
      if (plan.manifest_layers.empty() || plan.manifest_layers.back().name != name ||
          plan.manifest_layers.back().media_type != kOllamaMediaTensor) {
        plan.manifest_layers.push_back({kOllamaMediaTensor, name, 0, ""});
      }
      plan.manifest_layers.back().bytes += t.output_bytes;
    }
  };
  auto add_config_layers = [&](const std::string& dir, const std::string& prefix) -> Status {
    STQ_ASSIGN_OR_RETURN(const std::vector<std::string> files, ConfigFiles(dir));
    for (const std::string& file : files) {
      std::error_code ec;
      const uint64_t size = fs::file_size(dir + "/" + file, ec);
      plan.manifest_layers.push_back({kOllamaMediaJson, prefix + file, ec ? 0 : size, ""});
    }
    return Status::Ok();
  };
  if (im.context) {
    add_tensor_layers(plan, "");
    STQ_RETURN_IF_ERROR(add_config_layers(im.options.source_dir, ""));
  }
  if (im.draft) {
    for (PlannedTensor t : im.draft->plan.tensors) {
      t.name = "draft." + t.name;
      t.blob = "draft." + t.blob;
      plan.tensors.push_back(std::move(t));
    }
    add_tensor_layers(im.draft->plan, "draft.");
    STQ_RETURN_IF_ERROR(add_config_layers(im.options.draft_dir, "draft/"));
    plan.input_bytes += im.draft->plan.input_bytes;
    plan.output_bytes += im.draft->plan.output_bytes;
    plan.parameters += im.draft->plan.parameters;
  }
  const model::OllamaModelfile& mf = im.modelfile;
  for (const auto& [text, media] : {std::pair{&mf.template_text, kOllamaMediaTemplate},
                                    std::pair{&mf.system, kOllamaMediaSystem},
                                    std::pair{&mf.license, kOllamaMediaLicense}}) {
    if (!text->empty()) plan.manifest_layers.push_back({media, "", text->size(), ""});
  }
  if (!mf.parameters.empty()) {
    plan.manifest_layers.push_back({kOllamaMediaParams, "", mf.parameters.dump().size() + 1, ""});
  }
  plan.manifest_path = im.root + "/manifests/" + im.name.ManifestPath();
  return plan;
}

Result<ConvertSummary> ConvertToOllamaStore(const ConvertOptions& given,
                                            const std::function<void(const ConvertProgress&)>& callback) {
  const auto start = std::chrono::steady_clock::now();
  STQ_ASSIGN_OR_RETURN(PreparedImport im, PrepareImport(given));
  const ConvertOptions& options = im.options;
  const model::OllamaModelfile& modelfile = im.modelfile;
  const OllamaName& name = im.name;
  std::optional<model::PlanContext>& draft = im.draft;
  const uint64_t modelfile_bytes = modelfile.template_text.size() + modelfile.system.size() +
                                   modelfile.license.size() + modelfile.parameters.dump().size();
  const model::PlanContext* planned = im.context ? &*im.context : nullptr;
  STQ_RETURN_IF_ERROR(Preflight(options, planned,
                                ProjectOllamaOutput(options, im.root, planned, draft ? &*draft : nullptr, modelfile_bytes),
                                {im.root + "/blobs", im.root + "/manifests"}));
  STQ_ASSIGN_OR_RETURN(OllamaStore store, OllamaStore::Open(im.root));

  ConvertSummary summary;
  Progress progress;
  progress.callback = &callback;
  progress.state.tensors_total =
      (im.context ? im.context->plan.tensors.size() : 0) + (draft ? draft->plan.tensors.size() : 0);
  progress.state.bytes_total = (im.context ? im.context->plan.input_bytes : 0) + (draft ? draft->plan.input_bytes : 0);

  std::vector<OllamaLayer> layers;
  BlobQueue blobs(store, layers);
  if (im.base) {
    // FROM an existing model: its layers are reused as they are (their blobs are in the store).
    layers = BaseLayers(im);
  } else {
    STQ_RETURN_IF_ERROR(WritePlanBlobs(blobs, *im.context, "", options, progress, summary));
    STQ_RETURN_IF_ERROR(WriteConfigLayers(store, options.source_dir, "", layers));
  }
  if (draft) {
    STQ_RETURN_IF_ERROR(WritePlanBlobs(blobs, *draft, "draft.", options, progress, summary));
    STQ_RETURN_IF_ERROR(WriteConfigLayers(store, options.draft_dir, "draft/", layers));
  }
  STQ_RETURN_IF_ERROR(blobs.Drain());
  auto text_layer = [&](const std::string& text, const char* media) -> Status {
    if (text.empty()) return Status::Ok();
    STQ_ASSIGN_OR_RETURN(OllamaLayer layer, store.AddBlobBytes(text, media, ""));
    layers.push_back(std::move(layer));
    return Status::Ok();
  };
  STQ_RETURN_IF_ERROR(text_layer(modelfile.template_text, kOllamaMediaTemplate));
  STQ_RETURN_IF_ERROR(text_layer(modelfile.system, kOllamaMediaSystem));
  STQ_RETURN_IF_ERROR(text_layer(modelfile.license, kOllamaMediaLicense));
  if (!modelfile.parameters.empty()) STQ_RETURN_IF_ERROR(text_layer(modelfile.parameters.dump() + "\n", kOllamaMediaParams));

  // The ConfigV2 config blob (ollama-create-spec §9.3, §9.4); FROM an existing model, a copy of
  // its own with the Modelfile's and the draft's fields set anew.
  nlohmann::ordered_json config_v2;
  if (im.base) {
    config_v2 = im.base_config;
    if (!modelfile.parser.empty()) config_v2["parser"] = modelfile.parser;
    if (!modelfile.renderer.empty()) config_v2["renderer"] = modelfile.renderer;
    if (!modelfile.requires_version.empty()) config_v2["requires"] = modelfile.requires_version;
    if (draft) config_v2["draft"] = im.draft_info;
  }
  const model::PlanContext* context = im.context ? &*im.context : nullptr;
  std::string chat_template;
  if (context) {
    STQ_ASSIGN_OR_RETURN(chat_template, model::ReadChatTemplate(options.source_dir));
  }
  const nlohmann::json& config = context ? context->inventory->config() : nlohmann::json::object();
  const std::string parser =
      !modelfile.parser.empty() ? modelfile.parser : model::OllamaParserName(config, chat_template);
  const std::string renderer =
      !modelfile.renderer.empty() ? modelfile.renderer : model::OllamaRendererName(config, chat_template);
  if (!im.base) {
  config_v2["model_format"] = "safetensors";
  config_v2["model_family"] = "";
  config_v2["model_families"] = nullptr;
  config_v2["model_type"] = "";
  config_v2["file_type"] = FileType(*context);
  if (!renderer.empty()) config_v2["renderer"] = renderer;
  if (!parser.empty()) config_v2["parser"] = parser;
  config_v2["requires"] = modelfile.requires_version.empty() ? model::kOllamaMinVersion : modelfile.requires_version;
  config_v2["capabilities"] = model::OllamaCapabilities(config, chat_template, parser);
  if (draft) config_v2["draft"] = im.draft_info;
  config_v2["architecture"] = "";
  config_v2["os"] = "";
  config_v2["rootfs"] = {{"type", "layers"}, {"diff_ids", nullptr}};
  }
  STQ_ASSIGN_OR_RETURN(OllamaLayer config_layer, store.AddBlobBytes(config_v2.dump(), kOllamaMediaConfig, ""));

  STQ_ASSIGN_OR_RETURN(summary.manifest_path, store.WriteManifest(name, config_layer, layers));
  summary.input_bytes = progress.state.bytes_total;
  summary.parameters = (context ? context->plan.parameters : 0) + (draft ? draft->plan.parameters : 0);
  summary.layers = layers.size();
  for (const OllamaLayer& l : layers) summary.blobs_reused += l.reused;
  summary.shards = 0;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.peak_rss_bytes = PeakRss();
  return summary;
}

}  // namespace stquant::output
