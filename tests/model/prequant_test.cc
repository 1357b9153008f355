// The prequant planner (model/prequant.h) on tiny synthetic checkpoints written with the
// safetensors Writer (headers are all it reads; the data is zero): format detection, the planned
// tensors of both targets (kMlxLm for mlx_lm.load, kRaw for the ollama layout), the ollama blobs,
// and the refusals, whose messages name the tensor.
#include "model/prequant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "stquant/convert.h"
#include "stquant/safetensors.h"
#include "util/file_test_util.h"

namespace stquant::model {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using safetensors::TensorDecl;

// A synthetic checkpoint: config.json, model.safetensors (zeros), optionally hf_quant_config.json.
struct Checkpoint {
  std::string config;
  std::vector<TensorDecl> tensors;
  std::string hf_quant_config;  // empty: none
};

void Write(const std::string& dir, const Checkpoint& c) {
  ::stquant::testing::WriteBytes(dir + "/config.json", c.config);
  if (!c.hf_quant_config.empty()) ::stquant::testing::WriteBytes(dir + "/hf_quant_config.json", c.hf_quant_config);
  auto writer = safetensors::Writer::Create(dir + "/model.safetensors", c.tensors);
  ASSERT_THAT(writer, IsOk());
  for (size_t i = 0; i < (*writer)->num_tensors(); ++i) {
    std::vector<uint8_t> zeros((*writer)->tensor(i).nbytes());
    ASSERT_THAT((*writer)->WriteTensorData(i, 0, zeros), IsOk());
  }
  ASSERT_THAT((*writer)->Commit(), IsOk());
}

const char* RoleName(PrequantRole role) {
  switch (role) {
    case PrequantRole::kTensor:
      return "tensor";
    case PrequantRole::kWeight:
      return "weight";
    case PrequantRole::kScales:
      return "scales";
    case PrequantRole::kBiases:
      return "biases";
    case PrequantRole::kGlobalScale:
      return "global_scale";
  }
  return "?";
}

// "name role DTYPE [shape]" per planned tensor; `ollama`: the name in the ollama layout.
std::vector<std::string> Describe(const PrequantPlan& plan, bool ollama) {
  std::vector<std::string> out;
  for (const PrequantTensor& t : plan.tensors) {
    out.push_back(fmt::format("{} {} {} [{}]", ollama ? OllamaPrequantName(t) : t.name, RoleName(t.role),
                              DTypeName(t.dtype), fmt::join(t.shape, ",")));
  }
  return out;
}

// Blob name -> metadata (quant_type/group_size), "tensor" for a pass-through blob.
std::map<std::string, std::string> DescribeBlobs(const std::vector<OllamaPrequantBlob>& blobs) {
  std::map<std::string, std::string> out;
  for (const OllamaPrequantBlob& b : blobs) {
    std::string m = b.layer.empty() ? "tensor" : "";
    for (const auto& [k, v] : b.metadata) m += fmt::format("{}{}={}", m.empty() ? "" : " ", k, v);
    out[b.name] = m;
  }
  return out;
}

// ---- The formats -------------------------------------------------------------------------------

const TensorDecl kNorm{"norm.weight", DType::kBF16, {8}};

Checkpoint Mlx(int bits = 4) {
  // K = 64, group 64: 64 * bits / 32 words.
  return {fmt::format(R"({{"model_type": "llama", "quantization": {{"group_size": 64, "bits": {}}}}})", bits),
          {{"l.weight", DType::kU32, {8, 2 * bits}}, {"l.scales", DType::kBF16, {8, 1}},
           {"l.biases", DType::kBF16, {8, 1}}, kNorm}};
}

Checkpoint ModelOpt() {
  return {R"({"model_type": "llama"})",
          {{"l.weight", DType::kU8, {8, 16}},  // K = 32: two E2M1 codes a byte
           {"l.weight_scale", DType::kF8E4M3, {8, 2}},
           {"l.weight_scale_2", DType::kF32, {}},
           {"l.input_scale", DType::kF32, {}},
           kNorm},
          R"({"quantization": {"quant_algo": "NVFP4", "group_size": 16}})"};
}

Checkpoint ModelOptExperts() {
  Checkpoint c{R"({"model_type": "qwen3_moe"})", {kNorm}, ""};
  for (int e = 0; e < 2; ++e) {
    const std::string p = fmt::format("model.layers.0.mlp.experts.{}.up_proj.", e);
    c.tensors.push_back({p + "weight", DType::kU8, {8, 16}});
    c.tensors.push_back({p + "weight_scale", DType::kF8E4M3, {8, 2}});
    c.tensors.push_back({p + "weight_scale_2", DType::kF32, {}});
  }
  return c;
}

Checkpoint CompressedNvfp4() {
  return {R"({"model_type": "llama", "quantization_config": {"quant_method": "compressed-tensors",
             "format": "nvfp4-pack-quantized", "config_groups": {"group_0": {"format": "nvfp4-pack-quantized",
             "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}}}}})",
          {{"l.weight_packed", DType::kU8, {8, 16}},
           {"l.weight_scale", DType::kF8E4M3, {8, 2}},
           {"l.weight_global_scale", DType::kF32, {1}},
           {"l.input_global_scale", DType::kF32, {1}},
           kNorm}};
}

Checkpoint CompressedInt4() {
  return {R"({"model_type": "llama", "quantization_config": {"quant_method": "compressed-tensors",
             "format": "pack-quantized", "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int",
             "symmetric": true, "strategy": "group", "group_size": 64}}}}})",
          {{"l.weight_packed", DType::kI32, {8, 8}},  // K = 64
           {"l.weight_scale", DType::kBF16, {8, 1}},
           {"l.weight_shape", DType::kI64, {2}},
           kNorm}};
}

