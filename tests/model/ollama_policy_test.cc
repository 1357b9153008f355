// The ollama V2 quantization policy, restated from ollama-create-spec §7, §8 and the cases of
// §12.3 (x/create create_test, plan_test, draft_test, gemma4/glimmer/nemotron_h/laguna tests).
#include "model/ollama_policy.h"

#include <gtest/gtest.h>

#include <vector>

namespace stquant::model {
namespace {

using Shape = std::vector<int64_t>;

std::string Q(std::string_view name, const Shape& shape, std::string_view requested) {
  return OllamaDefaultType(name, shape, requested);
}

TEST(OllamaQuantTypes, CanonicalAliases) {
  EXPECT_EQ(OllamaCanonicalType("int4"), "int4");
  EXPECT_EQ(OllamaCanonicalType(" Q4 "), "int4");
  EXPECT_EQ(OllamaCanonicalType("fp4"), "int4");
  EXPECT_EQ(OllamaCanonicalType("q8"), "int8");
  EXPECT_EQ(OllamaCanonicalType("fp8"), "int8");  // fp8 is int8 affine, not mxfp8
  EXPECT_EQ(OllamaCanonicalType("NVFP4"), "nvfp4");
  EXPECT_EQ(OllamaCanonicalType("mxfp8"), "mxfp8");
  EXPECT_EQ(OllamaCanonicalType("int3"), "");
  EXPECT_EQ(OllamaCanonicalType(""), "");
}

TEST(OllamaQuantTypes, Params) {
  EXPECT_EQ(OllamaTypeSpec("int4")->group_size, 64);
  EXPECT_EQ(OllamaTypeSpec("int8")->bits, 8);
  EXPECT_EQ(OllamaTypeSpec("nvfp4")->group_size, 16);
  EXPECT_EQ(OllamaTypeSpec("mxfp4")->group_size, 32);
  EXPECT_EQ(OllamaTypeSpec("mxfp8")->bits, 8);
  EXPECT_FALSE(OllamaTypeSpec("").has_value());
  EXPECT_EQ(OllamaTypeOf(QuantSpec{QuantMode::kAffine, 3, 64}), "");
  EXPECT_EQ(OllamaTypeOf(QuantSpec{QuantMode::kAffine, 4, 32}), "");
  EXPECT_EQ(OllamaTypeOf(QuantSpec{QuantMode::kAffine, 4, 64}), "int4");
}

TEST(OllamaIsAligned, Cases) {
  EXPECT_TRUE(OllamaAligned(Shape{4096, 4096}, "int4"));
  EXPECT_FALSE(OllamaAligned(Shape{4096, 48}, "int4"));
  EXPECT_TRUE(OllamaAligned(Shape{4096, 128}, "int8"));
  EXPECT_FALSE(OllamaAligned(Shape{4096, 32}, "int8"));
  EXPECT_TRUE(OllamaAligned(Shape{4096, 48}, "nvfp4"));
  EXPECT_FALSE(OllamaAligned(Shape{4096, 24}, "nvfp4"));
  EXPECT_TRUE(OllamaAligned(Shape{4096, 16}, "nvfp4"));
  EXPECT_TRUE(OllamaAligned(Shape{4096, 64}, "mxfp4"));
  EXPECT_FALSE(OllamaAligned(Shape{4096, 48}, "mxfp4"));
  EXPECT_TRUE(OllamaAligned(Shape{4096, 32}, "mxfp8"));
  EXPECT_FALSE(OllamaAligned(Shape{4096, 24}, "mxfp8"));
  EXPECT_FALSE(OllamaAligned(Shape{}, "int4"));
  EXPECT_TRUE(OllamaAligned(Shape{4096}, "int4"));
  EXPECT_TRUE(OllamaAligned(Shape{8, 64, 128}, "int4"));
}

TEST(OllamaEightBit, Family) {
  EXPECT_EQ(OllamaEightBit("int4"), "int8");
  EXPECT_EQ(OllamaEightBit("int8"), "int8");
  EXPECT_EQ(OllamaEightBit("nvfp4"), "mxfp8");
  EXPECT_EQ(OllamaEightBit("mxfp4"), "mxfp8");
  EXPECT_EQ(OllamaEightBit("mxfp8"), "mxfp8");
}

TEST(OllamaShouldQuantize, Cases) {
  EXPECT_FALSE(OllamaShouldQuantize("model.embed_tokens.weight"));
  EXPECT_FALSE(OllamaShouldQuantize("text_model.token_embedding.weight"));
  EXPECT_FALSE(OllamaShouldQuantize("model.layers.0.layer_norm.weight"));
  EXPECT_FALSE(OllamaShouldQuantize("model.layers.0.rms_norm.weight"));
  EXPECT_FALSE(OllamaShouldQuantize("h.0.ln_1.weight"));
  EXPECT_FALSE(OllamaShouldQuantize("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(OllamaShouldQuantize("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(OllamaShouldQuantize("model.audio_tower.layers.0.fc1.weight"));
  EXPECT_FALSE(OllamaShouldQuantize("model.embed_audio.proj.weight"));
  EXPECT_TRUE(OllamaShouldQuantize("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(OllamaShouldQuantize("model.layers.0.self_attn.weight"));
  EXPECT_TRUE(OllamaShouldQuantize("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_FALSE(OllamaShouldQuantize("model.layers.0.self_attn.rotary"));
}

TEST(OllamaShouldQuantizeTensor, ShapesAndSizes) {
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {4096, 4096}, "int4"), "int4");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {128, 128}, "int4"), "int4");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {16, 16}, "mxfp8"), "");   // < 1024 elements
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {31, 31}, "mxfp8"), "");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {4096}, "int4"), "");      // 1-D
  EXPECT_EQ(Q("model.layers.0.conv.weight", {64, 64, 4}, "int4"), "");             // 3-D conv
  EXPECT_EQ(Q("model.layers.0.conv.weight", {64, 64, 4, 4}, "int4"), "");
  EXPECT_EQ(Q("model.layers.0.mlp.switch_mlp.gate_up_proj.weight", {8, 256, 128}, "int4"), "int4");
  EXPECT_EQ(Q("model.layers.0.mlp.experts.down_proj.weight", {8, 128, 256}, "int4"), "int8");
  EXPECT_EQ(Q("model.layers.0.mlp.experts.gate_up_proj", {8, 256, 128}, "int4"), "int4");
  EXPECT_EQ(Q("model.embed_tokens.weight", {4096, 4096}, "int4"), "");
  EXPECT_EQ(Q("model.layers.0.input_layernorm.weight", {64, 4096}, "int4"), "");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.bias", {64, 4096}, "int4"), "");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {128, 48}, "fp8"), "");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {128, 64}, "fp8"), "int8");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {128, 48}, "mxfp4"), "");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {128, 64}, "mxfp4"), "mxfp4");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {128, 24}, "nvfp4"), "");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {128, 48}, "nvfp4"), "nvfp4");
}

