// make_synthetic_model --out DIR [--preset tiny | --target-bytes N] [--shard-bytes N] [--fp8]
//                      [--tokenizer-from DIR] [--seed N] [--force]
//
// Writes a deterministic synthetic Hugging Face checkpoint of the real mlx-lm architecture
// `qwen3_moe`: config.json, sharded model-0000i-of-0000N.safetensors, model.safetensors.index.json,
// generation_config.json, and (with --tokenizer-from) tokenizer.json + tokenizer_config.json.
//
// Layer 0 has a dense MLP ("mlp_only_layers": [0]); every other layer is a mixture of experts with
// a router (mlp.gate) and per-expert gate/up/down projections, all under their exact HF names.
// Values: linear weights and embeddings N(0, 0.02) with about one element in 2048 scaled 8-16x
// (the outliers real checkpoints have), norms 1 + N(0, 0.05), all rounded to bf16 (RNE).
// --fp8 stores the linear projections as block FP8 (F8_E4M3 + F32 weight_scale_inv per 128x128
// block, DeepSeek/Qwen layout: w ~= fp8 * weight_scale_inv) and adds the fp8 quantization_config.
//
// Determinism: every tensor has its own splitmix64 stream seeded from (seed, tensor name), so the
// same options give the same bytes, whatever the sharding. Box-Muller uses libm's log/cos/sin;
// the bf16 rounding hides their last-ulp differences except at exact rounding boundaries.
//
// Memory stays bounded (one 128-row stripe of a tensor at a time), so --target-bytes can produce
// checkpoints of many GB for benchmarks. Exit codes as stquant: 0 ok, 2 bad arguments, 3 I/O.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <numbers>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "numeric/bf16.h"
#include "numeric/fp8.h"
#include "stquant/safetensors.h"
#include "util/file.h"
#include "util/input_file.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;
using stquant::DType;
using stquant::Result;
using stquant::Status;
using stquant::safetensors::TensorDecl;
using stquant::safetensors::Writer;

constexpr int kFp8Block = 128;

// ---------------------------------------------------------------------------------------------
// Random numbers.

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

class Normal {
 public:
  explicit Normal(uint64_t seed) : state_(seed) {}
  // Uniform in (0, 1]: never 0, so log() below is finite.
  double Uniform() { return static_cast<double>((SplitMix64(state_) >> 11) + 1) * 0x1.0p-53; }
  // Standard normal by Box-Muller, using both outputs of each pair.
  double Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(Uniform()));
    const double theta = 2.0 * std::numbers::pi * Uniform();
    spare_ = r * std::sin(theta);
    has_spare_ = true;
    return r * std::cos(theta);
  }

 private:
  uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

// ---------------------------------------------------------------------------------------------
// The model.

struct Dims {
  int64_t hidden = 256;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t head_dim = 64;
  int64_t intermediate = 512;      // the dense MLP of layer 0
  int64_t moe_intermediate = 128;  // each expert
  int64_t experts = 4;
  int64_t experts_per_tok = 2;
  int64_t vocab = 512;
};

enum class Init { kLinear, kNorm };

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;  // 1-D or 2-D
  Init init = Init::kLinear;
  bool fp8 = false;  // stored as F8_E4M3 with a "<name>_scale_inv" companion
  DType dtype() const { return fp8 ? DType::kF8E4M3 : DType::kBF16; }
  int64_t rows() const { return shape.size() == 2 ? shape[0] : 1; }
  int64_t cols() const { return shape.back(); }
  std::string scale_name() const { return name + "_scale_inv"; }
  std::vector<int64_t> scale_shape() const {
    return {(rows() + kFp8Block - 1) / kFp8Block, (cols() + kFp8Block - 1) / kFp8Block};
  }
  uint64_t bytes() const {
    const uint64_t n = static_cast<uint64_t>(rows() * cols());
    if (!fp8) return 2 * n;
    const auto s = scale_shape();
    return n + 4 * static_cast<uint64_t>(s[0] * s[1]);
  }
};