Checkpoint GptOss() {
  const std::string p = "model.layers.0.mlp.experts.";
  return {R"({"model_type": "gpt_oss", "quantization_config": {"quant_method": "mxfp4"}})",
          {{p + "gate_up_proj_blocks", DType::kU8, {2, 4, 1, 16}},  // 2 experts, 4 rows, K = 32
           {p + "gate_up_proj_scales", DType::kU8, {2, 4, 1}},
           {p + "gate_up_proj_bias", DType::kBF16, {2, 4}},
           {p + "down_proj_blocks", DType::kU8, {2, 2, 1, 16}},
           {p + "down_proj_scales", DType::kU8, {2, 2, 1}},
           {p + "down_proj_bias", DType::kBF16, {2, 2}},
           kNorm}};
}

struct FormatCase {
  std::string label;
  Checkpoint checkpoint;
  SourceKind kind;
  std::string format;                   // PrequantPlan::format contains this
  std::vector<std::string> mlx_lm;      // Describe(kMlxLm plan)
  std::vector<std::string> raw;         // Describe(kRaw plan, ollama names)
  std::map<std::string, std::string> blobs;  // DescribeBlobs(OllamaPrequantBlobs(kRaw plan))
};

std::vector<FormatCase> FormatCases() {
  const std::string e = "model.layers.0.mlp.experts.";
  return {
      {"mlx", Mlx(), SourceKind::kMlx, "mlx",
       {"l.biases biases BF16 [8,1]", "l.scales scales BF16 [8,1]", "l.weight weight U32 [8,8]",
        "norm.weight tensor BF16 [8]"},
       {"l.weight.bias biases BF16 [8,1]", "l.weight.scale scales BF16 [8,1]", "l.weight weight U32 [8,8]",
        "norm.weight tensor BF16 [8]"},
       {{"l.weight", "group_size=64 quant_type=int4"}, {"norm.weight", "tensor"}}},
      // Dense ModelOpt: mlx-lm folds weight_scale_2 into the scales; ollama keeps it as the global scale.
      {"modelopt", ModelOpt(), SourceKind::kModelOptNvfp4, "modelopt NVFP4",
       {"l.scales scales U8 [8,2]", "l.weight weight U32 [8,4]", "norm.weight tensor BF16 [8]"},
       {"l.weight.global_scale global_scale F32 []", "l.weight.scale scales U8 [8,2]", "l.weight weight U32 [8,4]",
        "norm.weight tensor BF16 [8]"},
       {{"l.weight", "quant_type=nvfp4"}, {"norm.weight", "tensor"}}},
      // Per-expert layers: stacked into switch_mlp for mlx-lm, one blob per expert for ollama.
      {"modelopt-experts", ModelOptExperts(), SourceKind::kModelOptNvfp4, "modelopt NVFP4",
       {"model.layers.0.mlp.switch_mlp.up_proj.global_scale global_scale F32 [2]",
        "model.layers.0.mlp.switch_mlp.up_proj.scales scales U8 [2,8,2]",
        "model.layers.0.mlp.switch_mlp.up_proj.weight weight U32 [2,8,4]", "norm.weight tensor BF16 [8]"},
       {e + "0.up_proj.weight.global_scale global_scale F32 []", e + "0.up_proj.weight.scale scales U8 [8,2]",
        e + "0.up_proj.weight weight U32 [8,4]", e + "1.up_proj.weight.global_scale global_scale F32 []",
        e + "1.up_proj.weight.scale scales U8 [8,2]", e + "1.up_proj.weight weight U32 [8,4]",
        "norm.weight tensor BF16 [8]"},
       {{e + "0.up_proj.weight", "quant_type=nvfp4"},
        {e + "1.up_proj.weight", "quant_type=nvfp4"},
        {"norm.weight", "tensor"}}},
      {"compressed-nvfp4", CompressedNvfp4(), SourceKind::kCompressedTensors, "nvfp4-pack-quantized",
       {"l.scales scales U8 [8,2]", "l.weight weight U32 [8,4]", "norm.weight tensor BF16 [8]"},
       {"l.weight.global_scale global_scale F32 []", "l.weight.scale scales U8 [8,2]", "l.weight weight U32 [8,4]",
        "norm.weight tensor BF16 [8]"},
       {{"l.weight", "group_size=16 quant_type=nvfp4"}, {"norm.weight", "tensor"}}},
      {"compressed-int4", CompressedInt4(), SourceKind::kCompressedTensors, "pack-quantized int4 (group 64, symmetric)",
       {"l.biases biases BF16 [8,1]", "l.scales scales BF16 [8,1]", "l.weight weight U32 [8,8]",
        "norm.weight tensor BF16 [8]"},
       {"l.weight.bias biases BF16 [8,1]", "l.weight.scale scales BF16 [8,1]", "l.weight weight U32 [8,8]",
        "norm.weight tensor BF16 [8]"},
       {{"l.weight", "group_size=64 quant_type=int4"}, {"norm.weight", "tensor"}}},
      // gate_up split into gate / up (rows even / odd), mlx-lm's names in both layouts.
      {"gpt-oss", GptOss(), SourceKind::kGptOssMxfp4, "gpt-oss MXFP4",
       {e + "down_proj.bias tensor BF16 [2,2]", e + "down_proj.scales scales U8 [2,2,1]",
        e + "down_proj.weight weight U32 [2,2,4]", e + "gate_proj.bias tensor BF16 [2,2]",
        e + "gate_proj.scales scales U8 [2,2,1]", e + "gate_proj.weight weight U32 [2,2,4]",
        e + "up_proj.bias tensor BF16 [2,2]", e + "up_proj.scales scales U8 [2,2,1]",
        e + "up_proj.weight weight U32 [2,2,4]", "norm.weight tensor BF16 [8]"},
       {e + "down_proj.bias tensor BF16 [2,2]", e + "down_proj.weight.scale scales U8 [2,2,1]",
        e + "down_proj.weight weight U32 [2,2,4]", e + "gate_proj.bias tensor BF16 [2,2]",
        e + "gate_proj.weight.scale scales U8 [2,2,1]", e + "gate_proj.weight weight U32 [2,2,4]",
        e + "up_proj.bias tensor BF16 [2,2]", e + "up_proj.weight.scale scales U8 [2,2,1]",
        e + "up_proj.weight weight U32 [2,2,4]", "norm.weight tensor BF16 [8]"},
       {{e + "down_proj.bias", "tensor"},
        {e + "down_proj.weight", "group_size=32 quant_type=mxfp4"},
        {e + "gate_proj.bias", "tensor"},
        {e + "gate_proj.weight", "group_size=32 quant_type=mxfp4"},
        {e + "up_proj.bias", "tensor"},
        {e + "up_proj.weight", "group_size=32 quant_type=mxfp4"},
        {"norm.weight", "tensor"}}},
  };
}

