// Converting a Hugging Face checkpoint directory into a quantized model: the `stquant convert`
// command. Two steps, both public so that --dry-run can show the first:
//   PlanConversion  reads headers only (config.json, the index, every shard header) and decides,
//                   for every output tensor, its sources, transform and quantization; pure data.
//   Convert         carries a plan out with bounded memory (read -> decode/stack/cast ->
//                   quantize -> write) into a temporary directory renamed onto the output at the
//                   end, so an interrupted run never leaves a partial model behind.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stquant/dtype.h"
#include "stquant/fp8_block.h"
#include "stquant/quant_report.h"
#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant {

// kMlx:    an mlx_lm.load directory (-o DIR).
// kOllama: a model in an ollama model store (--name NAME): content-addressed safetensors blobs and a
//          manifest (ollama-create-spec §6, §9), what `ollama create --experimental` writes.
enum class OutputLayout { kMlx, kOllama };

// Which tensors get which quantization.
//   kMlxLm: what mlx_lm.convert quantizes: every Linear / Embedding / SwitchLinear weight (a
//           ".weight" of rank >= 2) whose last dimension the group size divides, minus the
//           architecture's own exceptions (e.g. qwen3_moe routers are 8-bit affine, group 64).
//   kOllama: ollama's importer policy (ollama-create-spec §7, §8): the default rules (embeddings,
//           norms, routers, vision and audio kept; lm_head and v/k/down promoted to the family's
//           8-bit type; unaligned or < 1024-element tensors kept) and the per-architecture
//           policies. Never casts a kept tensor. The default of the ollama layout.
enum class QuantPolicy { kMlxLm, kOllama };

// --override REGEX=TYPE: the first pattern found in an output tensor's name decides its type;
// `spec` nullopt means "keep unquantized".
struct QuantOverride {
  std::string pattern;
  std::optional<QuantSpec> spec;
};

struct ConvertOptions {
  std::string source_dir;
  std::string output_dir;
  std::optional<QuantSpec> quant;  // nullopt: no quantization (decode, stack and re-shard only)
  // mlx-lm's mixed recipes (affine only): "mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6".
  std::string recipe;
  std::vector<QuantOverride> overrides;
  QuantPolicy policy = QuantPolicy::kMlxLm;
  OutputLayout layout = OutputLayout::kMlx;
  uint64_t shard_bytes = 5ull << 30;  // mlx-lm's MAX_FILE_SIZE_GB (GiB)
  // The MLX numerics to follow (quantization and FP8 decode); quant specs carry it too.
  QuantProfile profile = QuantProfile::kMlxCpu;
  int threads = 0;                    // 0: all cores
  bool force = false;                 // replace an existing output directory
  // The preflight (output/preflight.h) compares the projected output size with the target file
  // system's free space; false (--no-preflight) skips that check alone, for file systems that
  // misreport their free space.
  bool check_free_space = true;
  // An already-quantized source (MLX, ModelOpt NVFP4, compressed-tensors, gpt-oss MXFP4) is
  // imported without touching a code; with `quant` set it is an error unless `requantize`, which
  // dequantizes it with the source format's arithmetic and quantizes again (loses accuracy).
  bool requantize = false;
  // mlx_lm.convert --dtype: the dtype of every floating tensor that is not quantized (and of the
  // values quantized, hence of affine scales and biases); nullopt: config.json's torch_dtype (or
  // text_config dtype), as mlx-lm.
  std::optional<DType> dtype;
  // mlx_lm.convert --dequantize: an already-quantized source is written as floats (its layers
  // dequantized with the source's arithmetic); a float source is converted without quantization.
  bool dequantize = false;
  // The mlx layout refuses a config model_type that the architecture table lacks (or refuses);
  // with this set, a model_type the table lacks gets the generic rules (every rank >= 2 .weight
  // treated as a Linear/Embedding weight, experts stacked into switch_mlp) and a warning.
  bool allow_unknown_architecture = false;
  // --report: measure every quantized tensor's error in the conversion's pass
  // (ConvertSummary::quant_errors, stquant/quant_report.h).
  bool measure_quant_error = false;