// In module order (the order HF's save_pretrained fills shards in).
std::vector<Tensor> ModelTensors(const Dims& d, bool fp8) {
  std::vector<Tensor> t;
  auto linear = [&](std::string name, int64_t out, int64_t in) {
    t.push_back({std::move(name), {out, in}, Init::kLinear, fp8});
  };
  auto norm = [&](std::string name, int64_t n) { t.push_back({std::move(name), {n}, Init::kNorm, false}); };
  t.push_back({"model.embed_tokens.weight", {d.vocab, d.hidden}, Init::kLinear, false});
  for (int64_t l = 0; l < d.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    norm(p + "input_layernorm.weight", d.hidden);
    linear(p + "self_attn.q_proj.weight", d.heads * d.head_dim, d.hidden);
    linear(p + "self_attn.k_proj.weight", d.kv_heads * d.head_dim, d.hidden);
    linear(p + "self_attn.v_proj.weight", d.kv_heads * d.head_dim, d.hidden);
    linear(p + "self_attn.o_proj.weight", d.hidden, d.heads * d.head_dim);
    norm(p + "self_attn.q_norm.weight", d.head_dim);
    norm(p + "self_attn.k_norm.weight", d.head_dim);
    norm(p + "post_attention_layernorm.weight", d.hidden);
    if (l == 0) {
      linear(p + "mlp.gate_proj.weight", d.intermediate, d.hidden);
      linear(p + "mlp.up_proj.weight", d.intermediate, d.hidden);
      linear(p + "mlp.down_proj.weight", d.hidden, d.intermediate);
    } else {
      // The router stays bf16 in FP8 checkpoints (it is not a block-quantized Linear there).
      t.push_back({p + "mlp.gate.weight", {d.experts, d.hidden}, Init::kLinear, false});
      for (int64_t e = 0; e < d.experts; ++e) {
        const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
        linear(ep + "gate_proj.weight", d.moe_intermediate, d.hidden);
        linear(ep + "up_proj.weight", d.moe_intermediate, d.hidden);
        linear(ep + "down_proj.weight", d.hidden, d.moe_intermediate);
      }
    }
  }
  norm("model.norm.weight", d.hidden);
  t.push_back({"lm_head.weight", {d.vocab, d.hidden}, Init::kLinear, false});
  return t;
}

uint64_t TotalBytes(const Dims& d, bool fp8) {
  uint64_t total = 0;
  for (const Tensor& t : ModelTensors(d, fp8)) total += t.bytes();
  return total;
}

// Picks dimensions for a checkpoint of about `target` bytes: the largest rung of a ladder of
// MoE shapes (the top one is Qwen3-30B-A3B's) whose two-layer model fits, then as many MoE layers
// as reach the target.
Dims DimsForTarget(uint64_t target, bool fp8) {
  const Dims ladder[] = {
      Dims{},                                                // the tiny preset
      Dims{1024, 2, 8, 4, 128, 2816, 512, 16, 4, 32768},     //
      Dims{2048, 2, 32, 4, 128, 6144, 768, 64, 8, 65536},    //
      Dims{2048, 2, 32, 4, 128, 6144, 768, 128, 8, 151936},  // Qwen3-30B-A3B shapes
  };
  Dims d = ladder[0];
  for (const Dims& rung : ladder) {
    if (TotalBytes(rung, fp8) <= target) d = rung;
  }
  const uint64_t base = TotalBytes(d, fp8);  // 2 layers
  Dims three = d;
  three.layers = 3;
  const uint64_t per_moe_layer = TotalBytes(three, fp8) - base;
  if (target > base) d.layers += static_cast<int64_t>((target - base + per_moe_layer / 2) / per_moe_layer);
  return d;
}