// §7's example table at [4096, 4096].
struct TableRow {
  const char* name;
  Shape shape;
  const char* int4;
  const char* nvfp4;
  const char* mxfp4;
  const char* int8;
  const char* mxfp8;
};

TEST(OllamaMixedPrecisionPromotion, SpecTable) {
  const Shape s{4096, 4096};
  const std::vector<TableRow> rows = {
      {"model.layers.3.self_attn.q_proj.weight", s, "int4", "nvfp4", "mxfp4", "int8", "mxfp8"},
      {"model.layers.3.self_attn.o_proj.weight", s, "int4", "nvfp4", "mxfp4", "int8", "mxfp8"},
      {"model.layers.3.mlp.gate_proj.weight", s, "int4", "nvfp4", "mxfp4", "int8", "mxfp8"},
      {"model.layers.3.mlp.up_proj.weight", s, "int4", "nvfp4", "mxfp4", "int8", "mxfp8"},
      {"model.layers.3.self_attn.v_proj.weight", s, "int8", "mxfp8", "mxfp8", "int8", "mxfp8"},
      {"model.layers.3.self_attn.k_proj.weight", s, "int8", "mxfp8", "mxfp8", "int8", "mxfp8"},
      {"model.layers.3.mlp.down_proj.weight", s, "int8", "mxfp8", "mxfp8", "int8", "mxfp8"},
      {"model.layers.3.mlp.experts.down_proj.weight", {128, 4096, 2816}, "int8", "nvfp4", "mxfp4", "int8", "mxfp8"},
      {"lm_head.weight", s, "int8", "mxfp8", "mxfp8", "int8", "mxfp8"},
      {"model.embed_tokens.weight", s, "", "", "", "", ""},
      {"model.layers.3.input_layernorm.weight", s, "", "", "", "", ""},
      {"model.layers.3.self_attn.q_proj.bias", s, "", "", "", "", ""},
      {"model.layers.3.mlp.gate.weight", s, "", "", "", "", ""},
      {"model.vision_tower.layers.0.attn.q_proj.weight", s, "", "", "", "", ""},
      {"model.visual.blocks.0.mlp.fc1.weight", s, "", "", "", "", ""},
  };
  for (const TableRow& r : rows) {
    EXPECT_EQ(Q(r.name, r.shape, "int4"), r.int4) << r.name;
    EXPECT_EQ(Q(r.name, r.shape, "nvfp4"), r.nvfp4) << r.name;
    EXPECT_EQ(Q(r.name, r.shape, "mxfp4"), r.mxfp4) << r.name;
    EXPECT_EQ(Q(r.name, r.shape, "int8"), r.int8) << r.name;
    EXPECT_EQ(Q(r.name, r.shape, "mxfp8"), r.mxfp8) << r.name;
  }
}