  // Layout kOllama.
  std::string model_name;  // "foo", "me/foo:v1", "host/ns/foo:tag" (ollama-create-spec §9.3)
  // The store root; empty: $OLLAMA_MODELS, else ~/.ollama/models.
  std::string models_dir;
  // A Modelfile (FROM, TEMPLATE, SYSTEM, LICENSE, PARAMETER, PARSER, RENDERER, REQUIRES, DRAFT);
  // empty: none. Its FROM replaces `source_dir` when that is empty.
  std::string modelfile;
  // A draft (MTP) model imported beside the target (tensor prefix "draft.", configs "draft/").
  std::string draft_dir;
  std::optional<QuantSpec> draft_quant;
};

// Where one output tensor's values come from: kDecodeFp8 when its source is block-FP8 (decoded
// to bfloat16), else kCast when its dtype differs from the source's, else kCopy. Views and value
// ops (below) come on top of any of them.
enum class TensorTransform { kCopy, kCast, kDecodeFp8 };

// A strided view of a source tensor, in the source's row-major element order: element
// [i0, ..., ik] of the view is source element offset + i0 * strides[0] + ... + ik * strides[k]
// (after an FP8 decode, element for element). The architecture rules (reshape, split, transpose,
// stack) compose into one view per source.
struct TensorView {
  int64_t offset = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
};

// The row-major view of a whole tensor of `shape`.
TensorView ContiguousView(const std::vector<int64_t>& shape);

// An elementwise operation of the architecture rules, with MLX's semantics for an array of dtype
// D and a Python float c: c is rounded to D first (a weakly typed scalar), the operation is done in
// float32 and rounded to D (round to nearest even).
struct ValueOp {
  enum class Kind { kAdd, kMultiply };
  Kind kind = Kind::kAdd;
  double value = 0.0;
};

struct PlannedSource {
  std::string tensor;     // source tensor name
  std::string fp8_scale;  // FP8 scale companion ("<tensor>_scale_inv" or "_scale"), else empty
  // The part of the output this source gives (the pieces are concatenated along the first axis;
  // a stacked expert is one [1, ...] piece). Empty shape and strides with offset 0 for a scalar.
  TensorView view;
  Fp8Block fp8_block;     // what one of its scales covers (128x128 block FP8; per channel, ...)
  // The float dtype the E4M3 x scale products are rounded to (then cast to the tensor's dtype):
  // BF16 for block FP8 (as mlx-lm's and ollama's decode), the model's dtype for
  // compressed-tensors float-quantized.
  DType fp8_dtype = DType::kBF16;
};

// One tensor of the output model before quantization (a quantized one becomes "<name>" U32,
// "<base>.scales" and, for affine, "<base>.biases").
struct PlannedTensor {
  std::string name;
  std::vector<PlannedSource> sources;  // more than one: experts stacked along a new first axis
  TensorTransform transform = TensorTransform::kCopy;
  DType source_dtype = DType::kBF16;
  DType dtype = DType::kBF16;  // dtype of the values after the transform
  std::vector<int64_t> shape;  // after stacking
  // Applied in order to the source values (after the FP8 decode, in the source or decoded dtype),
  // before the cast to `dtype`.
  std::vector<ValueOp> value_ops;
  // The architecture rules that made this tensor, one line each ("stack 4", "transpose (1, 0)"),
  // for --dry-run.
  std::vector<std::string> steps;
  std::optional<QuantSpec> quant;
  // mlx-lm config entry "quantization"[<module path>] for layers quantized differently from the
  // model's default; "mode" is omitted when `entry_mode` is empty (as mlx-lm's qwen3_moe router).
  bool has_config_entry = false;
  std::string entry_mode;
  uint64_t output_bytes = 0;  // all of its output tensors
  // Layout kOllama: the blob (manifest layer) that holds this tensor.
  std::string blob;
};

