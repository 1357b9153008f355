// Inspect: what a safetensors file or a Hugging Face / MLX model directory holds, from the headers
// alone (no weight data is read).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "stquant/status.h"

namespace stquant {

struct InspectTensor {
  std::string name;
  std::string dtype;  // safetensors name: "BF16", "F8_E4M3", ...
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  std::string shard;  // file name of the shard that holds it
};

struct InspectShard {
  std::string file;
  uint64_t file_bytes = 0;
  uint64_t tensors = 0;
};

// One MLX-quantized layer: "<name>.weight" (U32) + "<name>.scales" [+ "<name>.biases"].
struct InspectQuantized {
  std::string name;  // module path, without ".weight"
  std::string mode;  // "affine", "mxfp4", "mxfp8", "nvfp4"
  int bits = 0;
  int group_size = 0;
  bool from_config = false;  // false: inferred from the tensor shapes
};

struct InspectDTypeTotal {
  uint64_t tensors = 0;
  uint64_t bytes = 0;
};

struct InspectReport {
  std::string path;
  bool is_directory = false;
  std::string architecture;  // config.json architectures[0], else model_type; "" without config
  std::string model_type;    // config.json model_type (else text_config's); "" without one
  // What stquant's architecture table says of model_type (convert's mlx layout):
  //   "verified": converted with the table's rules, checked against mlx_lm.convert;
  //   "refused":  refused, for `architecture_note`;
  //   "unknown":  not in the table: refused unless --allow-unknown-architecture.
  // "" without a config.json.
  std::string architecture_status;
  std::string architecture_note;
  std::string source_kind;   // "float", "block-fp8", "mlx", "modelopt-nvfp4", "compressed-tensors",
                             // "gpt-oss-mxfp4"
  std::string source_detail;
  std::vector<InspectShard> shards;
  std::vector<InspectTensor> tensors;  // sorted by name
  uint64_t total_bytes = 0;            // sum of the tensors' data bytes
  std::map<std::string, InspectDTypeTotal> by_dtype;
  std::vector<InspectQuantized> quantized;  // sorted by name
  std::vector<std::string> warnings;
};

// `path` is a .safetensors file or a model directory. Errors: InvalidArgument for a path that is
// neither; InvalidInput for a malformed file or model (the message names the file and tensor);
// IoError when the OS fails.
Result<InspectReport> Inspect(const std::string& path);

// A model of an ollama store (`stquant inspect --models-dir DIR NAME`): its manifest, the config
// blob, and every layer with, for tensor blobs, each tensor's dtype, shape and quantization (from
// the blob's __metadata__, per tensor or uniform). `models_dir` empty: $OLLAMA_MODELS, else
// ~/.ollama/models. InvalidArgument for an invalid or unknown name; InvalidInput for a malformed
// manifest or blob. Returns the text or (json) one JSON object with a trailing newline.
Result<std::string> InspectOllamaModel(const std::string& models_dir, const std::string& name, bool json);

// Human-readable: a header, one line per tensor, per-dtype totals and the quantized layers.
std::string FormatInspectText(const InspectReport& report);
// Machine-readable JSON (one object, keys sorted, trailing newline); see docs in README.md.
std::string FormatInspectJson(const InspectReport& report);

}  // namespace stquant