TEST(OllamaMixedPrecisionPromotion, Specials) {
  EXPECT_EQ(Q("lm_head.weight", {4096, 4096}, "nvfp4"), "mxfp8");
  EXPECT_EQ(Q("lm_head.weight", {4096, 4096}, "mxfp8"), "mxfp8");
  EXPECT_EQ(Q("lm_head.weight", {4096, 4096}, "int4"), "int8");
  EXPECT_EQ(Q("lm_head.weight", {4096, 48}, "nvfp4"), "");  // 8-bit does not fit: kept
  EXPECT_EQ(Q("model.layers.0.mlp.experts.down_proj.weight", {8, 128, 256}, "int4"), "int8");
  EXPECT_EQ(Q("model.layers.0.self_attn.v_proj.weight", {1024, 48}, "int4"), "");  // unaligned
  // v_proj aligned to nvfp4 (16) but not to mxfp8 (32): no promotion.
  EXPECT_EQ(Q("model.layers.0.self_attn.v_proj.weight", {1024, 48}, "nvfp4"), "nvfp4");
  // Routing gates, in the order of §7 (before lm_head and alignment).
  EXPECT_EQ(Q("model.layers.0.mixer.gate.weight", {128, 4096}, "int4"), "");
  EXPECT_EQ(Q("model.layers.0.mlp.shared_expert_gate.weight", {64, 4096}, "int4"), "");
  EXPECT_EQ(Q("model.layers.0.router.proj.weight", {128, 4096}, "int4"), "");
  EXPECT_EQ(Q("model.layers.0.self_attn.q_proj.weight", {4096, 4096}, ""), "");
}

