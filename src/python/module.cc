// stquant._stquant: the Python binding of the public API (include/stquant/*.h) and of the command
// line (src/cli/app.h). The Python package (python/stquant/) wraps it; no conversion or
// quantization logic lives here, only the translation of arguments, arrays and errors:
//   - a non-OK Status raises the stquant.Error subclass of its code, with the message the CLI
//     prints after "stquant: error: ";
//   - conversions and kernels run with the GIL released; a progress callback takes it back for
//     each call.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "cli/app.h"
#include "stquant/convert.h"
#include "stquant/hf_cache.h"
#include "stquant/inspect.h"
#include "stquant/mlx_convert.h"
#include "stquant/quantize.h"

namespace nb = nanobind;

namespace stquant::python {

namespace {

// Carries a non-OK Status to the exception translator (module init), which raises the matching
// Python class of stquant._errors.
struct StatusError : std::exception {
  explicit StatusError(Status s) : status(std::move(s)) {}
  const char* what() const noexcept override { return status.message().c_str(); }
  Status status;
};

void Check(const Status& status) {
  if (!status.ok()) throw StatusError(status);
}
template <typename T>
T Take(Result<T> result) {
  Check(result.status());
  return std::move(result).value();
}

// ---- arrays -------------------------------------------------------------------------------------

using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;

// The safetensors dtype of a DLPack dtype; `override_name` "bfloat16" reads uint16 data as
// bfloat16 (numpy has no bfloat16 of its own and cannot export ml_dtypes' through DLPack).
Result<DType> DTypeOf(const AnyArray& a, const std::string& override_name) {
  const nb::dlpack::dtype d = a.dtype();
  if (!override_name.empty()) {
    if (override_name != "bfloat16" || d.bits != 16) {
      return Status::Internal("dtype override '" + override_name + "' on an array of " + std::to_string(d.bits) + " bits");
    }
    return DType::kBF16;
  }
  using Code = nb::dlpack::dtype_code;
  const auto code = static_cast<Code>(d.code);
  if (d.lanes == 1) {
    switch (code) {
      case Code::Float:
        if (d.bits == 16) return DType::kF16;
        if (d.bits == 32) return DType::kF32;
        if (d.bits == 64) return DType::kF64;
        break;
      case Code::Bfloat:
        if (d.bits == 16) return DType::kBF16;
        break;
      case Code::Int:
        if (d.bits == 8) return DType::kI8;
        if (d.bits == 16) return DType::kI16;
        if (d.bits == 32) return DType::kI32;
        if (d.bits == 64) return DType::kI64;
        break;
      case Code::UInt:
        if (d.bits == 8) return DType::kU8;
        if (d.bits == 16) return DType::kU16;
        if (d.bits == 32) return DType::kU32;
        if (d.bits == 64) return DType::kU64;
        break;
      case Code::Bool:
        return DType::kBool;
      default:
        break;
    }
  }
  return Status::InvalidArgument("arrays of DLPack dtype code " + std::to_string(d.code) + " with " +
                                 std::to_string(d.bits) + " bits are not supported");
}

std::vector<int64_t> ShapeOf(const AnyArray& a) {
  std::vector<int64_t> shape(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) shape[i] = static_cast<int64_t>(a.shape(i));
  return shape;
}

// The kernels read rows of contiguous elements.
Status CheckContiguous(const AnyArray& a, const char* what) {
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected) {
      return Status::InvalidArgument(std::string(what) + " must be row-major contiguous (make a contiguous copy)");
    }
    expected *= static_cast<int64_t>(a.shape(i));
  }
  return Status::Ok();
}

// A numpy array owning a fresh buffer: shape, element dtype (uint16 stands for bfloat16, which the
// Python side views as such).
struct OutArray {
  std::unique_ptr<uint8_t[]> data;
  std::vector<size_t> shape;
  nb::dlpack::dtype dtype;

  OutArray(const std::vector<int64_t>& dims, DType element) {
    size_t n = 1;
    for (int64_t d : dims) {
      shape.push_back(static_cast<size_t>(d));
      n *= static_cast<size_t>(d);
    }
    const int bits = DTypeBits(element);
    data.reset(new uint8_t[std::max<size_t>(1, n * bits / 8)]);
    switch (element) {
      case DType::kF32: dtype = nb::dtype<float>(); break;
      case DType::kF16: dtype = {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1}; break;
      case DType::kBF16: dtype = nb::dtype<uint16_t>(); break;
      case DType::kU32: dtype = nb::dtype<uint32_t>(); break;
      default: dtype = nb::dtype<uint8_t>(); break;
    }
  }

