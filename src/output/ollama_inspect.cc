// InspectOllamaModel: `stquant inspect --models-dir DIR NAME` (headers only).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "output/ollama_store.h"
#include "stquant/inspect.h"
#include "stquant/safetensors.h"
#include "util/json_input.h"

namespace stquant {

Result<std::string> InspectOllamaModel(const std::string& models_dir, const std::string& name_text, bool json) {
  STQ_ASSIGN_OR_RETURN(output::OllamaName name, output::ParseOllamaName(name_text));
  STQ_ASSIGN_OR_RETURN(std::string root, output::ResolveOllamaModelsDir(models_dir));
  const output::OllamaStore store = output::OllamaStore::OpenForReading(root);
  STQ_ASSIGN_OR_RETURN(output::OllamaManifest manifest, store.ReadManifest(name));

  nlohmann::ordered_json report;
  report["name"] = name.Display();
  report["manifest"] = root + "/manifests/" + name.ManifestPath();
  report["config"] = nullptr;
  if (manifest.config) {
    const std::string path = store.BlobPath(manifest.config->digest);
    STQ_ASSIGN_OR_RETURN(std::string text, util::ReadRegularFile(path, util::kJsonConfigLimit));
    // Shown as null when it is not JSON: the tensors can be listed all the same.
    if (Result<nlohmann::ordered_json> config = util::ParseOrderedJson(text, path, util::kJsonConfigLimit); config.ok()) {
      report["config"] = std::move(*config);
    }
  }
  report["layers"] = nlohmann::ordered_json::array();
  uint64_t total = 0;
  std::string out = fmt::format("model:    {}\nmanifest: {}\n", report["name"].get<std::string>(),
                                report["manifest"].get<std::string>());
  if (report["config"].is_object()) out += fmt::format("config:   {}\n", report["config"].dump());
  for (const output::OllamaLayer& layer : manifest.layers) {
    nlohmann::ordered_json row;
    row["media_type"] = layer.media_type;
    row["name"] = layer.name;
    row["digest"] = layer.digest;
    row["size"] = layer.size;
    total += layer.size;
    const std::string& media = layer.media_type;
    const std::string short_media = media.substr(media.rfind('.') + 1);
    out += fmt::format("{:<8} {:<56} {} {:>12}\n", short_media, layer.name, layer.digest.substr(0, 19), layer.size);
    if (media == output::kOllamaMediaTensor) {
      const std::string path = store.BlobPath(layer.digest);
      STQ_ASSIGN_OR_RETURN(std::unique_ptr<safetensors::Reader> reader, safetensors::Reader::Open(path));
      const auto& metadata = reader->metadata();
      auto lookup = [&](const std::string& tensor, const std::string& key) -> std::string {
        if (!metadata) return "";
        if (auto it = metadata->find(tensor + "." + key); it != metadata->end()) return it->second;
        if (auto it = metadata->find(key); it != metadata->end()) return it->second;
        return "";
      };
      std::vector<const safetensors::TensorInfo*> tensors;
      for (const auto& t : reader->tensors()) tensors.push_back(&t);
      std::sort(tensors.begin(), tensors.end(), [](auto* a, auto* b) { return a->name < b->name; });
      row["tensors"] = nlohmann::ordered_json::array();
      for (const safetensors::TensorInfo* t : tensors) {
        nlohmann::ordered_json tj;
        tj["name"] = t->name;
        tj["dtype"] = std::string(DTypeName(t->dtype));
        tj["shape"] = t->shape;
        std::string quant;
        if (reader->Find(t->name + ".scale")) {
          const std::string type = lookup(t->name, "quant_type"), group = lookup(t->name, "group_size");
          tj["quant_type"] = type.empty() ? "(inferred: no metadata)" : type;
          if (!group.empty()) tj["group_size"] = group;
          quant = fmt::format("  {}{}", type.empty() ? "quantized (no metadata)" : type, group.empty() ? "" : " g" + group);
        }
        out += fmt::format("    {:<60} {:<5} [{}]{}\n", t->name, DTypeName(t->dtype), fmt::join(t->shape, ", "), quant);
        row["tensors"].push_back(tj);
      }
    }
    report["layers"].push_back(row);
  }
  report["total_bytes"] = total;
  out += fmt::format("{} layers, {} bytes\n", manifest.layers.size(), total);
  return json ? report.dump(2) + "\n" : out;
}

}  // namespace stquant