class PrequantFormatTest : public ::testing::TestWithParam<FormatCase> {
 protected:
  ::stquant::testing::ScratchDir dir_;
};

TEST_P(PrequantFormatTest, DetectsAndPlansBothTargets) {
  const FormatCase& c = GetParam();
  Write(dir_.path(), c.checkpoint);
  auto inv = Inventory::Open(dir_.path());
  ASSERT_THAT(inv, IsOk());
  const Classification kind = Classify(*inv);
  EXPECT_EQ(kind.kind, c.kind) << SourceKindName(kind.kind);

  auto mlx_lm = PlanPrequant(*inv, kind, {.target = PrequantTarget::kMlxLm});
  ASSERT_THAT(mlx_lm, IsOk());
  EXPECT_THAT(mlx_lm->format, HasSubstr(c.format));
  EXPECT_THAT(Describe(*mlx_lm, false), ElementsAreArray(c.mlx_lm));

  auto raw = PlanPrequant(*inv, kind, {.target = PrequantTarget::kRaw});
  ASSERT_THAT(raw, IsOk());
  std::vector<std::string> raw_names = Describe(*raw, true);
  EXPECT_THAT(raw_names, ElementsAreArray(c.raw));
  auto blobs = OllamaPrequantBlobs(*raw, dir_.path(), /*requantize=*/false);
  ASSERT_THAT(blobs, IsOk());
  EXPECT_EQ(DescribeBlobs(*blobs), c.blobs);
  // A layer blob holds weight, scale, bias, global scale, in this order.
  for (const OllamaPrequantBlob& b : *blobs) {
    if (b.layer.empty()) continue;
    EXPECT_EQ(raw->tensors[b.tensors.front()].role, PrequantRole::kWeight) << b.name;
    for (size_t i = 1; i < b.tensors.size(); ++i) {
      EXPECT_LT(raw->tensors[b.tensors[i - 1]].role, raw->tensors[b.tensors[i]].role) << b.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, PrequantFormatTest, ::testing::ValuesIn(FormatCases()),
                         [](const auto& info) {
                           std::string name = info.param.label;
                           for (char& ch : name) ch = ch == '-' ? '_' : ch;
                           return name;
                         });

TEST(PrequantPlanTest, RawGlobalScalesAreTheSourcesOwn) {
  // ModelOpt weight_scale_2 copied; compressed-tensors' inverted weight_global_scale reciprocated.
  for (auto [checkpoint, op, source] :
       {std::tuple{ModelOpt(), PrequantOp::kScalarF32, "l.weight_scale_2"},
        std::tuple{CompressedNvfp4(), PrequantOp::kReciprocalF32, "l.weight_global_scale"}}) {
    ::stquant::testing::ScratchDir dir;
    Write(dir.path(), checkpoint);
    auto inv = Inventory::Open(dir.path());
    ASSERT_THAT(inv, IsOk());
    auto plan = PlanPrequant(*inv, Classify(*inv), {.target = PrequantTarget::kRaw});
    ASSERT_THAT(plan, IsOk());
    const PrequantTensor& g = plan->tensors.front();
    ASSERT_EQ(g.role, PrequantRole::kGlobalScale);
    EXPECT_EQ(g.op, op);
    EXPECT_THAT(g.sources, ElementsAreArray({std::string(source)}));
  }
}

// ---- Refusals ----------------------------------------------------------------------------------

class PrequantRefusalTest : public ::testing::Test {
 protected:
  Result<PrequantPlan> Plan(const Checkpoint& c, PrequantTarget target = PrequantTarget::kMlxLm) {
    Write(dir_.path(), c);
    auto inv = Inventory::Open(dir_.path());
    if (!inv.ok()) return inv.status();
    return PlanPrequant(*inv, Classify(*inv), {.target = target});
  }
  // The whole planner (stquant convert --dry-run).
  Result<ConversionPlan> PlanAll(const Checkpoint& c, OutputLayout layout = OutputLayout::kMlx,
                                 std::optional<QuantSpec> quant = std::nullopt) {
    Write(dir_.path(), c);
    ConvertOptions options;
    options.source_dir = dir_.path();
    options.layout = layout;
    options.quant = quant;
    if (layout == OutputLayout::kOllama) {
      options.policy = QuantPolicy::kOllama;
      options.model_name = "x";
    }
    return PlanConversion(options);
  }

  ::stquant::testing::ScratchDir dir_;
};

TEST_F(PrequantRefusalTest, MixedFormatsNameOneTensorOfEach) {
  Checkpoint c = ModelOpt();
  c.tensors.push_back({"k.weight_packed", DType::kI32, {8, 8}});
  c.tensors.push_back({"k.weight_scale", DType::kBF16, {8, 1}});
  EXPECT_THAT(Plan(c), StatusIs(StatusCode::kInvalidInput,
                                AllOf(HasSubstr("mixes quantization formats"),
                                      HasSubstr("compressed-tensors (e.g. 'k.weight_packed')"),
                                      HasSubstr("modelopt-nvfp4 (e.g. 'l.weight_scale')"))));
}

TEST_F(PrequantRefusalTest, GptqIsRefusedNamingQweight) {
  Checkpoint c{R"({"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}})",
               {{"l.qweight", DType::kI32, {8, 8}}, {"l.qzeros", DType::kI32, {1, 1}}, {"l.scales", DType::kF16, {1, 8}}}};
  EXPECT_THAT(PlanAll(c), StatusIs(StatusCode::kUnsupported,
                                   AllOf(HasSubstr("quant_method 'gptq'"), HasSubstr("tensor 'l.qweight'"))));
}

