#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "commands.h"
#include "quant_args.h"
#include "stquant/convert.h"
#include "stquant/hf_cache.h"

namespace stquant::cli {

namespace {

struct ConvertCommandOptions {
  std::string source, output;
  std::string revision;  // a Hugging Face repo id's branch, tag or commit
  QuantArgs quant;
  std::string recipe;
  std::vector<std::string> overrides;
  std::string layout = "mlx";
  std::string policy;  // default: the layout's (mlx-lm for mlx, ollama for ollama)
  std::string name, models_dir, modelfile, draft, draft_type;
  std::string shard_size = "5GiB";
  int threads = 0;
  bool force = false, dry_run = false, json = false, quiet = false;
  bool no_preflight = false;  // skip the free-space check of the preflight
  bool requantize = false;  // an already-quantized source: dequantize and quantize to -q
  bool allow_unknown_architecture = false;
  std::string report;  // --report FILE.json
  bool verbose = false;
};

// "5GiB", "500MiB", "2G", "123": binary units, as mlx-lm's 5 << 30.
Result<uint64_t> ParseSize(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (...) {
    return Status::InvalidArgument("--shard-size '" + text + "': not a size (e.g. 5GiB, 500MiB)");
  }
  std::string unit = text.substr(used);
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  if (!unit.empty() && unit.back() == 'i') unit.pop_back();
  double factor = 1;
  if (unit == "K" || unit == "k") factor = 1024.0;
  else if (unit == "M") factor = 1024.0 * 1024;
  else if (unit == "G") factor = 1024.0 * 1024 * 1024;
  else if (unit == "T") factor = 1024.0 * 1024 * 1024 * 1024;
  else if (!unit.empty()) return Status::InvalidArgument("--shard-size '" + text + "': unknown unit");
  if (!(value > 0)) return Status::InvalidArgument("--shard-size must be positive");
  return static_cast<uint64_t>(value * factor);
}

Result<ConvertOptions> BuildOptions(const ConvertCommandOptions& o) {
  ConvertOptions options;
  if (!o.source.empty()) {
    STQ_ASSIGN_OR_RETURN(options.source_dir, ResolveModelSource(o.source, o.revision));
  } else if (!o.revision.empty()) {
    return Status::InvalidArgument("--revision needs a Hugging Face repo id as the source");
  }
  options.output_dir = o.output;
  options.layout = o.layout == "ollama" ? OutputLayout::kOllama : OutputLayout::kMlx;
  const std::string policy = !o.policy.empty() ? o.policy : o.layout == "ollama" ? "ollama" : "mlx-lm";
  options.policy = policy == "ollama" ? QuantPolicy::kOllama : QuantPolicy::kMlxLm;
  if (options.layout == OutputLayout::kOllama) {
    if (!o.output.empty()) return Status::InvalidArgument("--layout ollama writes into a model store: give --name NAME, not -o");
    if (o.name.empty()) return Status::InvalidArgument("--layout ollama needs --name NAME");
    if (o.source.empty() && o.modelfile.empty()) return Status::InvalidArgument("give the source directory or -f Modelfile");
    options.model_name = o.name;
    options.models_dir = o.models_dir;
    options.modelfile = o.modelfile;
    options.draft_dir = o.draft;
    if (!o.draft_type.empty()) {
      QuantSpec draft_spec;
      STQ_ASSIGN_OR_RETURN(draft_spec, ParseOllamaQuantType(o.draft_type, "--draft-quantize"));
      options.draft_quant = draft_spec;
    }
  } else {
    if (o.output.empty()) return Status::InvalidArgument("the mlx layout needs -o DIR");
    if (o.source.empty()) return Status::InvalidArgument("the source directory is required");
    if (!o.name.empty() || !o.models_dir.empty() || !o.modelfile.empty() || !o.draft.empty() || !o.draft_type.empty()) {
      return Status::InvalidArgument("--name, --models-dir, -f, --draft and --draft-quantize need --layout ollama");
    }
  }
  QuantArgs quant = o.quant;
  if (options.layout == OutputLayout::kOllama && !quant.type.empty()) {
    // ollama create's names and aliases (q4, fp4, q8, fp8, any case) with ollama's meaning.
    STQ_ASSIGN_OR_RETURN(QuantSpec spec, ParseOllamaQuantType(quant.type, "--quantize"));
    quant.type = QuantTypeName(spec);
  }
  STQ_ASSIGN_OR_RETURN(options.quant, SpecFromArgs(quant));
  STQ_ASSIGN_OR_RETURN(options.profile, ParseQuantProfile(o.quant.profile));
  options.recipe = o.recipe;
  for (const std::string& rule : o.overrides) {
    const size_t eq = rule.rfind('=');
    if (eq == std::string::npos || eq == 0) {
      return Status::InvalidArgument("--override '" + rule + "': expected REGEX=TYPE (TYPE: keep, int4, mxfp8, ...)");
    }
    QuantOverride override_rule{rule.substr(0, eq), std::nullopt};
    const std::string type = rule.substr(eq + 1);
    if (type != "keep") {
      STQ_ASSIGN_OR_RETURN(QuantSpec spec, ParseQuantType(type));
      if (options.quant) spec.profile = options.quant->profile;
      override_rule.spec = spec;
    }
    options.overrides.push_back(std::move(override_rule));
  }
  if (!options.overrides.empty() && !options.quant && options.policy != QuantPolicy::kOllama) {
    return Status::InvalidArgument("--override needs a default quantization type (-q TYPE)");
  }
  STQ_ASSIGN_OR_RETURN(options.shard_bytes, ParseSize(o.shard_size));
  options.threads = o.threads;
  options.force = o.force;
  options.check_free_space = !o.no_preflight;
  options.requantize = o.requantize;
  options.allow_unknown_architecture = o.allow_unknown_architecture;
  return options;
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, unit == 0 ? "%.0f %s" : "%.2f %s", bytes, units[unit]);
  return buffer;
}

}  // namespace

