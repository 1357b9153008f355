#include "output/ollama_layout.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>

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
#include "output/read_ahead.h"
#include "output/tensor_stream.h"
#include "util/input_file.h"
#include "util/json_input.h"
#include "util/thread_pool.h"

namespace stquant::output {

namespace {

namespace fs = std::filesystem;
using safetensors::TensorDecl;
using safetensors::Writer;

// What the blobs being written share (several at once for an import of an already-quantized
// source): progress, the summary's counts and the read-ahead, under one lock.
class Tally {
 public:
  Tally(const std::function<void(const ConvertProgress&)>& callback, ConvertSummary& summary)
      : callback_(callback), summary_(summary) {}

  void Start(uint64_t tensors, uint64_t bytes, ReadAhead* read_ahead) {
    state_.tensors_total = tensors;
    state_.bytes_total = bytes;
    read_ahead_ = read_ahead;
  }
  uint64_t bytes_total() const { return state_.bytes_total; }
  void Current(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    state_.current = name;
  }
  // `bytes` more of the source consumed.
  void Consumed(uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    state_.bytes_done += bytes;
    if (read_ahead_) read_ahead_->ConsumedUpTo(state_.bytes_done);
    if (callback_) callback_(state_);
  }
  // After one output tensor (with its scales) is written: `status` annotated with blob and tensor.
  Status TensorDone(const Status& status, const std::string& blob_name, const std::string& name, bool quantized) {
    STQ_RETURN_IF_ERROR(status.Annotate(fmt::format("blob {}: tensor {}", blob_name, name)));
    std::lock_guard<std::mutex> lock(mu_);
    ++summary_.tensors;
    summary_.quantized_tensors += quantized;
    ++state_.tensors_done;
    if (callback_) callback_(state_);
    return Status::Ok();
  }
  void BlobWritten(uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    summary_.output_bytes += bytes;
  }
  // --report: one quantized tensor's error (blobs finish in any order: sorted by name at the end).
  void QuantError(TensorQuantError error) {
    std::lock_guard<std::mutex> lock(mu_);
    summary_.quant_errors.push_back(std::move(error));
  }

 private:
  const std::function<void(const ConvertProgress&)>& callback_;
  ConvertSummary& summary_;
  ReadAhead* read_ahead_ = nullptr;
  std::mutex mu_;
  ConvertProgress state_;
};

// The tensor blobs. Each is written to a temporary file of the store, its SHA-256 taken in file
// order while its bytes are produced (safetensors::Writer's in-order tap: never read back), then
// committed in the background while the next blobs are written: its last chunk writes waited for,
// fsynced, renamed onto its digest name. Up to kMaxCommits commits run at once, so that their
// fsyncs overlap: one after the other, each waits for the disk (on the machine of
// docs/performance.md, 194 small files took 1.1 s to fsync one by one, 28 ms from 32 threads).
// The layers take the places reserved for them, whatever order blobs finish in.
class TensorBlobs {
 public:
  static constexpr size_t kMaxCommits = 32;

  TensorBlobs(OllamaStore& store, std::vector<OllamaLayer>& layers, Tally& tally)
      : store_(store), layers_(layers), tally_(tally) {}
  ~TensorBlobs() { (void)Drain(); }  // an error was returned already, or Drain was called
  TensorBlobs(const TensorBlobs&) = delete;
  TensorBlobs& operator=(const TensorBlobs&) = delete;

  Tally& tally() { return tally_; }

  // Reserves the next `n` places of the layers, for blobs written later; returns the first.
  // REQUIRES: no Write in progress.
  size_t Reserve(size_t n) {
    layers_.resize(layers_.size() + n);
    return layers_.size() - n;
  }

