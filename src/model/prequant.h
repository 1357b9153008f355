// Planning the import of an already-quantized checkpoint (MLX, NVIDIA ModelOpt NVFP4,
// compressed-tensors nvfp4-pack-quantized / pack-quantized int, gpt-oss MXFP4) without touching a
// single code: every output tensor is a byte transform of source tensors (copy with a new dtype
// label and shape, row selection, exact scale folding, an MLX global scale, an affine bias derived
// from a symmetric or zero-point scheme). Pure: reads headers only; the transforms run in
// src/output/prequant_write.h.
//
// Layout-neutral use (the ollama layout): PlanPrequant(inventory, kind, {.target = kRaw}) gives the
// same roles without expert stacking and with the source's own global scale (ModelOpt
// weight_scale_2 as-is, compressed-tensors' inverted weight_global_scale reciprocated); rename
// by role (kWeight "<layer>.weight", kScales "<layer>.weight.scale", kBiases "<layer>.weight.bias",
// kGlobalScale "<layer>.weight.global_scale") and write each with output::WritePrequantTensor.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/inventory.h"
#include "model/ollama_policy.h"
#include "model/plan_internal.h"
#include "stquant/convert.h"
#include "stquant/fp8_block.h"
#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant::model {

// How one output tensor's bytes come from its sources. Several sources are stacked along a new
// first axis (per-expert tensors into one switch_mlp tensor), in order.
enum class PrequantOp {
  kCopy,           // bytes unchanged; dtype and shape relabelled (U8 FP4 pairs -> U32, E4M3 -> U8)
  kSelectRows,     // the slices offset, offset + stride, ... along `axis` (gpt-oss gate_up split)
  kFoldScales,     // E4M3 block scales times the scalar aux tensor (ModelOpt weight_scale_2; with
                   // `inverted`, divided by compressed-tensors' weight_global_scale), each byte
                   // replaced by the E4M3 byte of the exact product; an inexact one is an error
  kMlxGlobalScale, // F32 MLX nvfp4 global scale g per source scalar, chosen so that MLX's
                   // f32(from_fp8(byte) * f32(g / 2688)) equals the source's per-block scale
                   // (f32(e4m3 * ws2), or f32(e4m3 / G) with `inverted`) for every E4M3 byte
                   // (or, failing that, every byte of the aux scale tensor); else an error
  kScalarF32,      // an F32 one-element tensor, copied (validated finite)
  kReciprocalF32,  // an F32 one-element tensor, stored as 1/v (v == 0 or non-finite: an error)
  kAffineBias,     // MLX affine bias -(2^(bits-1) + zero_point) * scale in the scale dtype, from the
                   // scale tensor (sources) and the zero point packed along dim 0 (aux, empty when
                   // symmetric); a bias not exactly representable is an error
  kDecodeFp8,      // an F8_E4M3 weight times its scale (aux, one per source, covering fp8_blocks),
                   // rounded to `dtype`: the float-quantized layers of a compressed-tensors
                   // mixed-precision container, decoded as model/fp8_source.h (a float tensor)
};

// What an output tensor is to the layer it belongs to.
enum class PrequantRole { kTensor, kWeight, kScales, kBiases, kGlobalScale };

struct PrequantTensor {
  std::string name;  // output name (mlx-lm's naming for PrequantTarget::kMlxLm)
  PrequantRole role = PrequantRole::kTensor;
  std::string layer;  // module path of a quantized layer; empty for kTensor
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  PrequantOp op = PrequantOp::kCopy;
  std::vector<std::string> sources;
  std::vector<std::string> aux;  // kFoldScales / kMlxGlobalScale / kAffineBias: one per source
  bool inverted = false;         // the scalar is an inverted global scale (compressed-tensors)
  int axis = 0;                  // kSelectRows
  int64_t stride = 1, offset = 0;
  int bits = 0;  // kAffineBias
  std::vector<Fp8Block> fp8_blocks;  // kDecodeFp8: what one scale covers, per source
  uint64_t bytes = 0;
  uint64_t source_bytes = 0;
};

struct PrequantLayer {
  std::string path;  // module path
  QuantSpec spec;    // mode, bits, group size; global_scale when it carries an MLX global scale
};

