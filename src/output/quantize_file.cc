#include "stquant/quantize_file.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <vector>

#include <fmt/format.h>

#include "output/tensor_stream.h"
#include "safetensors/format.h"
#include "stquant/safetensors.h"

namespace stquant {

namespace {

using safetensors::Reader;
using safetensors::TensorDecl;
using safetensors::TensorInfo;
using safetensors::Writer;

constexpr std::string_view kWeightSuffix = ".weight";

// A tensor name for a one-line message (control characters escaped).
std::string P(std::string_view name) { return safetensors::internal::Printable(name); }

// Shapes are processed only when their non-zero dimensions multiply to at most this, so that no
// size computed from a shape (cols x bits, words x 32) can overflow. Tensors with data are far
// below; only a zero-size tensor can declare more.
constexpr int64_t kMaxNominalElements = int64_t{1} << 56;

Status CheckNominalShape(const std::string& path, const TensorInfo& info) {
  const auto nominal = safetensors::internal::NonZeroElementCount(info.shape);
  if (!nominal || *nominal > kMaxNominalElements) {
    return Status::InvalidInput(fmt::format(
        "{}: tensor '{}': shape {} is out of range: its non-zero dimensions multiply to more than 2^56 (corrupt "
        "header?)",
        path, P(info.name), safetensors::internal::ShapeString(info.shape)));
  }
  return Status::Ok();
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Output names of one quantized tensor.
struct QuantizedNames {
  std::string packed, scales, biases, global_scale;
};

QuantizedNames NamesFor(std::string_view name, TensorNaming naming) {
  QuantizedNames names;
  names.packed = std::string(name);
  if (naming == TensorNaming::kOllama) {
    names.scales = names.packed + ".scale";
    names.biases = names.packed + ".bias";
    names.global_scale = names.packed + ".global_scale";
  } else {
    const std::string base(EndsWith(name, kWeightSuffix) ? name.substr(0, name.size() - kWeightSuffix.size()) : name);
    names.scales = base + ".scales";
    names.biases = base + ".biases";
    names.global_scale = base + ".global_scale";
  }
  return names;
}

// A tensor of the input and what happens to it.
struct TensorJob {
  const TensorInfo* source = nullptr;
  bool quantize = false;
  QuantizedNames names;  // quantize only
};

std::map<std::string, std::string> QuantMetadata(const std::vector<TensorJob>& jobs, const QuantSpec& spec,
                                                 TensorNaming naming) {
  std::map<std::string, std::string> metadata;
  if (naming == TensorNaming::kMlx) metadata["format"] = "mlx";
  const bool any = std::any_of(jobs.begin(), jobs.end(), [](const TensorJob& j) { return j.quantize; });
  const bool all = std::all_of(jobs.begin(), jobs.end(), [](const TensorJob& j) { return j.quantize; });
  if (!any) return metadata;
  const std::string type = QuantTypeName(spec);
  const std::string group = std::to_string(spec.group_size);
  if (all) {
    metadata["quant_type"] = type;
    metadata["group_size"] = group;
  } else {
    for (const TensorJob& job : jobs) {
      if (!job.quantize) continue;
      metadata[job.names.packed + ".quant_type"] = type;
      metadata[job.names.packed + ".group_size"] = group;
    }
  }
  return metadata;
}

// The command-line mistakes about the two paths, as usage errors before any work: a missing
// input, an output that is a directory or whose directory does not exist.
Status CheckFilePaths(const std::string& input_path, const std::string& output_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  // No entry at all; a link loop or a dangling link is named as such when the input is opened.
  if (!fs::exists(fs::symlink_status(input_path, ec))) {
    return Status::InvalidArgument("'" + input_path + "': no such file or directory");
  }
  if (fs::is_directory(output_path, ec)) {
    return Status::InvalidArgument(fmt::format("output '{}' is a directory; give the name of a .safetensors file", output_path));
  }
  const fs::path parent = fs::path(output_path).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec)) {
    return Status::InvalidArgument(
        fmt::format("output '{}': '{}' is not a directory", output_path, parent.string()));
  }
  return Status::Ok();
}

}  // namespace