namespace {

Status PrintSummary(const ConvertOptions& options, const ConvertSummary& s, const ConversionOutput& o) {
  for (const std::string& warning : s.warnings) std::fprintf(stderr, "stquant: warning: %s\n", warning.c_str());
  if (!o.quiet) {
    const double bpw = s.parameters ? 8.0 * s.output_bytes / s.parameters : 0.0;
    if (options.layout == OutputLayout::kOllama) {
      std::printf("Created safetensors model '%s'\n", options.model_name.c_str());
      std::printf("  manifest   %s\n", s.manifest_path.c_str());
      std::printf("  layers     %llu (%llu blobs already in the store)\n", static_cast<unsigned long long>(s.layers),
                  static_cast<unsigned long long>(s.blobs_reused));
    } else {
      std::printf("converted %s -> %s\n", options.source_dir.c_str(), options.output_dir.c_str());
    }
    if (options.layout == OutputLayout::kOllama) {
      std::printf("  tensors    %llu written (%llu quantized)\n", static_cast<unsigned long long>(s.tensors),
                  static_cast<unsigned long long>(s.quantized_tensors));
    } else {
      std::printf("  tensors    %llu written (%llu quantized), %d shard%s\n", static_cast<unsigned long long>(s.tensors),
                  static_cast<unsigned long long>(s.quantized_tensors), s.shards, s.shards == 1 ? "" : "s");
    }
    std::printf("  size       %s in -> %s out, %.3f bits per weight (%llu parameters)\n",
                HumanBytes(s.input_bytes).c_str(), HumanBytes(s.output_bytes).c_str(), bpw,
                static_cast<unsigned long long>(s.parameters));
    std::printf("  time       %.2f s, %s/s of input\n", s.seconds, HumanBytes(s.seconds > 0 ? s.input_bytes / s.seconds : 0).c_str());
    std::printf("  peak RSS   %s\n", HumanBytes(s.peak_rss_bytes).c_str());
  }
  if (o.verbose) std::fputs(QuantReportTable(s.quant_errors).c_str(), stdout);
  if (!o.report.empty()) {
    STQ_RETURN_IF_ERROR(WriteQuantReport(s.quant_errors, WithType(o.report, options.quant ? QuantTypeName(*options.quant) : "")));
  }
  return Status::Ok();
}

}  // namespace

std::string WithType(std::string pattern, const std::string& type) {
  for (size_t at = pattern.find(kTypePlaceholder); at != std::string::npos; at = pattern.find(kTypePlaceholder, at)) {
    pattern.replace(at, kTypePlaceholder.size(), type);
    at += type.size();
  }
  return pattern;
}