ordered_json Config(const Dims& d, bool fp8) {
  // Keys sorted, as transformers writes them; both spellings of the expert count and of the rope
  // settings, so that old and new transformers and mlx-lm all read it.
  ordered_json c;
  c["architectures"] = {"Qwen3MoeForCausalLM"};
  c["attention_bias"] = false;
  c["attention_dropout"] = 0.0;
  c["bos_token_id"] = 1;
  c["decoder_sparse_step"] = 1;
  c["dtype"] = "bfloat16";
  c["eos_token_id"] = 2;
  c["head_dim"] = d.head_dim;
  c["hidden_act"] = "silu";
  c["hidden_size"] = d.hidden;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = d.intermediate;
  c["max_position_embeddings"] = 512;
  c["max_window_layers"] = d.layers;
  c["mlp_only_layers"] = {0};
  c["model_type"] = "qwen3_moe";
  c["moe_intermediate_size"] = d.moe_intermediate;
  c["norm_topk_prob"] = true;
  c["num_attention_heads"] = d.heads;
  c["num_experts"] = d.experts;
  c["num_experts_per_tok"] = d.experts_per_tok;
  c["num_hidden_layers"] = d.layers;
  c["num_key_value_heads"] = d.kv_heads;
  c["num_local_experts"] = d.experts;
  c["output_router_logits"] = false;
  c["pad_token_id"] = nullptr;
  if (fp8) {
    c["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {kFp8Block, kFp8Block}}};
  }
  c["rms_norm_eps"] = 1e-6;
  c["rope_parameters"] = {{"rope_theta", 10000.0}, {"rope_type", "default"}};
  c["rope_scaling"] = nullptr;
  c["rope_theta"] = 10000.0;
  c["router_aux_loss_coef"] = 0.001;
  c["sliding_window"] = nullptr;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = "bfloat16";
  c["transformers_version"] = "5.17.0";
  c["use_cache"] = true;
  c["use_sliding_window"] = false;
  c["vocab_size"] = d.vocab;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Values.

// One 128-row stripe (or fewer, at the end) of a tensor's values, already rounded to bf16.
void GenerateRows(const Tensor& t, Normal& rng, int64_t rows, std::vector<float>& out) {
  out.resize(static_cast<size_t>(rows * t.cols()));
  for (float& v : out) {
    double x;
    if (t.init == Init::kNorm) {
      x = 1.0 + 0.05 * rng.Next();
    } else {
      x = 0.02 * rng.Next();
      if (rng.Uniform() <= 1.0 / 2048) x *= 8.0 + 8.0 * rng.Uniform();
    }
    v = stquant::numeric::RoundToBF16(static_cast<float>(x));
  }
}

// Writes `t` (and its scale tensor) into the writer, one stripe at a time.
Status WriteTensor(Writer& writer, const Tensor& t, uint64_t seed) {
  uint64_t stream = seed ^ Fnv1a64(t.name);
  Normal rng(SplitMix64(stream));
  const size_t index = *writer.IndexOf(t.name);
  const int64_t cols = t.cols();
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  for (int64_t row = 0; row < t.rows(); row += kFp8Block) {
    const int64_t rows = std::min<int64_t>(kFp8Block, t.rows() - row);
    GenerateRows(t, rng, rows, values);
    if (!t.fp8) {
      bytes.resize(values.size() * 2);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t b = stquant::numeric::BF16FromFloat(values[i]);
        bytes[2 * i] = static_cast<uint8_t>(b);
        bytes[2 * i + 1] = static_cast<uint8_t>(b >> 8);
      }
      STQ_RETURN_IF_ERROR(writer.AppendTensorData(index, bytes));
      continue;
    }
    // Block FP8: per 128x128 block, scale_inv = amax / 448 and code = E4M3(w / scale_inv).
    bytes.resize(values.size());
    for (int64_t c0 = 0; c0 < cols; c0 += kFp8Block) {
      const int64_t c1 = std::min<int64_t>(cols, c0 + kFp8Block);
      float amax = 0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(values[r * cols + c]));
      }
      const float scale = amax > 0 ? amax / 448.0f : 1.0f;
      scales.push_back(scale);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          bytes[r * cols + c] = stquant::numeric::E4M3FromFloat(values[r * cols + c] / scale);
        }
      }
    }
    STQ_RETURN_IF_ERROR(writer.AppendTensorData(index, bytes));
  }
  if (t.fp8) {
    std::vector<uint8_t> scale_bytes(scales.size() * 4);
    for (size_t i = 0; i < scales.size(); ++i) {
      const uint32_t b = std::bit_cast<uint32_t>(scales[i]);
      for (int k = 0; k < 4; ++k) scale_bytes[4 * i + k] = static_cast<uint8_t>(b >> (8 * k));
    }
    STQ_RETURN_IF_ERROR(writer.AppendTensorData(*writer.IndexOf(t.scale_name()), scale_bytes));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Files.

Status WriteText(const std::string& path, const std::string& text) {
  STQ_ASSIGN_OR_RETURN(stquant::util::AtomicFile file, stquant::util::AtomicFile::Create(path));
  STQ_RETURN_IF_ERROR(stquant::util::PwriteFull(
      file.fd(), std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()), 0, path));
  return file.Commit();
}