TEST(OllamaExpertGroupPrefix, Cases) {
  EXPECT_EQ(OllamaExpertGroupPrefix("model.layers.1.mlp.experts.0.gate_proj.weight"), "model.layers.1.mlp.experts");
  EXPECT_EQ(OllamaExpertGroupPrefix("language_model.model.layers.1.mlp.experts.7.down_proj.weight"),
            "language_model.model.layers.1.mlp.experts");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.layers.1.mlp.shared_experts.down_proj.weight"),
            "model.layers.1.mlp.shared_experts");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.layers.1.mlp.switch_mlp.up_proj.weight"), "model.layers.1.mlp.switch_mlp");
  EXPECT_EQ(OllamaExpertGroupPrefix("layers.1.mlp.switch_mlp.up_proj.weight"), "layers.1.mlp.switch_mlp");
  EXPECT_EQ(OllamaExpertGroupPrefix("language_model.layers.1.mlp.switch_mlp.up_proj.weight"),
            "language_model.layers.1.mlp.switch_mlp");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.language_model.layers.1.mlp.switch_mlp.up_proj.weight"),
            "model.language_model.layers.1.mlp.switch_mlp");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.language_model.layers.2.moe.experts.3.down_proj.weight"),
            "model.language_model.layers.2.moe.experts");
  EXPECT_EQ(OllamaExpertGroupPrefix("backbone.layers.4.mixer.experts.0.up_proj.weight"),
            "backbone.layers.4.mixer.experts");
  EXPECT_EQ(OllamaExpertGroupPrefix("language_model.backbone.layers.4.mixer.shared_experts.down_proj.weight"),
            "language_model.backbone.layers.4.mixer.shared_experts");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.language_model.backbone.layers.4.mixer.experts.1.up_proj.weight"),
            "model.language_model.backbone.layers.4.mixer.experts");
  EXPECT_EQ(OllamaExpertGroupPrefix("mtp.layers.0.mixer.experts.1.up_proj.weight"), "mtp.layers.0.mixer.experts");
  EXPECT_EQ(OllamaExpertGroupPrefix("backbone.layers.4.mixer.gate.weight"), "");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.layers.0.mlp.down_proj.weight"), "");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.layers.0.mlp.gate.weight"), "");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.embed_tokens.weight"), "");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.layers.0.self_attn.q_proj.weight"), "");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.layers.0.input_layernorm.weight"), "");
  EXPECT_EQ(OllamaExpertGroupPrefix("lm_head.weight"), "");
  EXPECT_EQ(OllamaExpertGroupPrefix("model.layers.1.mlp.experts.0.gate_proj.bias"), "");
  EXPECT_EQ(OllamaExpertGroupPrefix("foo.model.layers.1.mlp.experts.0.gate_proj.weight"), "");
}

TEST(OllamaLayerCadence, UseMoreBits) {
  // n = 30: 0-2, 5, 8, ... and 26-29 promoted.
  for (int i : {0, 1, 2, 5, 8, 26, 27, 28, 29}) EXPECT_TRUE(UseMoreBits(i, 30)) << i;
  for (int i : {3, 4, 6, 7}) EXPECT_FALSE(UseMoreBits(i, 30)) << i;
  EXPECT_FALSE(UseMoreBits(-1, 30));
  EXPECT_FALSE(UseMoreBits(0, 0));
  EXPECT_EQ(OllamaLayerIndex("model.layers.17.mlp.down_proj.weight"), 17);
  EXPECT_EQ(OllamaLayerIndex("lm_head.weight"), -1);
}

OllamaPolicy Policy(const nlohmann::json& config) {
  Result<OllamaPolicy> p = OllamaPolicy::ForConfig(config);
  EXPECT_TRUE(p.ok()) << p.status().message();
  return p.ok() ? *p : OllamaPolicy::Default();
}