Status QuantizeFile(const std::string& input_path, const std::string& output_path,
                    const QuantizeFileOptions& options) {
  const QuantSpec& spec = options.spec;
  STQ_RETURN_IF_ERROR(ValidateQuantSpec(spec));
  std::optional<std::regex> selector;
  if (!options.tensor_regex.empty()) {
    try {
      selector.emplace(options.tensor_regex, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return Status::InvalidArgument(fmt::format("--tensors '{}': invalid regular expression: {}",
                                                 options.tensor_regex, e.what()));
    }
  }
  STQ_RETURN_IF_ERROR(CheckFilePaths(input_path, output_path));
  STQ_ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader, Reader::Open(input_path));

  std::vector<TensorJob> jobs;
  for (const TensorInfo& info : reader->tensors()) {
    TensorJob job;
    job.source = &info;
    job.quantize = IsFloatingDType(info.dtype) && info.shape.size() >= 2 &&
                   (!selector || std::regex_match(info.name, *selector));
    if (job.quantize) {
      STQ_RETURN_IF_ERROR(ValidateQuantInput(spec, info.dtype, info.shape)
                              .Annotate(fmt::format("{}: tensor '{}'", input_path, P(info.name))));
      STQ_RETURN_IF_ERROR(CheckNominalShape(input_path, info));
      job.names = NamesFor(info.name, options.naming);
    }
    jobs.push_back(std::move(job));
  }
  std::sort(jobs.begin(), jobs.end(),
            [](const TensorJob& a, const TensorJob& b) { return a.source->name < b.source->name; });

  std::vector<TensorDecl> decls;
  for (const TensorJob& job : jobs) {
    const TensorInfo& info = *job.source;
    if (!job.quantize) {
      decls.push_back({info.name, info.dtype, info.shape});
      continue;
    }
    std::vector<int64_t> packed_shape = info.shape, scale_shape = info.shape;
    packed_shape.back() = PackedWordsPerRow(spec, info.shape.back());
    scale_shape.back() = GroupsPerRow(spec, info.shape.back());
    decls.push_back({job.names.packed, DType::kU32, packed_shape});
    decls.push_back({job.names.scales, ScaleDType(spec, info.dtype), scale_shape});
    if (ModeInfo(spec.mode).has_biases) decls.push_back({job.names.biases, info.dtype, scale_shape});
    if (spec.global_scale) decls.push_back({job.names.global_scale, DType::kF32, {}});
  }
  std::set<std::string_view> seen;
  for (const TensorDecl& decl : decls) {
    if (!seen.insert(decl.name).second) {
      return Status::InvalidArgument(fmt::format(
          "{}: output tensor name '{}' would be written twice (the input already has a tensor of that name)",
          input_path, P(decl.name)));
    }
  }
  std::sort(decls.begin(), decls.end(), [](const TensorDecl& a, const TensorDecl& b) { return a.name < b.name; });

  STQ_ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer,
                       Writer::Create(output_path, decls, QuantMetadata(jobs, spec, options.naming)));
  auto target = [&](const std::string& name) { return output::WriteTarget{writer.get(), *writer->IndexOf(name)}; };
  for (const TensorJob& job : jobs) {
    const TensorInfo& info = *job.source;
    if (!job.quantize) {
      STQ_RETURN_IF_ERROR(output::CopyRows(output::ReaderRows(*reader, info), target(info.name), options.threads));
      continue;
    }
    float global_scale = 0.0f;
    if (spec.global_scale) {
      STQ_ASSIGN_OR_RETURN(global_scale, output::RowsAbsMax(output::ReaderRows(*reader, info)));
      uint8_t bytes[4];
      std::memcpy(bytes, &global_scale, 4);
      STQ_RETURN_IF_ERROR(target(job.names.global_scale).Write(0, bytes));
    }
    output::QuantizedTargets targets{target(job.names.packed), target(job.names.scales), std::nullopt};
    if (ModeInfo(spec.mode).has_biases) targets.biases = target(job.names.biases);
    STQ_RETURN_IF_ERROR(
        output::QuantizeRowSource(output::ReaderRows(*reader, info), spec, global_scale, targets, options.threads));
  }
  return writer->Commit();
}