  nb::object ToNumpy() {
    uint8_t* raw = data.release();
    nb::capsule owner(raw, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
    return nb::cast(nb::ndarray<nb::numpy>(raw, shape.size(), shape.data(), owner, nullptr, dtype));
  }
};

QuantSpec SpecOf(const std::string& mode, std::optional<int> bits, std::optional<int> group_size, bool global_scale) {
  QuantSpec spec;
  spec.mode = Take(ParseQuantMode(mode));
  spec.bits = bits.value_or(ModeInfo(spec.mode).default_bits);
  spec.group_size = group_size.value_or(ModeInfo(spec.mode).default_group_size);
  spec.global_scale = global_scale;
  Check(ValidateQuantSpec(spec));
  return spec;
}

// mx.quantize(w, group_size, bits, mode, global_scale=): (packed, scales[, biases]).
nb::tuple Quantize(const AnyArray& w, const std::string& dtype_override, const std::string& mode,
                   std::optional<int> bits, std::optional<int> group_size, std::optional<float> global_scale,
                   int threads) {
  const DType dtype = Take(DTypeOf(w, dtype_override));
  const QuantSpec spec = SpecOf(mode, bits, group_size, global_scale.has_value());
  const std::vector<int64_t> shape = ShapeOf(w);
  Check(ValidateQuantInput(spec, dtype, shape));
  Check(CheckContiguous(w, "the array to quantize"));
  const int64_t cols = shape.back();
  const int64_t rows = cols ? static_cast<int64_t>(w.size()) / cols : 0;
  std::vector<int64_t> packed_shape = shape, scale_shape = shape;
  packed_shape.back() = PackedWordsPerRow(spec, cols);
  scale_shape.back() = GroupsPerRow(spec, cols);
  OutArray packed(packed_shape, DType::kU32), scales(scale_shape, ScaleDType(spec, dtype));
  const bool has_biases = ModeInfo(spec.mode).has_biases;
  std::optional<OutArray> biases;
  if (has_biases) biases.emplace(scale_shape, dtype);
  QuantizedBuffers out{reinterpret_cast<uint32_t*>(packed.data.get()), scales.data.get(),
                       biases ? biases->data.get() : nullptr};
  Status status;
  {
    nb::gil_scoped_release release;
    status = QuantizeRowsParallel(spec, dtype, w.data(), rows, cols, global_scale.value_or(0.0f), out, threads);
  }
  Check(status);
  if (has_biases) return nb::make_tuple(packed.ToNumpy(), scales.ToNumpy(), biases->ToNumpy());
  return nb::make_tuple(packed.ToNumpy(), scales.ToNumpy());
}

// mx.dequantize(w, scales, biases, group_size, bits, mode, global_scale=, dtype=).
nb::object Dequantize(const AnyArray& w, const AnyArray& scales, const std::optional<AnyArray>& biases,
                      const std::string& scales_override, const std::string& mode, std::optional<int> bits,
                      std::optional<int> group_size, std::optional<float> global_scale,
                      const std::string& out_dtype_name) {
  const QuantSpec spec = SpecOf(mode, bits, group_size, global_scale.has_value());
  const DType scale_dtype = Take(DTypeOf(scales, scales_override));
  if (Take(DTypeOf(w, "")) != DType::kU32) {
    throw StatusError(Status::InvalidArgument("[dequantize] The matrix should be given as a uint32"));
  }
  const std::vector<int64_t> shape = ShapeOf(w), scale_shape = ShapeOf(scales);
  if (shape.empty()) throw StatusError(Status::InvalidArgument("[dequantize] The matrix should have at least one dimension"));
  const int64_t words = shape.back();
  const int64_t cols = words * 32 / spec.bits;
  std::vector<int64_t> want = shape;
  want.back() = cols / spec.group_size;
  if (words * 32 % spec.bits != 0 || cols % spec.group_size != 0 || scale_shape != want) {
    throw StatusError(Status::InvalidArgument("[dequantize] Shape of scales and biases does not match the matrix given the "
                                  "quantization parameters"));
  }
  const bool has_biases = ModeInfo(spec.mode).has_biases;
  if (has_biases != biases.has_value()) {
    throw StatusError(Status::InvalidArgument(has_biases ? "[dequantize] Biases must be provided for affine quantization."
                                             : "[dequantize] Biases are only used with affine quantization."));
  }
  if (biases && (ShapeOf(*biases) != want || Take(DTypeOf(*biases, scales_override)) != scale_dtype)) {
    throw StatusError(Status::InvalidArgument("[dequantize] Biases must have the shape and dtype of the scales"));
  }
  Check(CheckContiguous(w, "the packed array"));
  Check(CheckContiguous(scales, "the scales"));
  if (biases) Check(CheckContiguous(*biases, "the biases"));
  DType out_dtype = DefaultDequantizeDType(spec, scale_dtype);
  if (!out_dtype_name.empty()) {
    if (out_dtype_name == "float32") out_dtype = DType::kF32;
    else if (out_dtype_name == "float16") out_dtype = DType::kF16;
    else if (out_dtype_name == "bfloat16") out_dtype = DType::kBF16;
    else throw StatusError(Status::InvalidArgument("[dequantize] dtype must be float32, float16 or bfloat16, not '" + out_dtype_name + "'"));
  }
  std::vector<int64_t> out_shape = shape;
  out_shape.back() = cols;
  OutArray out(out_shape, out_dtype);
  const int64_t rows = words ? static_cast<int64_t>(w.size()) / words : 0;
  ConstQuantizedBuffers in{static_cast<const uint32_t*>(w.data()), scales.data(), biases ? biases->data() : nullptr};
  Status status;
  {
    nb::gil_scoped_release release;
    status = DequantizeRows(spec, scale_dtype, in, rows, cols, global_scale.value_or(0.0f), out_dtype, out.data.get());
  }
  Check(status);
  return out.ToNumpy();
}

// ---- conversion ---------------------------------------------------------------------------------

Result<std::optional<QuantSpec>> TypeOf(const std::optional<std::string>& name, OutputLayout layout,
                                        std::string_view what) {
  if (!name) return std::optional<QuantSpec>();
  if (layout == OutputLayout::kOllama) {
    STQ_ASSIGN_OR_RETURN(QuantSpec spec, ParseOllamaQuantType(*name, what));
    return std::optional<QuantSpec>(spec);
  }
  STQ_ASSIGN_OR_RETURN(QuantSpec spec, ParseQuantType(*name));
  return std::optional<QuantSpec>(spec);
}

Result<std::optional<DType>> FloatDType(const std::optional<std::string>& name) {
  if (!name) return std::optional<DType>();
  if (*name == "float16") return std::optional<DType>(DType::kF16);
  if (*name == "bfloat16") return std::optional<DType>(DType::kBF16);
  if (*name == "float32") return std::optional<DType>(DType::kF32);
  return Status::InvalidArgument("dtype '" + *name + "': choose float16, bfloat16 or float32");
}

// The keyword arguments of stquant.convert (python/stquant/__init__.py documents them).
ConvertOptions Options(const std::string& src, const std::string& out, const std::optional<std::string>& q,
                       const std::string& layout, const std::optional<std::string>& mode, std::optional<int> bits,
                       std::optional<int> group_size, const std::string& profile, const std::string& recipe,
                       const std::vector<std::pair<std::string, std::string>>& overrides, const std::string& policy,
                       const std::string& name, const std::string& models_dir, const std::string& modelfile,
                       const std::string& draft, const std::optional<std::string>& draft_q, uint64_t shard_size,
                       int threads, bool force, bool requantize, const std::string& revision,
                       const std::optional<std::string>& dtype) {
  ConvertOptions o;
  if (layout != "mlx" && layout != "ollama") throw StatusError(Status::InvalidArgument("layout must be 'mlx' or 'ollama'"));
  // The command line's checks of the same options (src/cli/convert_command.cc), in Python's words.
  if (layout == "ollama" && !out.empty()) {
    throw StatusError(Status::InvalidArgument("layout 'ollama' writes into a model store: give name=NAME, not out"));
  }
  if (layout == "mlx" && out.empty()) throw StatusError(Status::InvalidArgument("the mlx layout needs out (a directory)"));
  if (layout == "mlx" && (!name.empty() || !models_dir.empty() || !modelfile.empty() || !draft.empty() || draft_q)) {
    throw StatusError(Status::InvalidArgument("name, models_dir, modelfile, draft and draft_q need layout='ollama'"));
  }
  if (!src.empty()) o.source_dir = Take(ResolveModelSource(src, revision));
  o.output_dir = out;
  o.layout = layout == "ollama" ? OutputLayout::kOllama : OutputLayout::kMlx;
  const std::string p = !policy.empty() ? policy : layout == "ollama" ? "ollama" : "mlx-lm";
  if (p != "mlx-lm" && p != "ollama") throw StatusError(Status::InvalidArgument("policy must be 'mlx-lm' or 'ollama'"));
  o.policy = p == "ollama" ? QuantPolicy::kOllama : QuantPolicy::kMlxLm;
  o.profile = Take(ParseQuantProfile(profile));
  if (q && mode) throw StatusError(Status::InvalidArgument("give q or mode, not both"));
  o.quant = Take(TypeOf(q, o.layout, "--quantize"));
  if (mode) o.quant = SpecOf(*mode, std::nullopt, std::nullopt, false);
  if (!o.quant && (bits || group_size)) throw StatusError(Status::InvalidArgument("bits/group_size need q or mode"));
  if (o.quant) {
    if (bits) o.quant->bits = *bits;
    if (group_size) o.quant->group_size = *group_size;
    o.quant->profile = o.profile;
    Check(ValidateQuantSpec(*o.quant));
  }
  o.recipe = recipe;
  for (const auto& [pattern, type] : overrides) {
    QuantOverride rule{pattern, std::nullopt};
    if (type != "keep") {
      rule.spec = Take(ParseQuantType(type));
      rule.spec->profile = o.profile;
    }
    o.overrides.push_back(std::move(rule));
  }
  o.model_name = name;
  o.models_dir = models_dir;
  o.modelfile = modelfile;
  o.draft_dir = draft;
  o.draft_quant = Take(TypeOf(draft_q, OutputLayout::kOllama, "--draft-quantize"));
  o.shard_bytes = shard_size;
  o.threads = threads;
  o.force = force;
  o.requantize = requantize;
  o.dtype = Take(FloatDType(dtype));
  return o;
}

nb::dict SummaryDict(const ConvertSummary& s) {
  nb::dict d;
  d["input_bytes"] = s.input_bytes;
  d["output_bytes"] = s.output_bytes;
  d["parameters"] = s.parameters;
  d["tensors"] = s.tensors;
  d["quantized_tensors"] = s.quantized_tensors;
  d["shards"] = s.shards;
  d["seconds"] = s.seconds;
  d["peak_rss_bytes"] = s.peak_rss_bytes;
  d["warnings"] = s.warnings;
  d["manifest_path"] = s.manifest_path;
  d["layers"] = s.layers;
  d["blobs_reused"] = s.blobs_reused;
  return d;
}

// Runs Convert without the GIL. `progress` (None or a callable taking tensors_done,
// tensors_total, bytes_done, bytes_total, current) is called with the GIL taken back; an exception
// it raises stops further calls and is raised when the conversion has ended.
nb::dict RunConvert(const ConvertOptions& options, nb::object progress) {
  std::optional<nb::python_error> failure;
  std::function<void(const ConvertProgress&)> callback;
  if (!progress.is_none()) {
    callback = [&](const ConvertProgress& p) {
      nb::gil_scoped_acquire acquire;
      if (failure) return;
      try {
        progress(p.tensors_done, p.tensors_total, p.bytes_done, p.bytes_total, p.current);
      } catch (nb::python_error& e) {
        failure.emplace(std::move(e));
      }
    };
  }
  std::optional<Result<ConvertSummary>> result;
  {
    nb::gil_scoped_release release;
    result.emplace(Convert(options, callback));
  }
  if (failure) throw std::move(*failure);
  return SummaryDict(Take(std::move(*result)));
}

std::string PlanJson(const ConvertOptions& options) {
  Result<ConversionPlan> plan = [&] {
    nb::gil_scoped_release release;
    return PlanConversion(options);
  }();
  return FormatPlanJson(Take(std::move(plan)));
}

int RunCli(const std::vector<std::string>& args) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  nb::gil_scoped_release release;
  try {
    return cli::RunCommandLine(static_cast<int>(copy.size()), argv.data());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stquant: error: internal error: %s\n", e.what());
  }
  return 1;
}

}  // namespace

}  // namespace stquant::python

