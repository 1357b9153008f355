#include "output/preflight.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "model/arch.h"
#include "util/human_bytes.h"

namespace stquant::output {

namespace fs = std::filesystem;

namespace {

// A safetensors header entry, "<name>":{"dtype":"BF16","shape":[...],"data_offsets":[a,b]}, is
// its name and fewer than this many bytes; a header's own overhead (length, braces, metadata,
// padding) fewer than kHeaderBytes.
constexpr uint64_t kEntryBytes = 160;
constexpr uint64_t kHeaderBytes = 512;

uint64_t FileBytes(const std::string& path) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  return ec ? 0 : size;
}

// The output tensors of a planned tensor: its values, or packed weight, scales and biases.
int OutputTensorCount(const PlannedTensor& t) {
  if (!t.quant) return 1;
  return 2 + (ModeInfo(t.quant->mode).has_biases ? 1 : 0) + (t.quant->global_scale ? 1 : 0);
}

// Header bytes of the planned tensors' outputs (their names, with a suffix of at most
// ".global_scale", and their entries).
uint64_t HeaderBytes(const std::vector<PlannedTensor>& tensors, size_t prefix) {
  uint64_t bytes = 0;
  for (const PlannedTensor& t : tensors) bytes += OutputTensorCount(t) * (t.name.size() + prefix + 16 + kEntryBytes);
  return bytes;
}

// The directory itself, or the nearest of its ancestors that exists.
fs::path NearestExisting(fs::path path) {
  std::error_code ec;
  path = fs::absolute(path, ec).lexically_normal();
  while (!fs::exists(path, ec) && path.has_parent_path() && path.parent_path() != path) path = path.parent_path();
  return path;
}

Status CheckWritable(const fs::path& dir, const std::string& target, struct statvfs* stats) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Status::InvalidArgument(
        fmt::format("preflight: cannot write {}: '{}' is not a directory; nothing was written", target, dir.string()));
  }
  if (::statvfs(dir.c_str(), stats) != 0) {
    return Status::FromErrno("preflight: statvfs", dir.string(), errno);
  }
  if (stats->f_flag & ST_RDONLY) {
    return Status::InvalidArgument(fmt::format(
        "preflight: cannot write {}: '{}' is on a read-only file system; nothing was written", target, dir.string()));
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return Status::InvalidArgument(fmt::format("preflight: cannot write {}: directory '{}' is not writable ({}); "
                                               "nothing was written",
                                               target, dir.string(), std::strerror(errno)));
  }
  return Status::Ok();
}

}  // namespace

OutputProjection ProjectMlxOutput(const ConvertOptions& options, const model::PlanContext& context) {
  const ConversionPlan& plan = context.plan;
  OutputProjection p;
  fs::path target = fs::absolute(fs::path(options.output_dir)).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  p.target = fmt::format("'{}'", target.string());
  p.directory = target.parent_path().string();
  const uint64_t shards = 1 + (options.shard_bytes ? plan.output_bytes / options.shard_bytes + 1 : 1);
  uint64_t config_entries = 0;
  for (const PlannedTensor& t : plan.tensors) config_entries += t.has_config_entry;
  // Shards, the index (name -> shard), config.json (the source's, re-indented, with the
  // quantization blocks), the copied files.
  p.data_bytes = plan.output_bytes + HeaderBytes(plan.tensors, 0) + shards * kHeaderBytes;
  p.data_bytes += HeaderBytes(plan.tensors, 0) + kHeaderBytes;
  p.data_bytes += 2 * context.inventory->config().dump(4).size() + config_entries * kEntryBytes + kHeaderBytes;
  for (const std::string& file : plan.copied_files) p.data_bytes += FileBytes(context.inventory->path() + "/" + file);
  p.files = shards + 2 + plan.copied_files.size() + 1;  // + the lock file
  p.contents = fmt::format("{} of tensors in {} shard{}, the index, config.json and {} copied file{}",
                           util::HumanBytes(plan.output_bytes), shards - 1, shards == 2 ? "" : "s", plan.copied_files.size(),
                           plan.copied_files.size() == 1 ? "" : "s");
  return p;
}