TEST(OllamaPolicyRegistry, Families) {
  EXPECT_EQ(Policy({{"architectures", {"LlamaForCausalLM"}}}).family(), OllamaPolicy::Family::kDefault);
  EXPECT_EQ(Policy({{"architectures", {"Qwen3_5MoeForConditionalGeneration"}}}).family(), OllamaPolicy::Family::kQwen35);
  const OllamaPolicy g = Policy({{"architectures", {"Gemma4UnifiedForConditionalGeneration"}},
                                 {"text_config", {{"num_hidden_layers", 48}}}});
  EXPECT_EQ(g.family(), OllamaPolicy::Family::kGemma4);
  EXPECT_EQ(g.num_layers(), 48);
  EXPECT_EQ(Policy({{"model_type", "gemma4_unified"}, {"num_hidden_layers", 48}}).family(), OllamaPolicy::Family::kGemma4);
  const OllamaPolicy n = Policy({{"architectures", {"NemotronH_Nano_Omni_Reasoning_V3"}},
                                 {"llm_config", {{"num_hidden_layers", 52}}}});
  EXPECT_EQ(n.family(), OllamaPolicy::Family::kNemotronH);
  EXPECT_EQ(n.num_layers(), 52);
  const OllamaPolicy l = Policy({{"architectures", {"LagunaForCausalLM"}}});
  EXPECT_EQ(l.num_layers(), 40);
  EXPECT_EQ(l.dense_layers(), std::set<int>{0});
  const OllamaPolicy l2 = Policy({{"architectures", {"LagunaForCausalLM"}},
                                  {"mlp_layer_types", {"dense", "sparse", "dense", "sparse"}}});
  EXPECT_EQ(l2.num_layers(), 4);
  EXPECT_EQ(l2.dense_layers(), (std::set<int>{0, 2}));
  EXPECT_EQ(Policy({{"architectures", {"LagunaForCausalLM"}}, {"mlp_only_layers", {0, 3}}}).dense_layers(),
            (std::set<int>{0, 3}));
  EXPECT_EQ(Policy({{"architectures", {"MuseGlimmerForConditionalGeneration"}}}).family(), OllamaPolicy::Family::kGlimmer);
  EXPECT_EQ(Policy({{"architectures", {"Cohere2MoeForCausalLM"}}}).family(), OllamaPolicy::Family::kCohere2Moe);
}

TEST(OllamaPolicyRegistry, MalformedConfigIsAnError) {
  Result<OllamaPolicy> p =
      OllamaPolicy::ForConfig({{"architectures", {"Gemma4ForCausalLM"}}, {"num_hidden_layers", "many"}});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("build quantization policy for \"Gemma4ForCausalLM\": gemma4: parse config.json"),
            std::string::npos)
      << p.status().message();
}

TEST(OllamaQwen35Policy, KeepsLowRankProjections) {
  const OllamaPolicy p = Policy({{"architectures", {"Qwen3_5ForCausalLM"}}});
  const Shape s{4096, 4096};
  EXPECT_EQ(p.Type("model.layers.0.linear_attn.in_proj_a.weight", s, "nvfp4"), "");
  EXPECT_EQ(p.Type("model.layers.0.linear_attn.in_proj_b.weight", s, "int4"), "");
  EXPECT_EQ(p.Type("model.layers.0.linear_attn.in_proj_ba.weight", s, "int4"), "");
  EXPECT_EQ(p.Type("model.layers.0.linear_attn.in_proj_qkvz.weight", s, "int4"), "int4");
  EXPECT_EQ(p.Type("model.layers.0.mlp.shared_expert_gate.weight", Shape{1, 4096}, "int4"), "");
}