TEST_F(PrequantRefusalTest, GptqWithoutConfigIsRefusedNamingQweight) {
  Checkpoint c{R"({"model_type": "llama"})",
               {{"l.qweight", DType::kI32, {8, 8}}, {"l.qzeros", DType::kI32, {1, 1}}, kNorm}};
  EXPECT_THAT(PlanAll(c), StatusIs(StatusCode::kUnsupported,
                                   AllOf(HasSubstr("tensor 'l.qweight'"), HasSubstr("GPTQ/AWQ"))));
}

TEST_F(PrequantRefusalTest, E5M2IsRefusedNamingTheTensor) {
  Checkpoint c{R"({"model_type": "llama"})", {{"l.weight", DType::kF8E5M2, {8, 8}}, kNorm}};
  EXPECT_THAT(PlanAll(c), StatusIs(StatusCode::kUnsupported,
                                   AllOf(HasSubstr("tensor 'l.weight' is F8_E5M2"), HasSubstr("E4M3"))));
}

TEST_F(PrequantRefusalTest, ScaleShapeMismatchNamesWeightAndScale) {
  Checkpoint c = ModelOpt();
  c.tensors[1].shape = {8, 3};
  EXPECT_THAT(Plan(c), StatusIs(StatusCode::kInvalidInput,
                                AllOf(HasSubstr("do not fit NVFP4 group size 16"), HasSubstr("'l.weight' [8, 16]"),
                                      HasSubstr("'l.weight_scale' [8, 3]"))));
}