OutputProjection ProjectOllamaOutput(const ConvertOptions& options, const std::string& root,
                                     const model::PlanContext* context, const model::PlanContext* draft,
                                     uint64_t modelfile_bytes) {
  OutputProjection p;
  p.target = fmt::format("model '{}' in the ollama model store '{}'", options.model_name, root);
  p.directory = root;
  uint64_t tensor_bytes = 0, blobs = 0, json_files = 0;
  auto add = [&](const model::PlanContext& c, size_t prefix) {
    std::set<std::string> names;
    for (const PlannedTensor& t : c.plan.tensors) names.insert(t.blob);
    blobs += names.size();
    tensor_bytes += c.plan.output_bytes;
    p.data_bytes += c.plan.output_bytes + HeaderBytes(c.plan.tensors, prefix) + names.size() * kHeaderBytes;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(c.inventory->path(), ec)) {
      const std::string file = entry.path().filename().string();
      if (!file.ends_with(".json") || file == "model.safetensors.index.json") continue;
      p.data_bytes += FileBytes(entry.path().string());
      ++json_files;
    }
  };
  if (context) add(*context, 0);
  if (draft) add(*draft, 6);  // "draft."
  // Text layers, the config blob, the manifest (one entry per layer).
  p.data_bytes += modelfile_bytes + 2 * kHeaderBytes + (blobs + json_files + 4) * (kEntryBytes + 64);
  p.files = blobs + json_files + 3 + 2 + 1;
  p.contents = fmt::format("{} of tensors in {} blob{} and {} JSON file{}", util::HumanBytes(tensor_bytes), blobs,
                           blobs == 1 ? "" : "s", json_files, json_files == 1 ? "" : "s");
  return p;
}

ArchitectureVerdict ArchitectureVerdictFor(const ConvertOptions& options, const model::PlanContext* context) {
  if (options.layout == OutputLayout::kOllama || context == nullptr) return ArchitectureVerdict::kKnown;
  return model::RulesFor(context->inventory->config()).known ? ArchitectureVerdict::kKnown
                                                             : ArchitectureVerdict::kGenericRules;
}

Status Preflight(const ConvertOptions& options, const model::PlanContext* context, const OutputProjection& projection,
                 const std::vector<std::string>& extra_writable) {
  if (ArchitectureVerdictFor(options, context) == ArchitectureVerdict::kUnsupported) {
    return Status::Unsupported(fmt::format("preflight: architecture '{}' is not supported by the {} layout; nothing "
                                           "was written to {}",
                                           context ? context->plan.architecture : "",
                                           options.layout == OutputLayout::kOllama ? "ollama" : "mlx",
                                           projection.target));
  }
  const fs::path dir = NearestExisting(projection.directory);
  struct statvfs stats {};
  STQ_RETURN_IF_ERROR(CheckWritable(dir, projection.target, &stats));
  for (const std::string& extra : extra_writable) {
    std::error_code ec;
    struct statvfs ignored {};
    if (fs::exists(extra, ec)) STQ_RETURN_IF_ERROR(CheckWritable(extra, projection.target, &ignored));
  }
  if (!options.check_free_space) return Status::Ok();
  const uint64_t fragment = stats.f_frsize ? stats.f_frsize : stats.f_bsize;
  const uint64_t needed = projection.data_bytes + projection.files * fragment;
  const uint64_t available = static_cast<uint64_t>(stats.f_bavail) * fragment;
  if (needed > available) {
    return Status::IoError(fmt::format(
        "preflight: not enough free space: {} would take {} ({} bytes: {}), but the file system of '{}' has {} ({} "
        "bytes) available; nothing was written (free some space or write elsewhere; --no-preflight skips this check "
        "where a file system misreports its free space)",
        projection.target, util::HumanBytes(needed), needed, projection.contents, dir.string(), util::HumanBytes(available), available));
  }
  return Status::Ok();
}

}  // namespace stquant::output
