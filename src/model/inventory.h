// The inventory of a source checkpoint: config.json, the shard list and every tensor header,
// with no weight data read. Everything later (classification, the plan, inspect) works from this.
//
// Directory layout accepted (Hugging Face):
//   config.json                      required, a JSON object
//   model.safetensors.index.json     optional; when present its weight_map is the truth: every
//                                    indexed tensor must be in the shard it names, and every tensor
//                                    of an indexed shard must be indexed
//   *.safetensors                    without an index: model.safetensors alone, or the
//                                    model-*.safetensors shards, or else every *.safetensors file
//                                    (model.safetensors beside model-*.safetensors is ambiguous)
//   hf_quant_config.json             optional (NVIDIA ModelOpt)
// Shards may be symlinks (the HF cache's snapshots/<rev>/x.safetensors -> ../../blobs/<hash>).
//
// Thread safety: an Inventory is immutable after Open; const methods may be called from several
// threads (the Readers' Read/View are thread-safe).
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "stquant/safetensors.h"
#include "stquant/status.h"
#include "util/input_file.h"

namespace stquant::model {

struct Shard {
  std::string file_name;  // bare name inside the model directory
  std::string path;       // directory + "/" + file_name, as opened
  std::unique_ptr<safetensors::Reader> reader;
};

struct TensorRef {
  size_t shard = 0;                                 // index into Inventory::shards()
  const safetensors::TensorInfo* info = nullptr;    // owned by that shard's Reader
};

// The parsed model.safetensors.index.json: tensor -> shard file name, every shard a bare
// ".safetensors" file name (no '/', no '..', no absolute path: a shard cannot live outside the
// model directory; a symlink inside it may point anywhere, as in the HF cache).
struct IndexFile {
  std::map<std::string, std::string> weight_map;
  std::optional<uint64_t> total_size;  // metadata.total_size, when an unsigned integer
};

// Pure parsers of the model directory's JSON files (no I/O; any byte string is safe input; used
// by Inventory::Open and by fuzz/model_index_fuzz.cc). Errors are InvalidInput, one line, naming
// `path` (and the tensor for index entries); names from the file are printed escaped.
// ParseJsonObjectText parses a file of the kind `limit` describes (util::ParseJson's limits).
Result<nlohmann::json> ParseJsonObjectText(std::string_view text, const std::string& path,
                                           const util::InputLimit& limit);
Result<IndexFile> ParseIndexText(std::string_view text, const std::string& path);

class Inventory {
 public:
  // Reads a model directory (see the layout above). Errors name the file and, where one is
  // involved, the tensor: InvalidInput for a malformed or inconsistent model, IoError when the OS
  // fails.
  static Result<Inventory> Open(const std::string& dir);
  // A single .safetensors file, without config.json (config() is then an empty object).
  static Result<Inventory> OpenFile(const std::string& path);

  Inventory(Inventory&&) = default;
  Inventory& operator=(Inventory&&) = default;

  const std::string& path() const { return path_; }  // the directory, or the file for OpenFile
  bool is_directory() const { return is_directory_; }
  bool has_index() const { return has_index_; }
  // config.json (an object; empty for OpenFile).
  const nlohmann::json& config() const { return config_; }
  // hf_quant_config.json, when the directory has one.
  const std::optional<nlohmann::json>& hf_quant_config() const { return hf_quant_config_; }
  // Shards in sorted file-name order.
  const std::vector<Shard>& shards() const { return shards_; }
  // Every tensor, keyed (and so sorted) by name.
  const std::map<std::string, TensorRef, std::less<>>& tensors() const { return tensors_; }
  // The sorted tensor names.
  const std::vector<std::string>& names() const { return names_; }
  // nullptr when absent.
  const TensorRef* Find(std::string_view name) const;
  const safetensors::TensorInfo* FindInfo(std::string_view name) const;
  // Non-fatal findings (e.g. an index total_size that disagrees with the headers).
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  Inventory() = default;
  Status AddShard(std::string file_name, std::string path);
  void FinishNames();

  std::string path_;
  bool is_directory_ = false;
  bool has_index_ = false;
  nlohmann::json config_ = nlohmann::json::object();
  std::optional<nlohmann::json> hf_quant_config_;
  std::vector<Shard> shards_;
  std::map<std::string, TensorRef, std::less<>> tensors_;
  std::vector<std::string> names_;
  std::vector<std::string> warnings_;
};

// What kind of checkpoint a source is, decided from tensor names, dtypes and the config.
enum class SourceKind {
  kFloat,              // BF16 / F16 / F32 weights
  kBlockFp8,           // F8_E4M3 *.weight + *.weight_scale_inv (or *.weight_scale) blocks
  kMlx,                // MLX-quantized: U32 *.weight + *.scales [+ *.biases]
  kModelOptNvfp4,      // NVIDIA ModelOpt NVFP4: U8 *.weight + F8_E4M3 *.weight_scale + *.weight_scale_2
  kCompressedTensors,  // config quantization_config.quant_method == "compressed-tensors"
  kGptOssMxfp4,        // OpenAI gpt-oss: *_blocks + *_scales
};

// "float", "block-fp8", "mlx", "modelopt-nvfp4", "compressed-tensors", "gpt-oss-mxfp4".
std::string_view SourceKindName(SourceKind kind);

struct Classification {
  SourceKind kind = SourceKind::kFloat;
  std::string detail;  // one line, e.g. "F8_E4M3, weight_block_size [128, 128]"
};

// Precedence (first match wins): gpt-oss *_blocks/*_scales pairs; compressed-tensors (config, or
// a *.weight_packed tensor); ModelOpt NVFP4 (hf_quant_config.json quant_algo NVFP4, config
// quant_method modelopt, or a U8 *.weight with an F8_E4M3 *.weight_scale); MLX (a *.scales
// tensor beside a U32 *.weight, or a config "quantization" block); block FP8 (an F8_E4M3
// *.weight); float.
Classification Classify(const Inventory& inventory);

// The parameters of one MLX-quantized linear layer.
struct MlxQuantParams {
  std::string mode;  // "affine", "mxfp4", "mxfp8", "nvfp4"
  int bits = 0;
  int group_size = 0;
  bool from_config = false;  // false: inferred from the tensor shapes
};

struct MlxQuantizedTensor {
  std::string base;  // module path: "<base>.weight", "<base>.scales", "<base>.biases"
  bool has_biases = false;
  MlxQuantParams params;
};

// Every MLX-style quantized layer (a U32 "<base>.weight" with "<base>.scales"), in name order,
// with its mode, bits and group size: from the config's "quantization" (or
// "quantization_config") block, per-layer overrides included (an override without "mode" is
// affine, as in mlx-lm), else inferred from the shapes
// (for affine, where shapes only fix bits * group_size, the MLX default group size 64 is
// preferred, then 32, then 128). InvalidInput when the shapes contradict the config or fit no
// MLX mode.
Result<std::vector<MlxQuantizedTensor>> FindMlxQuantized(const Inventory& inventory);

}  // namespace stquant::model