TEST_F(PrequantRefusalTest, MlxShapeMismatchNamesTheLayer) {
  Checkpoint c = Mlx();
  c.tensors[0].shape = {8, 4};  // 4 words a row and 1 group contradict bits 4 group 64
  EXPECT_THAT(Plan(c), StatusIs(StatusCode::kInvalidInput,
                                AllOf(HasSubstr(dir_.path() + ": MLX-quantized layer 'l'"),
                                      HasSubstr("contradict config.json"))));
}

TEST_F(PrequantRefusalTest, OllamaRefusesTypesItsRunnerCannotName) {
  auto plan = Plan(Mlx(3), PrequantTarget::kRaw);
  ASSERT_THAT(plan, IsOk());
  EXPECT_THAT(OllamaPrequantBlobs(*plan, "dir", false),
              StatusIs(StatusCode::kUnsupported, AllOf(HasSubstr("layer 'l' is int3"), HasSubstr("--requantize"))));
  // --requantize quantizes such layers again: no metadata, no refusal.
  auto blobs = OllamaPrequantBlobs(*plan, "dir", true);
  ASSERT_THAT(blobs, IsOk());
  EXPECT_TRUE(blobs->front().metadata.empty());
}

TEST_F(PrequantRefusalTest, OllamaRefusesClashingOutputNames) {
  Checkpoint c = Mlx();
  c.tensors.push_back({"l.weight.scale", DType::kBF16, {8}});  // what l.scales becomes
  auto plan = Plan(c, PrequantTarget::kRaw);
  ASSERT_THAT(plan, IsOk());
  EXPECT_THAT(OllamaPrequantBlobs(*plan, "dir", false),
              StatusIs(StatusCode::kInvalidInput,
                       AllOf(HasSubstr("output tensor 'l.weight.scale' planned in both blob 'l.weight' and blob "
                                       "'l.weight.scale'"),
                             HasSubstr("clashing name"))));
}