TEST(OllamaGemma4Policy, Cases) {
  const OllamaPolicy p = Policy({{"architectures", {"Gemma4ForCausalLM"}}, {"num_hidden_layers", 30}});
  const OllamaPolicy moe8 =
      Policy({{"architectures", {"Gemma4ForCausalLM"}}, {"num_hidden_layers", 30}, {"num_experts", 8}});
  const Shape s{2048, 2048};
  const Shape embed{262144, 2048};
  EXPECT_EQ(p.Type("model.language_model.embed_tokens.weight", embed, "int4"), "int8");
  EXPECT_EQ(p.Type("model.language_model.embed_tokens.weight", embed, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("model.language_model.embed_tokens.weight", embed, "mxfp4"), "mxfp8");
  EXPECT_EQ(p.Type("model.language_model.embed_tokens.weight", embed, "int8"), "int8");
  EXPECT_EQ(p.Type("model.language_model.embed_tokens.weight", embed, "mxfp8"), "mxfp8");
  for (const char* t : {"int4", "nvfp4", "mxfp4"}) {
    const std::string e = OllamaEightBit(t);
    EXPECT_EQ(p.Type("model.language_model.layers.0.self_attn.v_proj.weight", s, t), e);
    EXPECT_EQ(p.Type("model.language_model.layers.29.self_attn.v_proj.weight", s, t), e);
    EXPECT_EQ(p.Type("model.language_model.layers.4.self_attn.v_proj.weight", s, t), t);
    EXPECT_EQ(p.Type("model.language_model.layers.0.mlp.down_proj.weight", s, t), e);
    EXPECT_EQ(p.Type("model.language_model.layers.29.mlp.down_proj.weight", s, t), e);
    EXPECT_EQ(p.Type("model.language_model.layers.4.mlp.down_proj.weight", s, t), t);
    EXPECT_EQ(p.Type("model.language_model.layers.0.self_attn.k_proj.weight", s, t), t);  // k only with 8 experts
    EXPECT_EQ(moe8.Type("model.language_model.layers.4.self_attn.k_proj.weight", s, t), e);
    EXPECT_EQ(moe8.Type("model.language_model.layers.4.self_attn.v_proj.weight", s, t), e);
    EXPECT_EQ(p.Type("model.language_model.layers.4.experts.gate_up_proj", Shape{8, 4096, 2048}, t), t);
  }
  EXPECT_EQ(p.Type("model.language_model.layers.4.router.proj.weight", s, "int4"), "");
  EXPECT_EQ(p.Type("model.language_model.embed_tokens_per_layer.weight", embed, "int4"), "");
  EXPECT_EQ(p.Type("model.language_model.layers.4.input_layernorm.weight", Shape{2048}, "int4"), "");
  EXPECT_EQ(p.Type("model.language_model.layers.4.router.scale", Shape{2048}, "int4"), "");
  EXPECT_EQ(p.Type("model.audio_tower.layers.0.self_attn.v_proj.weight", s, "int4"), "");
  EXPECT_EQ(p.Type("model.vision_tower.layers.0.self_attn.v_proj.weight", s, "int4"), "");
  // 8-bit requests stay uniform.
  EXPECT_EQ(p.Type("model.language_model.layers.4.self_attn.v_proj.weight", s, "int8"), "int8");
  // Without a layer count nothing is promoted.
  const OllamaPolicy none = Policy({{"architectures", {"Gemma4ForCausalLM"}}});
  EXPECT_EQ(none.Type("model.language_model.layers.0.self_attn.v_proj.weight", s, "int4"), "int4");
}

TEST(OllamaGlimmerPolicy, Cases) {
  const OllamaPolicy p = Policy({{"architectures", {"MuseGlimmerForConditionalGeneration"}}, {"num_hidden_layers", 48}});
  const Shape s{4096, 4096};
  EXPECT_EQ(p.Type("model.vision_tower.blocks.0.attn.qkv.weight", s, "nvfp4"), "");
  EXPECT_EQ(p.Type("model.vision_adapter.proj.weight", s, "nvfp4"), "");
  EXPECT_EQ(p.Type("model.layers.3.self_attn.q_proj.weight", s, "int8"), "int8");
  EXPECT_EQ(p.Type("model.embed_tokens.weight", Shape{151936, 4096}, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("lm_head.weight", Shape{151936, 4096}, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("lm_head.weight", Shape{151936, 4096}, "int4"), "int8");
  for (const char* proj : {"q_proj", "o_proj", "k_proj", "v_proj"}) {
    EXPECT_EQ(p.Type("model.layers.6.self_attn." + std::string(proj) + ".weight", s, "nvfp4"), "mxfp8") << proj;
  }
  for (const char* name : {"model.layers.{}.mlp.down_proj.weight", "model.layers.{}.self_attn.gate_proj.weight"}) {
    auto at = [&](int layer) {
      std::string n = name;
      n.replace(n.find("{}"), 2, std::to_string(layer));
      return p.Type(n, s, "nvfp4");
    };
    EXPECT_EQ(at(0), "mxfp8") << name;
    EXPECT_EQ(at(8), "mxfp8") << name;
    EXPECT_EQ(at(6), "nvfp4") << name;
  }
}

TEST(OllamaCohere2MoePolicy, Cases) {
  const OllamaPolicy p = Policy({{"architectures", {"Cohere2MoeForCausalLM"}}, {"num_hidden_layers", 32}});
  const Shape s{4096, 4096};
  EXPECT_EQ(p.Type("model.embed_tokens.weight", Shape{262144, 4096}, "int4"), "int8");
  EXPECT_EQ(p.Type("model.embed_tokens.weight", Shape{262144, 4096}, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("model.layers.5.mlp.gate.weight", Shape{128, 4096}, "int4"), "");
  EXPECT_EQ(p.Type("model.layers.0.self_attn.v_proj.weight", s, "int4"), "int8");   // cadence layer
  EXPECT_EQ(p.Type("model.layers.5.self_attn.v_proj.weight", s, "int4"), "int4");   // not promoted
  EXPECT_EQ(p.Type("model.layers.6.self_attn.k_proj.weight", s, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("model.layers.7.mlp.experts.down_proj.weight", Shape{8, 4096, 1024}, "int4"), "int4");
  EXPECT_EQ(p.Type("model.layers.7.self_attn.q_proj.weight", s, "int4"), "int4");
}

TEST(OllamaNemotronHPolicy, Cases) {
  const OllamaPolicy p = Policy({{"architectures", {"NemotronH_Nano_Omni_Reasoning_V3"}},
                                 {"llm_config", {{"num_hidden_layers", 52}}}});
  const Shape s{4096, 4096};
  EXPECT_EQ(p.Type("backbone.layers.16.mixer.in_proj.weight", s, "nvfp4"), "nvfp4");
  EXPECT_EQ(p.Type("backbone.layers.0.mixer.out_proj.weight", s, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("backbone.layers.16.mixer.v_proj.weight", s, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("backbone.layers.16.mixer.o_proj.weight", s, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("backbone.layers.16.mixer.experts.up_proj.weight", Shape{128, 1024, 4096}, "nvfp4"), "nvfp4");
  EXPECT_EQ(p.Type("backbone.layers.0.mixer.experts.down_proj.weight", Shape{128, 4096, 1024}, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("backbone.layers.0.mixer.shared_experts.down_proj.weight", s, "mxfp4"), "mxfp8");
  EXPECT_EQ(p.Type("backbone.layers.51.mixer.down_proj.weight", s, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("backbone.layers.16.mixer.down_proj.weight", s, "nvfp4"), "nvfp4");
  EXPECT_EQ(p.Type("backbone.layers.16.mixer.gate.weight", Shape{128, 4096}, "nvfp4"), "");
  EXPECT_EQ(p.Type("backbone.layers.16.mixer.conv1d.weight", Shape{4096, 4}, "nvfp4"), "");
  EXPECT_EQ(p.Type("backbone.embeddings.weight", Shape{131072, 4096}, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("lm_head.weight", Shape{131072, 4096}, "int4"), "int8");
  EXPECT_EQ(p.Type("lm_head.weight", Shape{131072, 4100}, "nvfp4"), "");  // unaligned
  EXPECT_EQ(p.Type("vision_model.blocks.0.attn.qkv.weight", s, "nvfp4"), "");
  EXPECT_EQ(p.Type("mlp1.1.weight", s, "nvfp4"), "");
  EXPECT_EQ(p.Type("sound_encoder.layers.0.fc1.weight", s, "nvfp4"), "");
  EXPECT_EQ(p.Type("sound_projection.linear.weight", s, "nvfp4"), "");
}

TEST(OllamaLagunaPolicy, Cases) {
  const OllamaPolicy p = Policy({{"architectures", {"LagunaForCausalLM"}}, {"num_hidden_layers", 40}});
  const Shape s{4096, 4096};
  const Shape experts{64, 4096, 1024};
  EXPECT_EQ(p.Type("model.embed_tokens.weight", Shape{100352, 4096}, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("lm_head.weight", Shape{100352, 4096}, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("model.layers.3.mlp.gate.weight", Shape{64, 4096}, "nvfp4"), "");
  EXPECT_EQ(p.Type("model.layers.3.self_attn.q_proj.weight", s, "mxfp8"), "");
  EXPECT_EQ(p.Type("model.layers.3.self_attn.v_proj.weight", s, "nvfp4"), "nvfp4");  // base: no promotion
  EXPECT_EQ(p.Type("model.layers.0.mlp.down_proj.weight", s, "nvfp4"), "nvfp4");     // dense layer 0
  EXPECT_EQ(p.Type("model.layers.3.mlp.down_proj.weight", s, "nvfp4"), "");          // dense MLP in a sparse layer
  // Routed expert down under mxfp8: kept on cadence layers (middle end n/2-4 = 16), else mxfp8.
  EXPECT_EQ(p.Type("model.layers.2.mlp.experts.down_proj.weight", experts, "mxfp8"), "");
  EXPECT_EQ(p.Type("model.layers.7.mlp.experts.down_proj.weight", experts, "mxfp8"), "");
  EXPECT_EQ(p.Type("model.layers.20.mlp.experts.down_proj.weight", experts, "mxfp8"), "mxfp8");
  EXPECT_EQ(p.Type("model.layers.6.mlp.experts.down_proj.weight", experts, "mxfp8"), "mxfp8");
  EXPECT_EQ(p.Type("model.layers.7.mlp.experts.down_proj.weight", experts, "nvfp4"), "nvfp4");
  EXPECT_EQ(p.Type("model.layers.7.mlp.experts.gate_proj.weight", Shape{64, 1024, 4096}, "nvfp4"), "nvfp4");
  EXPECT_EQ(p.Type("model.layers.7.mlp.shared_experts.down_proj.weight", s, "mxfp8"), "");
  EXPECT_EQ(p.Type("model.layers.7.mlp.shared_experts.down_proj.weight", s, "nvfp4"), "mxfp8");
  EXPECT_EQ(p.Type("model.layers.20.mlp.shared_experts.down_proj.weight", s, "nvfp4"), "nvfp4");
  EXPECT_EQ(p.Type("model.layers.20.mlp.shared_experts.up_proj.weight", s, "nvfp4"), "nvfp4");
  // int4 and int8 use the default policy.
  EXPECT_EQ(p.Type("model.layers.3.self_attn.v_proj.weight", s, "int4"), "int8");
  EXPECT_EQ(p.Type("model.layers.3.mlp.down_proj.weight", s, "int4"), "int8");
}

TEST(OllamaDraftPolicy, Cases) {
  const OllamaPolicy p = OllamaPolicy::Default().AsDraft();
  EXPECT_EQ(p.Type("model.embed_tokens.weight", Shape{4096, 4096}, "int8"), "int8");
  EXPECT_EQ(p.Type("lm_head.weight", Shape{4096, 4096}, "nvfp4"), "nvfp4");
  EXPECT_EQ(p.Type("lm_head.weight", Shape{4096, 2049}, "nvfp4"), "");
  EXPECT_EQ(p.Type("model.layers.0.mlp.down_proj.weight", Shape{4096, 4096}, "nvfp4"), "mxfp8");
}

}  // namespace
}  // namespace stquant::model
