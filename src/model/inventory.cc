#include "model/inventory.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <utility>

#include "safetensors/format.h"
#include "util/json_input.h"
#include "util/printable.h"

namespace stquant::model {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using util::Quoted;

constexpr std::string_view kIndexName = "model.safetensors.index.json";
constexpr std::string_view kSuffix = ".safetensors";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

std::string Join(const std::string& dir, std::string_view name) {
  if (dir.empty() || dir.back() == '/') return dir + std::string(name);
  return dir + "/" + std::string(name);
}

// Whether a directory entry of that name exists, of any kind (a dangling symbolic link included:
// opening it then says what is wrong with it).
bool Exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec));
}

Result<json> ReadJsonObject(const std::string& path, const util::InputLimit& limit) {
  STQ_ASSIGN_OR_RETURN(std::string text, util::ReadRegularFile(path, limit));
  return ParseJsonObjectText(text, path, limit);
}

// A shard named by the index must be a plain file inside the model directory.
bool IsBareFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

const json* ObjectMember(const json& object, std::string_view key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

std::string StringMember(const json& object, std::string_view key) {
  const json* v = ObjectMember(object, key);
  return v && v->is_string() ? v->get<std::string>() : std::string();
}

// An integer member, or `fallback` when absent or not an integer.
int64_t IntMember(const json& object, std::string_view key, int64_t fallback) {
  const json* v = ObjectMember(object, key);
  return v && v->is_number_integer() ? v->get<int64_t>() : fallback;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

}  // namespace

Result<json> ParseJsonObjectText(std::string_view text, const std::string& path, const util::InputLimit& limit) {
  STQ_ASSIGN_OR_RETURN(json value, util::ParseJson(text, path, limit));
  if (!value.is_object()) {
    return Status::InvalidInput(Quoted(path) + ": expected a JSON object, got " + std::string(value.type_name()));
  }
  return value;
}

Result<IndexFile> ParseIndexText(std::string_view text, const std::string& index_path) {
  STQ_ASSIGN_OR_RETURN(json index, ParseJsonObjectText(text, index_path, util::kJsonIndexLimit));
  const std::string where = Quoted(index_path);
  const json* weight_map = ObjectMember(index, "weight_map");
  if (weight_map == nullptr || !weight_map->is_object()) {
    return Status::InvalidInput(where + ": missing \"weight_map\" object");
  }
  IndexFile parsed;
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      return Status::InvalidInput(where + ": weight_map entry " + Quoted(tensor) + " is not a string");
    }
    std::string name = shard.get<std::string>();
    if (!IsBareFileName(name)) {
      return Status::InvalidInput(where + ": weight_map entry " + Quoted(tensor) + ": shard " + Quoted(name) +
                                  " must be a bare file name inside the model directory");
    }
    if (!EndsWith(name, kSuffix) || name.size() == kSuffix.size()) {
      return Status::InvalidInput(where + ": weight_map entry " + Quoted(tensor) + ": shard " + Quoted(name) +
                                  " is not a .safetensors file");
    }
    parsed.weight_map.emplace(tensor, std::move(name));
  }
  if (parsed.weight_map.empty()) return Status::InvalidInput(where + ": weight_map is empty");
  const json* metadata = ObjectMember(index, "metadata");
  const json* total = metadata ? ObjectMember(*metadata, "total_size") : nullptr;
  if (total != nullptr && total->is_number_unsigned()) parsed.total_size = total->get<uint64_t>();
  return parsed;
}

const TensorRef* Inventory::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const safetensors::TensorInfo* Inventory::FindInfo(std::string_view name) const {
  const TensorRef* ref = Find(name);
  return ref ? ref->info : nullptr;
}

Status Inventory::AddShard(std::string file_name, std::string path) {
  STQ_ASSIGN_OR_RETURN(std::unique_ptr<safetensors::Reader> reader, safetensors::Reader::Open(path));
  const size_t index = shards_.size();
  for (const safetensors::TensorInfo& info : reader->tensors()) {
    auto [it, inserted] = tensors_.try_emplace(info.name, TensorRef{index, &info});
    if (!inserted) {
      return Status::InvalidInput("duplicate tensor " + Quoted(info.name) + ": found in both '" +
                                  shards_[it->second.shard].path + "' and '" + path + "'");
    }
  }
  for (const std::string& warning : reader->warnings()) warnings_.push_back(warning);
  shards_.push_back(Shard{std::move(file_name), std::move(path), std::move(reader)});
  return Status::Ok();
}