// Layout kOllama: one layer of the manifest an import writes (ollama-create-spec §9.2). Digests are
// known only once a blob is written, except for the layers of a FROM model, which are reused.
struct PlannedLayer {
  std::string media_type;
  std::string name;    // blob name ("" for Modelfile text layers)
  uint64_t bytes = 0;  // tensor blobs: their tensors' data; other layers: the blob's size
  std::string digest;  // "sha256:<hex>" when known
};

struct ConversionPlan {
  std::string architecture;  // config model_type
  std::string source_kind;   // "float", "block-fp8"
  std::vector<PlannedTensor> tensors;  // sorted by name (layout kOllama: in blob order)
  std::string policy;                  // "mlx-lm", or "ollama/<family>"
  std::optional<QuantSpec> default_quant;
  uint64_t input_bytes = 0;   // the source tensors read
  uint64_t output_bytes = 0;  // tensor data written
  uint64_t parameters = 0;    // logical parameter count (mlx-lm's total_parameters)
  std::vector<std::string> copied_files;  // tokenizer, generation config, chat templates, ...
  std::vector<std::string> warnings;
  // Layout kOllama: the manifest the import would write (its layers in order) and where.
  std::string manifest_path;
  std::vector<PlannedLayer> manifest_layers;
};

// ollama create's --quantize names (ollama-create-spec §3), trimmed and case-insensitive: int4,
// q4, fp4 -> int4; int8, q8, fp8 -> int8 (affine, group 64); nvfp4; mxfp4; mxfp8. Anything else
// is InvalidArgument with ollama's text: `unsupported <what> "<name>": supported types are int4,
// int8, nvfp4, mxfp4, mxfp8`.
Result<QuantSpec> ParseOllamaQuantType(std::string_view name, std::string_view what = "--quantize");

// Reads headers only. Errors name the file and the tensor; kUnsupported for quantized formats
// stquant does not read (GPTQ, AWQ, bitsandbytes, ...) and for already-quantized layers that
// cannot be imported without touching their codes (the message points at --requantize).
Result<ConversionPlan> PlanConversion(const ConvertOptions& options);

// A human table and a JSON rendering of a plan (for --dry-run).
std::string FormatPlanText(const ConversionPlan& plan);
std::string FormatPlanJson(const ConversionPlan& plan);

struct ConvertProgress {
  uint64_t tensors_done = 0, tensors_total = 0;
  uint64_t bytes_done = 0, bytes_total = 0;  // input bytes
  std::string current;                       // tensor being processed
};

struct ConvertSummary {
  uint64_t input_bytes = 0;
  uint64_t output_bytes = 0;
  uint64_t parameters = 0;
  uint64_t tensors = 0;
  uint64_t quantized_tensors = 0;
  int shards = 0;
  double seconds = 0.0;
  uint64_t peak_rss_bytes = 0;
  std::vector<std::string> warnings;  // the plan's (unknown architecture, index oddities, ...)
  std::vector<TensorQuantError> quant_errors;  // ConvertOptions::measure_quant_error, in output order
  // Layout kOllama.
  std::string manifest_path;
  uint64_t layers = 0;
  uint64_t blobs_reused = 0;  // layers whose blob was already in the store
};

// Plans and carries out a conversion. `progress` (optional) is called from the converting thread
// after each chunk.
Result<ConvertSummary> Convert(const ConvertOptions& options,
                               const std::function<void(const ConvertProgress&)>& progress = nullptr);

// Several outputs of one source (`-q int4,nvfp4 -o 'out-{q}'`): each byte-identical to its own
// Convert, in one summary each, in order. Outputs of the mlx layout whose plans read the same rows
// (they differ only in quantization) are written in one pass over the source: each block is read
// once and fed to every output. Otherwise (the ollama layout, an already-quantized source) they
// are converted one after the other. In one pass, every output is planned and preflighted before
// any byte is written, and an error leaves none of them (each is renamed into place only when all
// are written); one after the other, the outputs completed before an error stay.
Result<std::vector<ConvertSummary>> ConvertMany(const std::vector<ConvertOptions>& outputs,
                                                const std::function<void(const ConvertProgress&)>& progress = nullptr);

}  // namespace stquant