TEST_F(PrequantRefusalTest, OllamaQuantizeWithoutRequantizeGivesTheSpecError) {
  QuantSpec int4{QuantMode::kAffine, 4, 64, false, QuantProfile::kMlxCpu};
  EXPECT_THAT(PlanAll(ModelOpt(), OutputLayout::kOllama, int4),
              StatusIs(StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("cannot requantize an already-quantized source model (requested \"int4\")"),
                             HasSubstr("--requantize"))));
}

TEST_F(PrequantRefusalTest, OllamaRequantizePlansOneFloatTensorPerLayer) {
  // Two [32, 64] NVFP4 layers; ollama's policy promotes v_proj to mxfp8 under mxfp4 (§7).
  Checkpoint c{R"({"model_type": "llama"})", {kNorm}};
  for (const std::string base : {"a.q_proj", "a.v_proj"}) {
    c.tensors.push_back({base + ".weight", DType::kU8, {32, 32}});
    c.tensors.push_back({base + ".weight_scale", DType::kF8E4M3, {32, 4}});
    c.tensors.push_back({base + ".weight_scale_2", DType::kF32, {}});
  }
  Write(dir_.path(), c);
  ConvertOptions options;
  options.source_dir = dir_.path();
  options.layout = OutputLayout::kOllama;
  options.policy = QuantPolicy::kOllama;
  options.model_name = "x";
  options.quant = QuantSpec{QuantMode::kMxfp4, 4, 32, false, QuantProfile::kMlxCpu};
  options.requantize = true;
  auto plan = PlanConversion(options);
  ASSERT_THAT(plan, IsOk());
  std::vector<std::string> got;
  for (const PlannedTensor& t : plan->tensors) {
    got.push_back(fmt::format("{} blob {} {} [{}] {}", t.name, t.blob, DTypeName(t.dtype), fmt::join(t.shape, ","),
                              t.quant ? QuantTypeName(*t.quant) : "-"));
  }
  EXPECT_THAT(got, ElementsAreArray({"a.q_proj.weight blob a.q_proj.weight BF16 [32,64] mxfp4",
                                     "a.v_proj.weight blob a.v_proj.weight BF16 [32,64] mxfp8",
                                     "norm.weight blob norm.weight BF16 [8] -"}));
}

}  // namespace
}  // namespace stquant::model