// The files copied from --tokenizer-from (a real tokenizer.json is tens of MB).
constexpr stquant::util::InputLimit kTokenizerFileLimit{256u << 20, 0, "a tokenizer file"};

std::string ShardName(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

struct Options {
  std::string out;
  std::string preset;
  uint64_t target_bytes = 0;
  uint64_t shard_bytes = 2ull << 20;  // tiny: 2 MiB gives the 2 shards of examples/tiny-model
  bool fp8 = false;
  std::string tokenizer_from;
  uint64_t seed = 0;
  bool force = false;
};

Status PrepareOutput(const Options& o) {
  std::error_code ec;
  if (fs::exists(o.out, ec)) {
    if (!fs::is_directory(o.out, ec)) return Status::InvalidArgument("--out '" + o.out + "' is not a directory");
    std::vector<fs::path> stale;
    for (fs::directory_iterator it(o.out, ec), end; !ec && it != end; it.increment(ec)) stale.push_back(it->path());
    if (ec) return Status::IoError("list '" + o.out + "': " + ec.message());
    if (!stale.empty() && !o.force) {
      return Status::InvalidArgument("--out '" + o.out + "' is not empty (pass --force to replace its contents)");
    }
    // --force: remove what an earlier run may have left, so that no stale shard survives.
    for (const fs::path& p : stale) {
      const std::string name = p.filename().string();
      if (name.ends_with(".safetensors") || name.ends_with(".json")) fs::remove(p, ec);
      if (ec) return Status::IoError("remove '" + p.string() + "': " + ec.message());
    }
  } else {
    fs::create_directories(o.out, ec);
    if (ec) return Status::IoError("create '" + o.out + "': " + ec.message());
  }
  return Status::Ok();
}

Status Run(const Options& o) {
  const Dims dims = o.target_bytes > 0 ? DimsForTarget(o.target_bytes, o.fp8) : Dims{};
  const std::vector<Tensor> tensors = ModelTensors(dims, o.fp8);
  STQ_RETURN_IF_ERROR(PrepareOutput(o));

  // Shards filled greedily in module order, a tensor and its scale always together (as HF does).
  std::vector<std::vector<const Tensor*>> shards(1);
  uint64_t shard_fill = 0, total = 0;
  for (const Tensor& t : tensors) {
    if (shard_fill > 0 && shard_fill + t.bytes() > o.shard_bytes) {
      shards.emplace_back();
      shard_fill = 0;
    }
    shards.back().push_back(&t);
    shard_fill += t.bytes();
    total += t.bytes();
  }

  ordered_json weight_map = ordered_json::object();
  std::map<std::string, std::string> sorted_map;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = ShardName(s, shards.size());
    std::vector<TensorDecl> decls;
    for (const Tensor* t : shards[s]) {
      decls.push_back({t->name, t->dtype(), t->shape});
      if (t->fp8) decls.push_back({t->scale_name(), DType::kF32, t->scale_shape()});
    }
    std::sort(decls.begin(), decls.end(), [](const TensorDecl& a, const TensorDecl& b) { return a.name < b.name; });
    for (const TensorDecl& decl : decls) sorted_map[decl.name] = name;
    const std::string path = o.out + "/" + name;
    STQ_ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer,
                         Writer::Create(path, std::move(decls), std::map<std::string, std::string>{{"format", "pt"}}));
    for (const Tensor* t : shards[s]) STQ_RETURN_IF_ERROR(WriteTensor(*writer, *t, o.seed));
    STQ_RETURN_IF_ERROR(writer->Commit());
    std::fprintf(stderr, "make_synthetic_model: wrote %s (%zu tensors)\n", path.c_str(), shards[s].size());
  }
  for (const auto& [tensor, shard] : sorted_map) weight_map[tensor] = shard;

  ordered_json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = std::move(weight_map);
  STQ_RETURN_IF_ERROR(WriteText(o.out + "/model.safetensors.index.json", index.dump(2) + "\n"));
  STQ_RETURN_IF_ERROR(WriteText(o.out + "/config.json", Config(dims, o.fp8).dump(2) + "\n"));

  bool have_generation_config = false;
  if (!o.tokenizer_from.empty()) {
    for (const char* file : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
      const std::string src = o.tokenizer_from + "/" + file;
      std::error_code ec;
      if (std::string(file) == "generation_config.json" && !fs::exists(src, ec)) continue;
      STQ_ASSIGN_OR_RETURN(std::string text, stquant::util::ReadRegularFile(src, kTokenizerFileLimit));
      STQ_RETURN_IF_ERROR(WriteText(o.out + "/" + file, text));
      if (std::string(file) == "generation_config.json") have_generation_config = true;
    }
  }
  if (!have_generation_config) {
    ordered_json gen = {{"bos_token_id", 1}, {"eos_token_id", 2}, {"transformers_version", "5.17.0"}};
    STQ_RETURN_IF_ERROR(WriteText(o.out + "/generation_config.json", gen.dump(2) + "\n"));
  }
  std::fprintf(stderr,
               "make_synthetic_model: %s: qwen3_moe hidden %lld, %lld layers, %lld experts, vocab %lld%s; "
               "%zu tensors, %llu bytes in %zu shards\n",
               o.out.c_str(), static_cast<long long>(dims.hidden), static_cast<long long>(dims.layers),
               static_cast<long long>(dims.experts), static_cast<long long>(dims.vocab), o.fp8 ? ", block FP8" : "",
               sorted_map.size(), static_cast<unsigned long long>(total), shards.size());
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Writes a deterministic synthetic qwen3_moe Hugging Face checkpoint", "make_synthetic_model"};
  Options o;
  app.add_option("--out", o.out, "output directory (created; must be empty unless --force)")->required();
  auto* preset = app.add_option("--preset", o.preset, "tiny: hidden 256, 2 layers, 4 experts (~3 MB)")
                     ->check(CLI::IsMember({"tiny"}));
  auto* target = app.add_option("--target-bytes", o.target_bytes,
                                "scale layers/experts/hidden to about this many bytes (benchmarks)")
                     ->check(CLI::PositiveNumber);
  preset->excludes(target);
  auto* shard = app.add_option("--shard-bytes", o.shard_bytes, "maximum bytes per shard (default 2 MiB, "
                                                               "or 2 GB with --target-bytes)")
                    ->check(CLI::PositiveNumber);
  app.add_flag("--fp8", o.fp8, "block-FP8 linear weights (F8_E4M3 + F32 weight_scale_inv, 128x128)");
  app.add_option("--tokenizer-from", o.tokenizer_from,
                 "copy tokenizer.json, tokenizer_config.json [, generation_config.json] from this directory");
  app.add_option("--seed", o.seed, "random seed (default 0)");
  app.add_flag("--force", o.force, "replace the contents of a non-empty --out");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "make_synthetic_model: error: %s\n", e.what());
    return 2;
  }
  if (o.target_bytes > 0 && shard->count() == 0) o.shard_bytes = 2'000'000'000ull;
  const Status status = Run(o);
  if (!status.ok()) {
    std::fprintf(stderr, "make_synthetic_model: error: %s\n", status.message().c_str());
    return status.ExitCode();
  }
  return 0;
}