  // Writes one blob into layer place `slot`: `decls` (final names) and `metadata`, the data
  // written by `fill` into the writer. Thread-safe (for different slots).
  Status Write(size_t slot, const std::string& blob_name, std::vector<TensorDecl> decls,
               const std::optional<std::map<std::string, std::string>>& metadata,
               const std::function<Status(Writer&)>& fill) {
    const std::string temp = store_.NewTempPath();
    auto sha = std::make_shared<Sha256>();
    STQ_ASSIGN_OR_RETURN(std::shared_ptr<Writer> writer,
                         Writer::Create(temp, std::move(decls), metadata,
                                        [sha](std::span<const uint8_t> bytes) { sha->Update(bytes); }));
    STQ_RETURN_IF_ERROR(fill(*writer));
    tally_.BlobWritten(writer->file_size());
    // Every write has returned: the tap has seen the whole file.
    std::string hex = sha->HexDigest();
    std::unique_lock<std::mutex> lock(mu_);
    STQ_RETURN_IF_ERROR(CollectLocked(kMaxCommits - 1, lock));
    pending_.push_back({slot, std::async(std::launch::async, [this, writer, temp, hex = std::move(hex), blob_name] {
                          return Commit(*writer, temp, hex, blob_name);
                        })});
    return Status::Ok();
  }

  // Waits for every commit in flight; the first error, if any.
  Status Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    return CollectLocked(0, lock);
  }

 private:
  struct Pending {
    size_t slot = 0;
    std::future<Result<OllamaLayer>> layer;
  };

  Result<OllamaLayer> Commit(Writer& writer, const std::string& temp, const std::string& hex,
                             const std::string& blob_name) {
    STQ_RETURN_IF_ERROR(writer.Commit().Annotate("write blob " + blob_name));
    return store_.AddBlobFile(temp, hex, kOllamaMediaTensor, blob_name);
  }

  // Waits for the oldest commits until at most `keep` are in flight; the first error seen.
  Status CollectLocked(size_t keep, std::unique_lock<std::mutex>& lock) {
    Status first;
    while (pending_.size() > keep) {
      Pending p = std::move(pending_.front());
      pending_.pop_front();
      lock.unlock();
      Result<OllamaLayer> layer = p.layer.get();
      lock.lock();
      if (!layer.ok()) {
        if (first.ok()) first = layer.status();
        continue;
      }
      layers_[p.slot] = std::move(*layer);
    }
    return first;
  }

  OllamaStore& store_;
  std::vector<OllamaLayer>& layers_;
  Tally& tally_;
  std::mutex mu_;  // guards pending_ and layers_' elements
  std::deque<Pending> pending_;
};

// Writes one tensor blob into layer place `slot`: the planned tensors `members` (in order), names
// prefixed by `prefix`, their values read from `rows_of`.
Status WriteTensorBlob(TensorBlobs& blobs, size_t slot, const model::Inventory& inv,
                       const std::vector<const PlannedTensor*>& members, const std::string& prefix,
                       const std::function<RowSource(const PlannedTensor&)>& rows_of, const ConvertOptions& options) {
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
  Tally& tally = blobs.tally();
  auto fill = [&](Writer& writer) -> Status {
    auto target = [&](const std::string& name) { return WriteTarget{&writer, *writer.IndexOf(name)}; };
    for (const PlannedTensor* t : members) {
      const std::string name = prefix + t->name;
      tally.Current(name);
      const RowSource rows = rows_of(*t);
      uint64_t source_bytes = 0;
      for (const PlannedSource& s : t->sources) source_bytes += inv.FindInfo(s.tensor)->nbytes();
      const uint64_t value_bytes =
          std::max<uint64_t>(1, static_cast<uint64_t>(rows.rows) * rows.cols * DTypeBits(t->dtype) / 8);
      auto on_block = [&](uint64_t bytes) { tally.Consumed(bytes * source_bytes / value_bytes); };
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
        std::optional<QuantErrorMeter> meter;
        if (options.measure_quant_error) targets.error = &meter.emplace(name, *t->quant, rows.dtype);
        status = QuantizeRowSource(rows, *t->quant, global_scale, targets, options.threads, on_block);
        if (meter && status.ok()) tally.QuantError(meter->Total());
      }
      STQ_RETURN_IF_ERROR(tally.TensorDone(status, blob_name, name, t->quant.has_value()));
    }
    return Status::Ok();
  };
  return blobs.Write(slot, blob_name, std::move(decls), metadata, fill);
}