namespace {

// A quantized layer found in a file, with its names resolved.
struct QuantizedLayer {
  output::QuantizedSources sources;
  const TensorInfo* global_scale = nullptr;
  std::string output_name;  // the packed tensor's name
};

std::optional<int> ParseInt(const std::string& text) {
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// The spec of a layer from __metadata__ (per tensor first, then uniform) or its shapes.
Result<QuantSpec> LayerSpec(const Reader& reader, const QuantizedLayer& layer, const DequantizeFileOptions& options) {
  const std::string& name = layer.output_name;
  auto context = [&] { return fmt::format("{}: tensor '{}'", reader.path(), P(name)); };
  std::optional<std::string> type, group;
  if (reader.metadata()) {
    const auto& metadata = *reader.metadata();
    auto lookup = [&](const std::string& key) -> std::optional<std::string> {
      if (auto it = metadata.find(name + "." + key); it != metadata.end()) return it->second;
      if (auto it = metadata.find(key); it != metadata.end()) return it->second;
      return std::nullopt;
    };
    type = lookup("quant_type");
    group = lookup("group_size");
  }
  STQ_RETURN_IF_ERROR(CheckNominalShape(reader.path(), *layer.sources.packed));
  STQ_RETURN_IF_ERROR(CheckNominalShape(reader.path(), *layer.sources.scales));
  QuantSpec spec;
  const int64_t words = layer.sources.packed->shape.empty() ? 0 : layer.sources.packed->shape.back();
  const int64_t groups = layer.sources.scales->shape.empty() ? 0 : layer.sources.scales->shape.back();
  if (words <= 0 || groups <= 0 || (words % groups != 0 && layer.sources.scales->dtype == DType::kU8)) {
    return Status::InvalidInput(fmt::format("{}: packed shape and scales shape do not fit any MLX mode", context()));
  }
  if (type) {
    Result<QuantSpec> parsed = ParseQuantType(*type);
    if (!parsed.ok()) {
      // The type comes from the file: a bad one is a malformed input, not a bad argument.
      return Status::InvalidInput(fmt::format("{}: quant_type metadata: {}", context(), P(parsed.status().message())));
    }
    spec = *parsed;
  } else if (layer.sources.scales->dtype == DType::kU8) {
    // Packed words per scale: 32/8 elements per word for 4-bit modes, 32/4 for mxfp8.
    const int64_t ratio = words / groups;
    const char* inferred = ratio == 4 ? "mxfp4" : ratio == 2 ? "nvfp4" : ratio == 8 ? "mxfp8" : nullptr;
    if (inferred == nullptr) {
      return Status::InvalidInput(fmt::format("{}: {} packed words per U8 scale fit no mx/nv mode", context(), ratio));
    }
    STQ_ASSIGN_OR_RETURN(spec, ParseQuantType(inferred));
  } else {
    spec.mode = QuantMode::kAffine;
    spec.bits = 0;
    // words * 32 = groups * group_size * bits: try the MLX default group size first.
    for (int candidate : {64, 32, 128}) {
      if (options.group_size && *options.group_size != candidate) continue;
      const int64_t bits_times = words * 32;
      if (bits_times % (groups * candidate) != 0) continue;
      const int64_t bits = bits_times / (groups * candidate);
      if (options.bits && *options.bits != bits) continue;
      if (bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8) {
        spec.bits = static_cast<int>(bits);
        spec.group_size = candidate;
        break;
      }
    }
    if (spec.bits == 0) {
      return Status::InvalidInput(fmt::format("{}: packed width {} and {} groups fit no affine bits/group size",
                                              context(), words, groups));
    }
  }
  if (group) {
    const std::optional<int> parsed = ParseInt(*group);
    if (!parsed) {
      return Status::InvalidInput(fmt::format("{}: group_size metadata '{}' is not an integer", context(), P(*group)));
    }
    spec.group_size = *parsed;
  }
  if (options.bits) spec.bits = *options.bits;
  if (options.group_size) spec.group_size = *options.group_size;
  spec.global_scale = layer.global_scale != nullptr;
  STQ_RETURN_IF_ERROR(ValidateQuantSpec(spec).Annotate(context()));
  if (words * 32 % spec.bits != 0 || (words * 32 / spec.bits) != groups * spec.group_size) {
    return Status::InvalidInput(fmt::format(
        "{}: packed width {} x 32 / {} bits does not equal {} groups x group size {}", context(), words,
        spec.bits, groups, spec.group_size));
  }
  if (spec.mode != QuantMode::kAffine && layer.sources.scales->dtype != DType::kU8) {
    return Status::InvalidInput(fmt::format("{}: {} scales must be U8", context(), ModeInfo(spec.mode).name));
  }
  if (spec.mode == QuantMode::kAffine && layer.sources.biases == nullptr) {
    return Status::InvalidInput(fmt::format("{}: affine quantization needs biases", context()));
  }
  if (spec.mode == QuantMode::kAffine) {
    const DType scale_dtype = layer.sources.scales->dtype;
    if (scale_dtype != DType::kBF16 && scale_dtype != DType::kF16 && scale_dtype != DType::kF32) {
      return Status::InvalidInput(fmt::format("{}: affine scales '{}' are {}; they must be BF16, F16 or F32", context(),
                                              P(layer.sources.scales->name), DTypeName(scale_dtype)));
    }
    if (layer.sources.biases->dtype != scale_dtype) {
      return Status::InvalidInput(fmt::format("{}: biases '{}' are {} but scales are {}", context(),
                                              P(layer.sources.biases->name), DTypeName(layer.sources.biases->dtype),
                                              DTypeName(scale_dtype)));
    }
  }
  return spec;
}

}  // namespace

Status DequantizeFile(const std::string& input_path, const std::string& output_path,
                      const DequantizeFileOptions& options) {
  STQ_RETURN_IF_ERROR(CheckFilePaths(input_path, output_path));
  STQ_ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader, Reader::Open(input_path));
  // Find every scales tensor and its companions, in either naming.
  std::vector<QuantizedLayer> layers;
  std::set<std::string> consumed;
  for (const TensorInfo& info : reader->tensors()) {
    QuantizedLayer layer;
    std::string base;
    if (EndsWith(info.name, ".scales")) {
      base = info.name.substr(0, info.name.size() - 7);
      layer.output_name = reader->Find(base + ".weight") ? base + ".weight" : base;
      layer.sources.biases = reader->Find(base + ".biases");
      layer.global_scale = reader->Find(base + ".global_scale");
    } else if (EndsWith(info.name, ".scale")) {
      base = info.name.substr(0, info.name.size() - 6);
      layer.output_name = base;
      layer.sources.biases = reader->Find(base + ".bias");
      layer.global_scale = reader->Find(base + ".global_scale");
    } else {
      continue;
    }
    layer.sources.packed = reader->Find(layer.output_name);
    layer.sources.scales = &info;
    if (layer.sources.packed == nullptr || layer.sources.packed->dtype != DType::kU32) continue;
    consumed.insert(layer.output_name);
    consumed.insert(info.name);
    if (layer.sources.biases) consumed.insert(layer.sources.biases->name);
    if (layer.global_scale) consumed.insert(layer.global_scale->name);
    layers.push_back(layer);
  }