Status RunConversion(const std::vector<ConvertOptions>& given, const ConversionOutput& o) {
  std::vector<ConvertOptions> outputs = given;
  for (ConvertOptions& options : outputs) options.measure_quant_error = !o.report.empty() || o.verbose;
  if (o.dry_run) {
    for (const ConvertOptions& options : outputs) {
      STQ_ASSIGN_OR_RETURN(ConversionPlan plan, PlanConversion(options));
      const std::string text = o.json ? FormatPlanJson(plan) : FormatPlanText(plan);
      std::fwrite(text.data(), 1, text.size(), stdout);
    }
    return Status::Ok();
  }
  for (const ConvertOptions& options : outputs) {
    if (options.requantize && options.quant) {
      std::fprintf(stderr, "stquant: warning: --requantize: the quantized source is dequantized and quantized again to "
                           "%s; this loses accuracy compared with a lossless import (no -q)\n",
                   QuantTypeName(*options.quant).c_str());
    }
  }
  const bool tty = !o.quiet && ::isatty(STDERR_FILENO);
  const auto start = std::chrono::steady_clock::now();
  auto last = start;
  auto progress = [&](const ConvertProgress& p) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last < std::chrono::milliseconds(200) && p.tensors_done != p.tensors_total) return;
    last = now;
    const double seconds = std::chrono::duration<double>(now - start).count();
    const double rate = seconds > 0 ? p.bytes_done / seconds : 0;
    const double fraction = p.bytes_total ? static_cast<double>(p.bytes_done) / p.bytes_total : 1.0;
    const double eta = rate > 0 ? (p.bytes_total - p.bytes_done) / rate : 0;
    const int width = 30;
    const int filled = static_cast<int>(std::round(fraction * width));
    std::fprintf(stderr, "\r[%s%s] %3.0f%%  %llu/%llu tensors  %s/%s  %s/s  ETA %.0fs \x1b[K",
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), fraction * 100,
                 static_cast<unsigned long long>(p.tensors_done), static_cast<unsigned long long>(p.tensors_total),
                 HumanBytes(p.bytes_done).c_str(), HumanBytes(p.bytes_total).c_str(), HumanBytes(rate).c_str(), eta);
    std::fflush(stderr);
  };
  Result<std::vector<ConvertSummary>> results = tty ? ConvertMany(outputs, progress) : ConvertMany(outputs);
  if (tty) std::fprintf(stderr, "\n");
  if (!results.ok()) return results.status();
  for (size_t i = 0; i < outputs.size(); ++i) {
    STQ_RETURN_IF_ERROR(PrintSummary(outputs[i], (*results)[i], o));
  }
  return Status::Ok();
}

namespace {

// -q int4,nvfp4: one output per type, the {q} of -o / --name / --report replaced by the type.
Result<std::vector<ConvertOptions>> OutputsOf(const ConvertCommandOptions& o) {
  std::vector<std::string> types;
  for (size_t start = 0; start <= o.quant.type.size() && !o.quant.type.empty();) {
    const size_t comma = std::min(o.quant.type.find(',', start), o.quant.type.size());
    types.push_back(o.quant.type.substr(start, comma - start));
    start = comma + 1;
  }
  const std::string& target = o.layout == "ollama" ? o.name : o.output;
  const bool placeholder = target.find(kTypePlaceholder) != std::string::npos;
  if (types.size() > 1 && !placeholder) {
    return Status::InvalidArgument(fmt::format("-q lists {} types: give {} a {{q}} placeholder (e.g. {}), one output per type",
                                               types.size(), o.layout == "ollama" ? "--name" : "-o",
                                               o.layout == "ollama" ? "--name 'mymodel:{q}'" : "-o 'out-{q}'"));
  }
  if (types.size() > 1 && !o.report.empty() && o.report.find(kTypePlaceholder) == std::string::npos) {
    return Status::InvalidArgument("-q lists several types: give --report a {q} placeholder too (one report per output)");
  }
  if (placeholder && types.empty()) return Status::InvalidArgument("{q} in the output needs -q TYPE");
  std::vector<ConvertOptions> outputs;
  if (types.empty()) types.push_back("");
  for (const std::string& type : types) {
    if (types.size() > 1 && type.empty()) return Status::InvalidArgument("-q '" + o.quant.type + "': an empty type");
    ConvertCommandOptions one = o;
    one.quant.type = type;
    one.output = WithType(o.output, type);
    one.name = WithType(o.name, type);
    STQ_ASSIGN_OR_RETURN(ConvertOptions options, BuildOptions(one));
    outputs.push_back(std::move(options));
  }
  return outputs;
}

Status RunConvert(const ConvertCommandOptions& o) {
  STQ_ASSIGN_OR_RETURN(std::vector<ConvertOptions> outputs, OutputsOf(o));
  return RunConversion(outputs,
                       {.dry_run = o.dry_run, .json = o.json, .quiet = o.quiet, .report = o.report, .verbose = o.verbose});
}

}  // namespace