using namespace stquant;          // NOLINT: the module's function table below
using namespace stquant::python;  // NOLINT

NB_MODULE(_stquant, m) {
  m.doc() = "stquant's compiled core; use the stquant package";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const StatusError& e) {
      nb::object cls = nb::module_::import_("stquant._errors").attr("error_class")(static_cast<int>(e.status.code()));
      PyErr_SetString(cls.ptr(), e.status.message().c_str());
    }
  });

  m.def("run_cli", &RunCli, nb::arg("argv"), "Runs the stquant command line; returns the exit code.");
  m.def("inspect_json", [](const std::string& path) {
    Result<InspectReport> report = [&] {
      nb::gil_scoped_release release;
      return Inspect(path);
    }();
    return FormatInspectJson(Take(std::move(report)));
  });
  m.def("inspect_ollama_json", [](const std::string& models_dir, const std::string& name) {
    return Take(InspectOllamaModel(models_dir, name, /*json=*/true));
  });
  m.def("hf_hub_cache_dir", &HfHubCacheDir);
  m.def("resolve_model_source", [](const std::string& source, const std::string& revision) {
    return Take(ResolveModelSource(source, revision));
  });
  m.def(
      "convert",
      [](const std::string& src, const std::string& out, const std::optional<std::string>& q, const std::string& layout,
         const std::optional<std::string>& mode, std::optional<int> bits, std::optional<int> group_size,
         const std::string& profile, const std::string& recipe,
         const std::vector<std::pair<std::string, std::string>>& overrides, const std::string& policy,
         const std::string& name, const std::string& models_dir, const std::string& modelfile,
         const std::string& draft, const std::optional<std::string>& draft_q, uint64_t shard_size, int threads,
         bool force, bool requantize, const std::string& revision, const std::optional<std::string>& dtype,
         bool dry_run, nb::object progress) -> nb::object {
        const ConvertOptions options =
            Options(src, out, q, layout, mode, bits, group_size, profile, recipe, overrides, policy, name, models_dir,
                    modelfile, draft, draft_q, shard_size, threads, force, requantize, revision, dtype);
        if (dry_run) return nb::cast(PlanJson(options));
        return RunConvert(options, std::move(progress));
      },
      nb::arg("src"), nb::arg("out"), nb::arg("q").none(), nb::arg("layout"), nb::arg("mode").none(),
      nb::arg("bits").none(), nb::arg("group_size").none(), nb::arg("profile"), nb::arg("recipe"),
      nb::arg("overrides"), nb::arg("policy"), nb::arg("name"), nb::arg("models_dir"), nb::arg("modelfile"),
      nb::arg("draft"), nb::arg("draft_q").none(), nb::arg("shard_size"), nb::arg("threads"), nb::arg("force"),
      nb::arg("requantize"), nb::arg("revision"), nb::arg("dtype").none(), nb::arg("dry_run"),
      nb::arg("progress").none());
  m.def(
      "mlx_convert",
      [](const std::string& hf_path, const std::string& mlx_path, bool quantize, std::optional<int> q_group_size,
         std::optional<int> q_bits, const std::string& q_mode, const std::optional<std::string>& dtype,
         const std::optional<std::string>& upload_repo, const std::optional<std::string>& revision, bool dequantize,
         const std::optional<std::string>& quant_predicate, bool trust_remote_code, nb::object progress) {
        MlxConvertArgs args;
        args.hf_path = hf_path;
        args.mlx_path = mlx_path;
        args.quantize = quantize;
        args.q_group_size = q_group_size;
        args.q_bits = q_bits;
        args.q_mode = q_mode;
        args.dtype = dtype.value_or("");
        args.upload_repo = upload_repo.value_or("");
        args.revision = revision.value_or("");
        args.dequantize = dequantize;
        args.quant_predicate = quant_predicate.value_or("");
        args.trust_remote_code = trust_remote_code;
        return RunConvert(Take(MlxConvertOptions(args)), std::move(progress));
      },
      nb::arg("hf_path"), nb::arg("mlx_path"), nb::arg("quantize"), nb::arg("q_group_size").none(),
      nb::arg("q_bits").none(), nb::arg("q_mode"), nb::arg("dtype").none(), nb::arg("upload_repo").none(),
      nb::arg("revision").none(), nb::arg("dequantize"), nb::arg("quant_predicate").none(),
      nb::arg("trust_remote_code"), nb::arg("progress").none());
  m.def("quantize", &Quantize, nb::arg("w"), nb::arg("dtype_override"), nb::arg("mode"), nb::arg("bits").none(),
        nb::arg("group_size").none(), nb::arg("global_scale").none(), nb::arg("threads"));
  m.def("dequantize", &Dequantize, nb::arg("w"), nb::arg("scales"), nb::arg("biases").none(),
        nb::arg("scales_override"), nb::arg("mode"), nb::arg("bits").none(), nb::arg("group_size").none(),
        nb::arg("global_scale").none(), nb::arg("dtype"));
}