// An already-quantized source (ollama-create-spec §6.3): the blobs of model::OllamaPrequantBlobs,
// each tensor a byte transform of source tensors (WritePrequantTensor); with --requantize a layer's
// blob is instead the planned float tensor "<layer>.weight" of its dequantized values, quantized
// as planned. Each blob is produced in file order by one thread, several blobs at once (its
// transforms are sequential; the SHA-256 of one blob is taken on the thread writing it).
Status WritePrequantBlobs(TensorBlobs& blobs, const model::PlanContext& context,
                          const std::vector<model::OllamaPrequantBlob>& prequant_blobs, const std::string& prefix,
                          const ConvertOptions& options) {
  const model::Inventory& inv = *context.inventory;
  const model::PrequantPlan& pq = *context.prequant;
  std::map<std::string, const PlannedTensor*> planned;  // by blob: a requantized layer's one tensor
  for (const PlannedTensor& t : context.plan.tensors) planned.emplace(t.blob, &t);
  Tally& tally = blobs.tally();
  const size_t first_slot = blobs.Reserve(prequant_blobs.size());
  return util::ParallelFor(static_cast<int64_t>(prequant_blobs.size()), options.threads, [&](int64_t i) -> Status {
    const model::OllamaPrequantBlob& blob = prequant_blobs[i];
    const size_t slot = first_slot + i;
    std::vector<const model::PrequantTensor*> tensors;
    for (size_t t : blob.tensors) tensors.push_back(&pq.tensors[t]);
    const std::string blob_name = prefix + blob.name;
    // A float-quantized (FP8) layer of a mixed-precision container, decoded and quantized as planned.
    if (const auto decoded = planned.find(blob.name);
        decoded != planned.end() && decoded->second->transform == TensorTransform::kDecodeFp8 && decoded->second->quant) {
      auto rows_of = [&](const PlannedTensor& t) { return PlannedRows(inv, t, options.profile); };
      return WriteTensorBlob(blobs, slot, inv, {decoded->second}, prefix, rows_of, options);
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
      return WriteTensorBlob(blobs, slot, inv, {tensor->second}, prefix, rows_of, options);
    }
    std::vector<TensorDecl> decls;
    for (const model::PrequantTensor* t : tensors) {
      decls.push_back({prefix + model::OllamaPrequantName(*t), t->dtype, t->shape});
    }
    std::optional<std::map<std::string, std::string>> metadata;
    if (!blob.metadata.empty()) metadata = blob.metadata;
    auto fill = [&](Writer& writer) -> Status {
      auto on_bytes = [&](uint64_t bytes) { tally.Consumed(bytes); };
      for (const model::PrequantTensor* t : tensors) {
        const std::string name = prefix + model::OllamaPrequantName(*t);
        tally.Current(name);
        const Status status = WritePrequantTensor(inv, *t, WriteTarget{&writer, *writer.IndexOf(name)}, on_bytes);
        STQ_RETURN_IF_ERROR(
            tally.TensorDone(status, blob_name, name, t == tensors.back() && !blob.layer.empty()));
      }
      return Status::Ok();
    };
    return blobs.Write(slot, blob_name, std::move(decls), metadata, fill);
  });
}

// Blobs of fewer source bytes than this are written one per thread, several at once: a blob of a
// few tasks gains little from being split, while its fixed costs (files, header, commit) would be
// paid by one thread at a time. Larger blobs are each written by all threads, their hash still
// taken in file order (DirectWriter's tap).
constexpr uint64_t kOneThreadBlobBytes = 1 << 20;

// The tensor blobs of a plan, in plan (blob) order.
Status WritePlanBlobs(TensorBlobs& blobs, const model::PlanContext& context,
                      const std::vector<model::OllamaPrequantBlob>& prequant_blobs, const std::string& prefix,
                      const ConvertOptions& options) {
  if (context.prequant) return WritePrequantBlobs(blobs, context, prequant_blobs, prefix, options);
  const model::Inventory& inv = *context.inventory;
  const std::vector<PlannedTensor>& tensors = context.plan.tensors;
  auto rows_of = [&](const PlannedTensor& t) { return PlannedRows(inv, t, options.profile); };
  struct Blob {
    std::vector<const PlannedTensor*> members;
    uint64_t source_bytes = 0;
  };
  std::vector<Blob> plan_blobs;
  for (const PlannedTensor& t : tensors) {
    if (plan_blobs.empty() || plan_blobs.back().members.front()->blob != t.blob) plan_blobs.emplace_back();
    plan_blobs.back().members.push_back(&t);
    for (const PlannedSource& s : t.sources) plan_blobs.back().source_bytes += inv.FindInfo(s.tensor)->nbytes();
  }
  auto small = [&](size_t i) { return plan_blobs[i].source_bytes < kOneThreadBlobBytes; };
  for (size_t i = 0; i < plan_blobs.size();) {
    size_t end = i + 1;
    if (small(i)) {
      while (end < plan_blobs.size() && small(end)) ++end;
    }
    const size_t first = blobs.Reserve(end - i);
    STQ_RETURN_IF_ERROR(util::ParallelFor(static_cast<int64_t>(end - i), options.threads, [&](int64_t k) {
      return WriteTensorBlob(blobs, first + k, inv, plan_blobs[i + k].members, prefix, rows_of, options);
    }));
    i = end;
  }
  return Status::Ok();
}