void Inventory::FinishNames() {
  names_.clear();
  names_.reserve(tensors_.size());
  for (const auto& [name, ref] : tensors_) names_.push_back(name);
}

Result<Inventory> Inventory::OpenFile(const std::string& path) {
  Inventory inv;
  inv.path_ = path;
  STQ_RETURN_IF_ERROR(inv.AddShard(fs::path(path).filename().string(), path));
  inv.FinishNames();
  return inv;
}

Result<Inventory> Inventory::Open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    if (!fs::exists(dir, ec)) return Status::InvalidArgument("'" + dir + "': no such file or directory");
    return Status::InvalidArgument("'" + dir + "': not a directory");
  }
  Inventory inv;
  inv.path_ = dir;
  inv.is_directory_ = true;

  const std::string config_path = Join(dir, "config.json");
  if (!Exists(config_path)) {
    return Status::InvalidInput("'" + dir + "' has no config.json: not a Hugging Face model directory");
  }
  STQ_ASSIGN_OR_RETURN(inv.config_, ReadJsonObject(config_path, util::kJsonConfigLimit));

  const std::string hf_quant_path = Join(dir, "hf_quant_config.json");
  if (Exists(hf_quant_path)) {
    STQ_ASSIGN_OR_RETURN(json hf_quant, ReadJsonObject(hf_quant_path, util::kJsonConfigLimit));
    inv.hf_quant_config_ = std::move(hf_quant);
  }

  const std::string index_path = Join(dir, kIndexName);
  if (Exists(index_path)) {
    inv.has_index_ = true;
    STQ_ASSIGN_OR_RETURN(std::string index_text, util::ReadRegularFile(index_path, util::kJsonIndexLimit));
    STQ_ASSIGN_OR_RETURN(IndexFile index, ParseIndexText(index_text, index_path));
    const std::map<std::string, std::string>& indexed = index.weight_map;  // tensor -> shard file name
    std::set<std::string> shard_names;
    for (const auto& [tensor, shard] : indexed) shard_names.insert(shard);
    for (const std::string& name : shard_names) {
      const std::string path = Join(dir, name);
      // A shard the index names but the directory lacks is a malformed (incomplete) model, not an
      // I/O failure. A dangling symlink, a link loop or a FIFO is named as such by the open.
      if (!Exists(path)) {
        return Status::InvalidInput(Quoted(index_path) + " names shard " + Quoted(name) + ", which does not exist in " +
                                    Quoted(dir) + " (incomplete download?)");
      }
      Status status = inv.AddShard(name, path);
      if (!status.ok()) return status.Annotate("shard named by '" + index_path + "'");
    }
    // The index and the headers must agree both ways.
    for (const auto& [tensor, shard] : indexed) {
      const TensorRef* ref = inv.Find(tensor);
      if (ref == nullptr) {
        return Status::InvalidInput("tensor " + Quoted(tensor) + " is indexed in " + Quoted(shard) + " by '" +
                                    index_path + "' but not found there");
      }
      const std::string& actual = inv.shards_[ref->shard].file_name;
      if (actual != shard) {
        return Status::InvalidInput("tensor " + Quoted(tensor) + " is indexed in " + Quoted(shard) + " by '" +
                                    index_path + "' but found in '" + actual + "'");
      }
    }
    for (const auto& [tensor, ref] : inv.tensors_) {
      if (!indexed.contains(tensor)) {
        return Status::InvalidInput("tensor " + Quoted(tensor) + " of '" + inv.shards_[ref.shard].path +
                                    "' is missing from '" + index_path + "'");
      }
    }
    // total_size is informational in the HF format and some real checkpoints get it wrong.
    if (index.total_size) {
      uint64_t sum = 0;
      for (const auto& [tensor, ref] : inv.tensors_) sum += ref.info->nbytes();
      if (*index.total_size != sum) {
        inv.warnings_.push_back("'" + index_path + "': metadata.total_size " + std::to_string(*index.total_size) +
                                " differs from the " + std::to_string(sum) + " bytes of tensor data in the shards");
      }
    }
  } else {
    std::vector<std::string> all;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.empty() || name[0] == '.' || !EndsWith(name, kSuffix)) continue;
      std::error_code type_ec;
      if (it->is_directory(type_ec)) continue;
      all.push_back(name);
    }
    if (ec) return Status::IoError("list '" + dir + "': " + ec.message());
    std::sort(all.begin(), all.end());
    std::vector<std::string> model_shards;
    bool has_single = false;
    for (const std::string& name : all) {
      if (name == "model.safetensors") {
        has_single = true;
      } else if (StartsWith(name, "model-")) {
        model_shards.push_back(name);
      }
    }
    if (has_single && !model_shards.empty()) {
      return Status::InvalidInput("found both model.safetensors and sharded " + model_shards.front() + " in '" + dir +
                                  "' without " + std::string(kIndexName) + ": ambiguous source");
    }
    std::vector<std::string> chosen = has_single ? std::vector<std::string>{"model.safetensors"}
                                      : !model_shards.empty() ? model_shards
                                                              : all;
    if (chosen.empty()) return Status::InvalidInput("no *.safetensors files in '" + dir + "'");
    for (const std::string& name : chosen) STQ_RETURN_IF_ERROR(inv.AddShard(name, Join(dir, name)));
  }
  if (inv.tensors_.empty()) return Status::InvalidInput("no tensors in the safetensors files of '" + dir + "'");
  inv.FinishNames();
  return inv;
}

