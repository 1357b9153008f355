#include "stquant/inspect.h"

#include <algorithm>
#include <filesystem>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/arch.h"
#include "model/inventory.h"

namespace stquant {

namespace {

std::string ShapeText(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", value, kUnits[unit]);
}

std::string QuantText(const InspectQuantized& q) {
  return fmt::format("{} {}-bit g{}{}", q.mode, q.bits, q.group_size, q.from_config ? "" : " (inferred)");
}

}  // namespace

Result<InspectReport> Inspect(const std::string& path) {
  std::error_code ec;
  const bool is_dir = std::filesystem::is_directory(path, ec);
  // No entry at all; a link loop or a dangling link is named as such when the file is opened.
  if (!is_dir && !std::filesystem::exists(std::filesystem::symlink_status(path, ec))) {
    return Status::InvalidArgument("'" + path + "': no such file or directory");
  }
  Result<model::Inventory> opened = is_dir ? model::Inventory::Open(path) : model::Inventory::OpenFile(path);
  STQ_ASSIGN_OR_RETURN(model::Inventory inv, std::move(opened));

  InspectReport report;
  report.path = path;
  report.is_directory = inv.is_directory();
  const nlohmann::json& config = inv.config();
  if (auto it = config.find("architectures"); it != config.end() && it->is_array() && !it->empty() &&
                                              (*it)[0].is_string()) {
    report.architecture = (*it)[0].get<std::string>();
  } else if (auto mt = config.find("model_type"); mt != config.end() && mt->is_string()) {
    report.architecture = mt->get<std::string>();
  }
  if (inv.is_directory()) {
    const model::ArchRules verdict = model::RulesFor(config);
    report.model_type = verdict.model_type;
    report.architecture_status = verdict.known ? "verified" : verdict.refused ? "refused" : "unknown";
    if (verdict.refused) {
      report.architecture_note = verdict.reason;
    } else if (!verdict.known) {
      report.architecture_note =
          "not in stquant's architecture table: convert refuses it for the mlx layout unless "
          "--allow-unknown-architecture (generic rules)";
    } else if (verdict.entry->model_type != verdict.model_type) {
      report.architecture_note = fmt::format("converted with the rules of '{}'", verdict.entry->model_type);
    }
  }
  const model::Classification kind = model::Classify(inv);
  report.source_kind = std::string(model::SourceKindName(kind.kind));
  report.source_detail = kind.detail;

  std::vector<uint64_t> per_shard(inv.shards().size(), 0);
  report.tensors.reserve(inv.names().size());
  for (const auto& [name, ref] : inv.tensors()) {
    const safetensors::TensorInfo& info = *ref.info;
    InspectTensor t{name, std::string(DTypeName(info.dtype)), info.shape, info.nbytes(),
                    inv.shards()[ref.shard].file_name};
    report.total_bytes += t.bytes;
    InspectDTypeTotal& total = report.by_dtype[t.dtype];
    ++total.tensors;
    total.bytes += t.bytes;
    ++per_shard[ref.shard];
    report.tensors.push_back(std::move(t));
  }
  for (size_t i = 0; i < inv.shards().size(); ++i) {
    const model::Shard& shard = inv.shards()[i];
    report.shards.push_back({shard.file_name, shard.reader->file_size(), per_shard[i]});
  }
  // Only MLX-layout sources carry .weight/.scales groups; elsewhere ".scales" means something else.
  if (kind.kind == model::SourceKind::kMlx) {
    STQ_ASSIGN_OR_RETURN(std::vector<model::MlxQuantizedTensor> quantized, model::FindMlxQuantized(inv));
    for (const model::MlxQuantizedTensor& q : quantized) {
      report.quantized.push_back(
          {q.base, q.params.mode, q.params.bits, q.params.group_size, q.params.from_config});
    }
  }
  report.warnings = inv.warnings();
  return report;
}

std::string FormatInspectText(const InspectReport& report) {
  std::string out;
  auto line = [&out](std::string s) {
    out += s;
    out += '\n';
  };
  line(fmt::format("path:   {} ({})", report.path, report.is_directory ? "model directory" : "safetensors file"));
  if (!report.architecture.empty()) line(fmt::format("arch:   {}", report.architecture));
  if (!report.architecture_status.empty()) {
    line(fmt::format("model_type: {} ({}{})", report.model_type.empty() ? "(none)" : report.model_type,
                     report.architecture_status == "verified" ? "known to stquant's architecture table" : report.architecture_status,
                     report.architecture_note.empty() ? "" : ": " + report.architecture_note));
  }
  line(fmt::format("source: {} ({})", report.source_kind, report.source_detail));

  std::unordered_map<std::string, const InspectQuantized*> quant_by_weight;
  for (const InspectQuantized& q : report.quantized) quant_by_weight[q.name + ".weight"] = &q;

  size_t name_w = 4, dtype_w = 5, shape_w = 5, bytes_w = 5, shard_w = 5;
  for (const InspectTensor& t : report.tensors) {
    name_w = std::max(name_w, t.name.size());
    dtype_w = std::max(dtype_w, t.dtype.size());
    shape_w = std::max(shape_w, ShapeText(t.shape).size());
    bytes_w = std::max(bytes_w, fmt::format("{}", t.bytes).size());
    shard_w = std::max(shard_w, t.shard.size());
  }
  line("");
  const bool quant_column = !quant_by_weight.empty();
  std::string header = fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>{}}  {:<{}}", "NAME", name_w, "DTYPE", dtype_w, "SHAPE",
                                   shape_w, "BYTES", bytes_w, "SHARD", shard_w);
  if (quant_column) header += "  QUANT";
  while (!header.empty() && header.back() == ' ') header.pop_back();
  line(header);
  for (const InspectTensor& t : report.tensors) {
    std::string row = fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>{}}  {:<{}}", t.name, name_w, t.dtype, dtype_w,
                                  ShapeText(t.shape), shape_w, t.bytes, bytes_w, t.shard, shard_w);
    if (auto it = quant_by_weight.find(t.name); it != quant_by_weight.end()) row += "  " + QuantText(*it->second);
    while (!row.empty() && row.back() == ' ') row.pop_back();
    line(row);
  }

  line("");
  line(fmt::format("{} tensors across {} shard{}, {} bytes ({})", report.tensors.size(), report.shards.size(),
                   report.shards.size() == 1 ? "" : "s", report.total_bytes, HumanBytes(report.total_bytes)));
  for (const auto& [dtype, total] : report.by_dtype) {
    line(fmt::format("  {:<8} {:>6} tensors  {:>14} bytes", dtype, total.tensors, total.bytes));
  }
  if (report.shards.size() > 1) {
    line("shards:");
    for (const InspectShard& s : report.shards) {
      line(fmt::format("  {}  {} tensors, {} bytes", s.file, s.tensors, s.file_bytes));
    }
  }
  if (!report.quantized.empty()) {
    line(fmt::format("quantized layers: {}", report.quantized.size()));
    std::map<std::string, size_t> schemes;
    for (const InspectQuantized& q : report.quantized) ++schemes[QuantText(q)];
    for (const auto& [scheme, count] : schemes) line(fmt::format("  {:>6} x {}", count, scheme));
  }
  for (const std::string& w : report.warnings) line("warning: " + w);
  return out;
}