  struct Planned {
    QuantizedLayer layer;
    QuantSpec spec;
    DType out_dtype;
    int64_t cols;
  };
  std::vector<Planned> planned;
  std::vector<TensorDecl> decls;
  for (const QuantizedLayer& layer : layers) {
    STQ_ASSIGN_OR_RETURN(QuantSpec spec, LayerSpec(*reader, layer, options));
    const DType default_dtype = DefaultDequantizeDType(spec, layer.sources.scales->dtype);
    const DType out_dtype = spec.global_scale ? DType::kF32 : options.dtype.value_or(default_dtype);
    std::vector<int64_t> shape = layer.sources.packed->shape;
    if (shape.size() < 2 || layer.sources.scales->shape.size() != shape.size() ||
        !std::equal(shape.begin(), shape.end() - 1, layer.sources.scales->shape.begin())) {
      return Status::InvalidInput(fmt::format("{}: tensor '{}': packed and scales shapes disagree in their leading dims",
                                              input_path, P(layer.output_name)));
    }
    if (layer.sources.biases && layer.sources.biases->shape != layer.sources.scales->shape) {
      return Status::InvalidInput(fmt::format("{}: tensor '{}': biases shape differs from scales shape", input_path,
                                              P(layer.output_name)));
    }
    if (layer.global_scale && (layer.global_scale->dtype != DType::kF32 || layer.global_scale->nbytes() != 4)) {
      return Status::InvalidInput(fmt::format("{}: tensor '{}': global scale must be one F32 value", input_path,
                                              P(layer.global_scale->name)));
    }
    shape.back() = shape.back() * 32 / spec.bits;
    decls.push_back({layer.output_name, out_dtype, shape});
    planned.push_back({layer, spec, out_dtype, shape.back()});
  }
  for (const TensorInfo& info : reader->tensors()) {
    if (!consumed.count(info.name)) decls.push_back({info.name, info.dtype, info.shape});
  }
  std::sort(decls.begin(), decls.end(), [](const TensorDecl& a, const TensorDecl& b) { return a.name < b.name; });

  std::optional<std::map<std::string, std::string>> metadata;
  if (reader->metadata()) {
    metadata.emplace();
    for (const auto& [key, value] : *reader->metadata()) {
      if (!EndsWith(key, "quant_type") && !EndsWith(key, "group_size")) (*metadata)[key] = value;
    }
  }
  STQ_ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer, Writer::Create(output_path, decls, metadata));
  for (const Planned& p : planned) {
    float global_scale = 0.0f;
    if (p.layer.global_scale) {
      uint8_t bytes[4];
      STQ_RETURN_IF_ERROR(reader->Read(*p.layer.global_scale, 0, bytes));
      std::memcpy(&global_scale, bytes, 4);
    }
    STQ_RETURN_IF_ERROR(output::DequantizeTensor(*reader, p.layer.sources, p.spec, global_scale, p.cols, p.out_dtype,
                                                 {writer.get(), *writer->IndexOf(p.layer.output_name)}));
  }
  for (const TensorInfo& info : reader->tensors()) {
    if (consumed.count(info.name)) continue;
    STQ_RETURN_IF_ERROR(output::CopyRows(output::ReaderRows(*reader, info), {writer.get(), *writer->IndexOf(info.name)}, options.threads));
  }
  return writer->Commit();
}

}  // namespace stquant