// The source tensors of a plan in the order its blobs consume them, for the read-ahead.
void AddSourceRanges(const model::PlanContext& context, const std::vector<model::OllamaPrequantBlob>& prequant_blobs,
                     std::vector<ReadAhead::Range>& ranges) {
  const model::Inventory& inv = *context.inventory;
  auto add = [&](const std::string& name) {
    const model::TensorRef* ref = inv.Find(name);
    ranges.push_back({inv.shards()[ref->shard].reader.get(), ref->info});
  };
  if (!context.prequant) {
    for (const PlannedTensor& t : context.plan.tensors) {
      for (const PlannedSource& s : t.sources) add(s.tensor);
    }
    return;
  }
  for (const model::OllamaPrequantBlob& blob : prequant_blobs) {
    for (size_t t : blob.tensors) {
      for (const std::string& source : context.prequant->tensors[t].sources) add(source);
    }
  }
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

  const model::PlanContext* context = im.context ? &*im.context : nullptr;  // none FROM an existing model
  std::vector<model::OllamaPrequantBlob> prequant_blobs, draft_prequant_blobs;
  if (context && context->prequant) {
    STQ_ASSIGN_OR_RETURN(prequant_blobs, model::OllamaPrequantBlobs(*context->prequant, context->inventory->path(),
                                                                    options.requantize));
  }
  if (draft && draft->prequant) {
    STQ_ASSIGN_OR_RETURN(draft_prequant_blobs, model::OllamaPrequantBlobs(*draft->prequant, draft->inventory->path(),
                                                                          options.requantize));
  }
  std::vector<ReadAhead::Range> source_ranges;
  if (context) AddSourceRanges(*context, prequant_blobs, source_ranges);
  if (draft) AddSourceRanges(*draft, draft_prequant_blobs, source_ranges);
  ReadAhead read_ahead(std::move(source_ranges));

  ConvertSummary summary;
  Tally tally(callback, summary);
  tally.Start((context ? context->plan.tensors.size() : 0) + (draft ? draft->plan.tensors.size() : 0),
              (context ? context->plan.input_bytes : 0) + (draft ? draft->plan.input_bytes : 0), &read_ahead);
  std::vector<OllamaLayer> layers;
  TensorBlobs blobs(store, layers, tally);
  if (im.base) {
    // FROM an existing model: its layers are reused as they are (their blobs are in the store).
    layers = BaseLayers(im);
  } else {
    STQ_RETURN_IF_ERROR(WritePlanBlobs(blobs, *context, prequant_blobs, "", options));
    STQ_RETURN_IF_ERROR(WriteConfigLayers(store, options.source_dir, "", layers));
  }
  if (draft) {
    STQ_RETURN_IF_ERROR(WritePlanBlobs(blobs, *draft, draft_prequant_blobs, "draft.", options));
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
  summary.input_bytes = tally.bytes_total();
  summary.parameters = (context ? context->plan.parameters : 0) + (draft ? draft->plan.parameters : 0);
  summary.layers = layers.size();
  for (const OllamaLayer& l : layers) summary.blobs_reused += l.reused;
  summary.shards = 0;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.peak_rss_bytes = PeakRss();
  std::sort(summary.quant_errors.begin(), summary.quant_errors.end(),
            [](const TensorQuantError& a, const TensorQuantError& b) { return a.name < b.name; });
  return summary;
}

}  // namespace stquant::output