std::string FormatInspectJson(const InspectReport& report) {
  using nlohmann::json;
  json j;  // nlohmann::json keeps object keys sorted
  j["path"] = report.path;
  j["is_directory"] = report.is_directory;
  j["architecture"] = report.architecture;
  j["model_type"] = report.model_type;
  j["architecture_status"] = report.architecture_status;
  j["architecture_note"] = report.architecture_note;
  j["source_kind"] = report.source_kind;
  j["source_detail"] = report.source_detail;
  json shards = json::array();
  for (const InspectShard& s : report.shards) {
    shards.push_back({{"file", s.file}, {"file_bytes", s.file_bytes}, {"tensors", s.tensors}});
  }
  j["shards"] = std::move(shards);
  json tensors = json::array();
  for (const InspectTensor& t : report.tensors) {
    tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"bytes", t.bytes}, {"shard", t.shard}});
  }
  j["tensors"] = std::move(tensors);
  json by_dtype = json::object();
  for (const auto& [dtype, total] : report.by_dtype) {
    by_dtype[dtype] = {{"tensors", total.tensors}, {"bytes", total.bytes}};
  }
  j["totals"] = {{"tensors", report.tensors.size()}, {"bytes", report.total_bytes}, {"by_dtype", std::move(by_dtype)}};
  json quantized = json::array();
  for (const InspectQuantized& q : report.quantized) {
    quantized.push_back({{"name", q.name},
                         {"mode", q.mode},
                         {"bits", q.bits},
                         {"group_size", q.group_size},
                         {"source", q.from_config ? "config" : "inferred"}});
  }
  j["quantized"] = std::move(quantized);
  j["warnings"] = report.warnings;
  // Tensor names come from files and may hold invalid UTF-8 only if the reader let it through;
  // replace rather than throw so that a report can always be printed.
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace stquant