enum class PrequantTarget {
  kMlxLm,  // mlx_lm.load: experts stacked into switch_mlp, global scales only on stacked experts
  kRaw,    // layout-neutral: no stacking, the source's own global scale (see the file comment)
};

struct PrequantOptions {
  PrequantTarget target = PrequantTarget::kMlxLm;
};

struct PrequantPlan {
  SourceKind kind = SourceKind::kMlx;
  std::string format;  // e.g. "modelopt NVFP4", "compressed-tensors pack-quantized int4 (symmetric)"
  std::vector<PrequantTensor> tensors;  // sorted by name
  std::vector<PrequantLayer> layers;    // sorted by path
  // The config.json quantization block mlx-lm reads (default + per-layer entries); for an MLX
  // source, the source's own config is kept and this is null.
  nlohmann::json quantization;
  bool keep_config = false;  // MLX source: config.json copied as it is
  std::vector<std::string> notes;
  uint64_t input_bytes = 0;
  uint64_t output_bytes = 0;
};

// The ollama layout of a kRaw plan (ollama-create-spec §6.3): every quantized layer is one blob
// named "<layer>.weight" holding its tensors renamed by role (see the file comment), with
// __metadata__ quant_type (and group_size, which ModelOpt leaves to the runtime's 16); every
// other tensor is a blob of its own under its own name. Experts stay per expert (not stacked).
struct OllamaPrequantBlob {
  std::string name;
  std::string layer;            // the quantized layer's path; empty for a pass-through tensor
  std::vector<size_t> tensors;  // indices into PrequantPlan::tensors: weight, scale, bias, global scale
  std::map<std::string, std::string> metadata;  // empty for a pass-through tensor or with `requantize`
};

// A plan tensor's name in the ollama layout.
std::string OllamaPrequantName(const PrequantTensor& tensor);

// A kDecodeFp8 tensor as the planned float tensor that output::PlannedRows reads (transform
// kDecodeFp8, sources with their scales), named `name`, unquantized.
PlannedTensor DecodedFp8Tensor(const PrequantTensor& tensor, std::string name);

// The blobs of a kRaw plan, sorted by name. Errors (InvalidInput / Unsupported, naming `where` and
// the layer or tensor): a layer type ollama's runtime has no name for (affine with bits other
// than 4 and 8; not checked with `requantize`, where such layers are quantized again), two blobs or
// two output tensors with one name (source tensors that normalize to a clashing name).
Result<std::vector<OllamaPrequantBlob>> OllamaPrequantBlobs(const PrequantPlan& plan, const std::string& where,
                                                            bool requantize);

// The float dtype layers are dequantized to (--requantize): config torch_dtype / dtype when it is
// float16 or float32, else BF16.
DType DequantizedDType(const nlohmann::json& config);

// Plans the import of a checkpoint that Classify() found quantized (any kind but kFloat and
// kBlockFp8). Errors (InvalidInput / Unsupported) name the file or directory, the format and the
// tensor: a format that cannot be imported without touching codes, a second quantization format in
// the same checkpoint, inconsistent shapes.
Result<PrequantPlan> PlanPrequant(const Inventory& inventory, const Classification& kind,
                                  const PrequantOptions& options = {});

// BuildPlan's branch for a quantized source: plans the import (lossless, or with
// options.requantize a dequantize + quantize to options.quant), sets context.prequant and fills
// context.plan for --dry-run, the summary and the ollama writer (layout kOllama: a kRaw plan, the
// tensors in blob order with their ollama names; with --requantize a layer is one float tensor
// "<layer>.weight" of the dequantized dtype whose type `policy` chooses for options.quant). -q
// without --requantize is an InvalidArgument error explaining why.
Status PlanPrequantConversion(const ConvertOptions& options, const Classification& kind,
                              const OllamaPolicy* policy, PlanContext& context);

// For a checkpoint Classify() found float or block-FP8: an Unsupported error naming the format
// and a tensor when it is in fact quantized in a format stquant does not read (GPTQ, AWQ,
// bitsandbytes, HQQ, ..., an unknown config quant_method, integer-typed weights); Ok otherwise.
Status CheckNoUnknownQuantization(const Inventory& inventory);

}  // namespace stquant::model