void RegisterConvertCommand(CLI::App& app, Status* status) {
  auto o = std::make_shared<ConvertCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Convert a Hugging Face checkpoint (bf16/f16/f32, block-FP8, compressed-tensors FP8 or already "
                 "quantized) into an MLX (mlx-lm) model directory or an ollama store");
  cmd->add_option("source,--hf-path", o->source,
                  "Hugging Face model directory (config.json + *.safetensors), or a repo id (org/name) found in the "
                  "local Hugging Face cache (never downloaded); also --hf-path SRC, as mlx_lm.convert; with --layout "
                  "ollama it may come from the Modelfile's FROM instead");
  cmd->add_option("-o,--output", o->output, "output directory (must not exist, unless --force); mlx layout");
  cmd->add_option("--revision", o->revision,
                  "with a Hugging Face repo id as the source (org/name, read from the local Hugging Face cache): the "
                  "branch, tag or commit (default main)");
  AddQuantArgs(cmd, &o->quant,
               "type: int2..int8 (affine, group 64), mxfp4, mxfp8, nvfp4; none: no quantization. A block-FP8 "
               "source is decoded first, so any type works with it (unlike ollama, which refuses -q for FP8 "
               "sources). --policy ollama: int4, int8, nvfp4, mxfp4, mxfp8 only; without "
               "-q a block-FP8 source becomes mxfp8 (tensors the policy declines are decoded to BF16)");
  cmd->add_option("--recipe,--quant-predicate", o->recipe, "mlx-lm mixed recipe: mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6")
      ->check(CLI::IsMember({"mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"}));
  cmd->add_option("--override", o->overrides,
                  "REGEX=TYPE: tensors whose name contains a match get TYPE (int4, mxfp8, ... or keep); first match "
                  "wins; repeatable");
  cmd->add_option("--layout", o->layout,
                  "output layout: mlx (an mlx_lm.load directory, -o DIR) or ollama (a model in an ollama store, "
                  "--name NAME)")
      ->check(CLI::IsMember({"mlx", "ollama"}));
  cmd->add_option("--policy", o->policy,
                  "which tensors to quantize: mlx-lm (as mlx_lm.convert; default for --layout mlx) or ollama (as "
                  "ollama create --experimental; default and only choice for --layout ollama)")
      ->check(CLI::IsMember({"mlx-lm", "ollama"}));
  cmd->add_option("--name", o->name, "ollama layout: model name (foo, me/foo:v1, host/ns/foo:tag)");
  cmd->add_option("--models-dir", o->models_dir,
                  "ollama layout: the model store (default: $OLLAMA_MODELS, else ~/.ollama/models)");
  cmd->add_option("-f,--modelfile", o->modelfile,
                  "ollama layout: a Modelfile (FROM, TEMPLATE, SYSTEM, LICENSE, PARAMETER, PARSER, RENDERER, "
                  "REQUIRES, DRAFT)");
  cmd->add_option("--draft", o->draft, "ollama layout: a draft (MTP) model directory, imported with the draft. prefix");
  cmd->add_option("--draft-quantize", o->draft_type, "ollama layout: quantization type of the draft model");
  cmd->add_option("--shard-size", o->shard_size, "largest output shard (binary units; default 5GiB, as mlx-lm)");
  cmd->add_option("-j,--jobs", o->threads, "worker threads (0: all cores)");
  cmd->add_flag("--force", o->force, "replace an existing output directory");
  cmd->add_flag("--no-preflight", o->no_preflight,
                "skip the preflight's free-space check (the projected output size against the target file "
                "system's free space), for file systems that misreport it; the other checks still run");
  cmd->add_flag("--requantize", o->requantize,
                "an already-quantized source (MLX, ModelOpt NVFP4, compressed-tensors, gpt-oss MXFP4) is imported "
                "losslessly without -q; with -q TYPE --requantize it is dequantized and quantized again (loses "
                "accuracy)");
  cmd->add_flag("--allow-unknown-architecture", o->allow_unknown_architecture,
                "mlx layout: convert a model_type the architecture table lacks with generic rules (the output may "
                "not load in mlx-lm)");
  cmd->add_flag("--dry-run", o->dry_run, "print the plan (every output tensor, its source and type) and sizes; write nothing");
  cmd->add_flag("--json", o->json, "with --dry-run: print the plan as JSON");
  cmd->add_flag("--quiet", o->quiet, "no progress bar and no summary");
  cmd->add_option("--report", o->report,
                  "write FILE.json: for every quantized tensor its type, bits per weight, relative RMSE and max abs "
                  "error of the dequantized weights against the source, share of all-zero groups, and a flag when "
                  "its error is far above the model's median (measured in the same pass)");
  cmd->add_flag("-v,--verbose", o->verbose, "after the summary, the quantization error per type and the flagged tensors");
  cmd->callback([o, status] { *status = RunConvert(*o); });
}

}  // namespace stquant::cli