std::string_view SourceKindName(SourceKind kind) {
  switch (kind) {
    case SourceKind::kFloat: return "float";
    case SourceKind::kBlockFp8: return "block-fp8";
    case SourceKind::kMlx: return "mlx";
    case SourceKind::kModelOptNvfp4: return "modelopt-nvfp4";
    case SourceKind::kCompressedTensors: return "compressed-tensors";
    case SourceKind::kGptOssMxfp4: return "gpt-oss-mxfp4";
  }
  return "unknown";
}

namespace {

// The quantization blocks a config may carry, top level first (mlx-lm writes "quantization" and a
// copy as "quantization_config"; multimodal configs nest them under "text_config").
std::vector<const json*> QuantBlocks(const json& config) {
  std::vector<const json*> blocks;
  for (const json* root : {&config, ObjectMember(config, "text_config")}) {
    if (root == nullptr || !root->is_object()) continue;
    for (std::string_view key : {"quantization", "quantization_config", "compression_config"}) {
      const json* block = ObjectMember(*root, key);
      if (block != nullptr && block->is_object()) blocks.push_back(block);
    }
  }
  return blocks;
}

// The MLX quantization block: the first with integer "bits" and "group_size".
const json* MlxQuantBlock(const json& config) {
  for (const json* block : QuantBlocks(config)) {
    const json* bits = ObjectMember(*block, "bits");
    const json* group = ObjectMember(*block, "group_size");
    if (bits && bits->is_number_integer() && group && group->is_number_integer()) return block;
  }
  return nullptr;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string DTypeList(const Inventory& inv) {
  std::set<std::string_view> dtypes;
  for (const auto& [name, ref] : inv.tensors()) {
    if (EndsWith(name, ".weight")) dtypes.insert(DTypeName(ref.info->dtype));
  }
  if (dtypes.empty()) {
    for (const auto& [name, ref] : inv.tensors()) dtypes.insert(DTypeName(ref.info->dtype));
  }
  std::string s;
  for (std::string_view d : dtypes) s += (s.empty() ? "" : ", ") + std::string(d);
  return s;
}

bool HasDType(const Inventory& inv, const std::string& name, DType dtype) {
  const safetensors::TensorInfo* info = inv.FindInfo(name);
  return info != nullptr && info->dtype == dtype;
}

}  // namespace

Classification Classify(const Inventory& inv) {
  const json& config = inv.config();
  size_t blocks = 0, packed = 0, nvfp4 = 0, mlx_scales = 0, fp8 = 0, fp8_scaled = 0;
  for (const std::string& name : inv.names()) {
    if (EndsWith(name, "_blocks") && inv.Find(name.substr(0, name.size() - 7) + "_scales")) ++blocks;
    if (EndsWith(name, ".weight_packed")) ++packed;
    if (EndsWith(name, ".weight_scale")) {
      const std::string weight = name.substr(0, name.size() - 6);
      if (HasDType(inv, weight, DType::kU8) && HasDType(inv, name, DType::kF8E4M3) &&
          inv.Find(weight + "_scale_2")) {
        ++nvfp4;
      }
    }
    if (EndsWith(name, ".scales") && HasDType(inv, name.substr(0, name.size() - 7) + ".weight", DType::kU32)) {
      ++mlx_scales;
    }
    if (EndsWith(name, ".weight") && HasDType(inv, name, DType::kF8E4M3)) {
      ++fp8;
      if (inv.Find(name + "_scale_inv") || inv.Find(name + "_scale")) ++fp8_scaled;
    }
  }

  std::string quant_method, quant_format, block_size;
  for (const json* block : QuantBlocks(config)) {
    if (quant_method.empty()) quant_method = Lower(StringMember(*block, "quant_method"));
    if (quant_format.empty()) quant_format = StringMember(*block, "format");
    const json* wbs = ObjectMember(*block, "weight_block_size");
    if (block_size.empty() && wbs && wbs->is_array()) block_size = wbs->dump();
  }
  std::string quant_algo;
  if (inv.hf_quant_config()) {
    if (const json* q = ObjectMember(*inv.hf_quant_config(), "quantization")) quant_algo = StringMember(*q, "quant_algo");
  }
  for (const json* block : QuantBlocks(config)) {
    if (quant_algo.empty()) quant_algo = StringMember(*block, "quant_algo");
  }

  if (blocks > 0) {
    return {SourceKind::kGptOssMxfp4, std::to_string(blocks) + " MXFP4 *_blocks tensors with E8M0 *_scales"};
  }
  if (quant_method == "compressed-tensors" || packed > 0) {
    std::string detail = "format " + (quant_format.empty() ? std::string("unknown") : quant_format);
    if (packed > 0) detail += ", " + std::to_string(packed) + " *.weight_packed tensors";
    return {SourceKind::kCompressedTensors, detail};
  }
  if (quant_algo == "NVFP4" || nvfp4 > 0) {
    return {SourceKind::kModelOptNvfp4,
            "NVFP4 (group size 16), " + std::to_string(nvfp4) + " U8 weights with F8_E4M3 weight_scale"};
  }
  if (mlx_scales > 0 || (MlxQuantBlock(config) && quant_method.empty())) {
    std::string detail;
    if (const json* block = MlxQuantBlock(config)) {
      std::string mode = StringMember(*block, "mode");
      detail = (mode.empty() ? "affine" : mode) + ", bits " + std::to_string(IntMember(*block, "bits", 0)) +
               ", group size " + std::to_string(IntMember(*block, "group_size", 0)) + " (config)";
    } else {
      detail = "no quantization block in config.json: parameters inferred from shapes";
    }
    return {SourceKind::kMlx, detail + ", " + std::to_string(mlx_scales) + " quantized layers"};
  }
  if (fp8 > 0) {
    std::string detail = "F8_E4M3 weights, " + std::to_string(fp8_scaled) + " of " + std::to_string(fp8) +
                         " with a weight_scale_inv/weight_scale companion";
    if (!block_size.empty()) detail += ", weight_block_size " + block_size;
    return {SourceKind::kBlockFp8, detail};
  }
  return {SourceKind::kFloat, DTypeList(inv)};
}

Result<std::vector<MlxQuantizedTensor>> FindMlxQuantized(const Inventory& inv) {
  std::vector<MlxQuantizedTensor> out;
  const json* block = MlxQuantBlock(inv.config());
  for (const std::string& name : inv.names()) {
    if (!EndsWith(name, ".scales")) continue;
    const std::string base = name.substr(0, name.size() - 7);
    const safetensors::TensorInfo* weight = inv.FindInfo(base + ".weight");
    if (weight == nullptr || weight->dtype != DType::kU32) continue;
    const safetensors::TensorInfo* scales = inv.FindInfo(name);
    const safetensors::TensorInfo* biases = inv.FindInfo(base + ".biases");
    const std::string where = "MLX-quantized layer '" + base + "'";

    const auto& ws = weight->shape;
    const auto& ss = scales->shape;
    if (ws.empty() || ws.size() != ss.size() || !std::equal(ws.begin(), ws.end() - 1, ss.begin()) ||
        ss.back() <= 0) {
      return Status::InvalidInput(where + ": weight shape " + ShapeString(ws) + " and scales shape " +
                                  ShapeString(ss) + " do not match");
    }
    if (biases != nullptr && (biases->shape != ss || biases->dtype != scales->dtype)) {
      return Status::InvalidInput(where + ": biases " + std::string(DTypeName(biases->dtype)) + " " +
                                  ShapeString(biases->shape) + " differ from scales " +
                                  std::string(DTypeName(scales->dtype)) + " " + ShapeString(ss));
    }
    const int64_t packed_cols = ws.back();  // K * bits / 32
    const int64_t groups = ss.back();       // K / group_size

    MlxQuantizedTensor q{base, biases != nullptr, {}};
    if (block != nullptr) {
      // Per-layer overrides are keyed by module path; `false` marks a layer left unquantized.
      const json* layer = ObjectMember(*block, base);
      if (layer != nullptr && layer->is_boolean() && !layer->get<bool>()) {
        return Status::InvalidInput(where + ": config.json marks it unquantized but it has .scales");
      }
      const json& params = (layer != nullptr && layer->is_object()) ? *layer : *block;
      // An override without "mode" means affine, not the global mode: mlx-lm passes the override
      // to to_quantized(), whose default mode is affine (mlx-lm's mxfp4 conversions keep the MoE
      // router as {"group_size": 64, "bits": 8}).
      const std::string mode = StringMember(params, "mode");
      q.params.mode = mode.empty() ? "affine" : mode;
      const int64_t bits = IntMember(params, "bits", IntMember(*block, "bits", 0));
      const int64_t group_size = IntMember(params, "group_size", IntMember(*block, "group_size", 0));
      // Range check first, so that the products below cannot overflow on a hostile config.
      if (bits < 1 || bits > 8 || group_size < 1 || group_size > 4096) {
        return Status::InvalidInput(where + ": config.json gives bits " + std::to_string(bits) + " and group size " +
                                    std::to_string(group_size) + " (MLX allows bits 2..8 and group sizes 16..128)");
      }
      q.params.bits = static_cast<int>(bits);
      q.params.group_size = static_cast<int>(group_size);
      q.params.from_config = true;
      if (packed_cols * 32 != groups * q.params.group_size * q.params.bits) {
        return Status::InvalidInput(where + ": " + std::to_string(packed_cols) + " packed U32 columns and " +
                                    std::to_string(groups) + " scale groups per row contradict config.json (bits " +
                                    std::to_string(q.params.bits) + ", group size " +
                                    std::to_string(q.params.group_size) + ")");
      }
    } else if (packed_cols % groups != 0) {
      return Status::InvalidInput(where + ": " + std::to_string(packed_cols) + " packed U32 columns per row is not a " +
                                  "multiple of its " + std::to_string(groups) + " scale groups: fits no MLX mode");
    } else {
      // packed_cols / groups = bits * group_size / 32.
      const int64_t ratio = packed_cols / groups;
      q.params.from_config = false;
      if (scales->dtype == DType::kU8 && biases == nullptr) {
        if (ratio == 2) q.params = {"nvfp4", 4, 16, false};
        if (ratio == 4) q.params = {"mxfp4", 4, 32, false};
        if (ratio == 8) q.params = {"mxfp8", 8, 32, false};
      } else {
        for (int group_size : {64, 32, 128}) {
          const int64_t bits = ratio * 32 / group_size;
          if (bits * group_size == ratio * 32 && (bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 ||
                                                  bits == 8)) {
            q.params = {"affine", static_cast<int>(bits), group_size, false};
            break;
          }
        }
      }
      if (q.params.mode.empty()) {
        return Status::InvalidInput(where + ": " + std::to_string(packed_cols) + " packed U32 columns and " +
                                    std::to_string(groups) + " " + std::string(DTypeName(scales->dtype)) +
                                    " scale groups per row fit no MLX mode");
      }
    }
    const bool fp_mode = q.params.mode != "affine";
    if (fp_mode == q.has_biases) {
      return Status::InvalidInput(where + ": mode " + q.params.mode + (fp_mode ? " has no biases, but .biases exists"
                                                                               : " needs .biases, which is missing"));
    }
    out.push_back(std::move(q));
  }
  return out;
}

}  // namespace stquant::model
