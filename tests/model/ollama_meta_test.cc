// Modelfile parsing and the ConfigV2 capabilities / parser / renderer inference
// (ollama-create-spec §1, §9.4, §12.3 client/create_test).
#include "model/ollama_meta.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace stquant::model {
namespace {

namespace fs = std::filesystem;

TEST(OllamaModelfile, ParsesCommands) {
  const std::string text =
      "# a comment\nFROM ./model\nTEMPLATE \"\"\"{{ .Prompt }}\nline 2\"\"\"\nSYSTEM You are terse.\n"
      "PARAMETER temperature 0.7\nPARAMETER stop <|end|>\nPARAMETER stop \"<|user|>\"\nPARAMETER mirostat 2\n"
      "PARSER qwen3\nRENDERER qwen3-coder\nREQUIRES 0.20.0\nADAPTER ./lora\nLICENSE MIT\n";
  Result<OllamaModelfile> mf = ParseOllamaModelfile(text, "/nonexistent");
  ASSERT_TRUE(mf.ok()) << mf.status().message();
  EXPECT_EQ(mf->from, "./model");
  EXPECT_EQ(mf->template_text, "{{ .Prompt }}\nline 2");
  EXPECT_EQ(mf->system, "You are terse.");
  EXPECT_EQ(mf->license, "MIT");
  EXPECT_EQ(mf->parser, "qwen3");
  EXPECT_EQ(mf->renderer, "qwen3-coder");
  EXPECT_EQ(mf->requires_version, "0.20.0");
  EXPECT_FLOAT_EQ(mf->parameters["temperature"].get<float>(), 0.7f);
  ASSERT_EQ(mf->parameters["stop"].size(), 2u);
  EXPECT_EQ(mf->parameters["stop"][1], "<|user|>");
  EXPECT_FALSE(mf->parameters.contains("mirostat"));  // silently ignored
}

TEST(OllamaModelfile, RequiresMinimumVersion) {
  Result<OllamaModelfile> low = ParseOllamaModelfile("REQUIRES 0.14.0\n", ".");
  ASSERT_FALSE(low.ok());
  EXPECT_NE(low.status().message().find("minimum supported version 0.19.0"), std::string::npos);
  Result<OllamaModelfile> bad = ParseOllamaModelfile("REQUIRES banana\n", ".");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("valid semver"), std::string::npos);
  EXPECT_TRUE(ParseOllamaModelfile("REQUIRES v0.19.0\n", ".").ok());
  EXPECT_STREQ(kOllamaMinVersion, "0.19.0");
}

TEST(OllamaModelfile, DraftMustBeADirectory) {
  const fs::path dir = fs::temp_directory_path() / ("stquant_mf_" + std::to_string(::getpid()));
  fs::create_directories(dir / "draft");
  Result<OllamaModelfile> ok = ParseOllamaModelfile("DRAFT ./draft\n", dir.string());
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->draft, (dir / "draft").string());
  Result<OllamaModelfile> missing = ParseOllamaModelfile("DRAFT some-model:latest\n", dir.string());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("DRAFT model references are not supported with --experimental yet"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(OllamaModelfile, UnknownParameterIsAnError) {
  EXPECT_FALSE(ParseOllamaModelfile("PARAMETER no_such_thing 1\n", ".").ok());
  EXPECT_FALSE(ParseOllamaModelfile("PARAMETER temperature warm\n", ".").ok());
}

// Found by fuzz/config_files_fuzz.cc (issue 17).
TEST(OllamaModelfile, HostileTextGivesOneLineErrors) {
  auto message = [](const std::string& text) { return ParseOllamaModelfile(text, ".").status().message(); };
  // Control characters from the file are escaped in the message.
  EXPECT_EQ(message("PARAMETER s\x01\r\x1b[2J 1\n"), "unknown parameter 's\\x01\\x0d\\x1b[2j'");
  EXPECT_EQ(message("PARAMETER temperature \"1\r\"\n"), "invalid value for parameter 'temperature': 1\\x0d");
  EXPECT_EQ(message("FR\x01OM x\n"), "unknown Modelfile command 'fr\\x01om'");
  // A """quoted""" argument keeps its trailing blanks: a name followed by blanks has no value (this
  // used to throw std::out_of_range: an internal error).
  EXPECT_EQ(message("PARAMETER \"\"\"temperature   \"\"\"\n"), "PARAMETER needs a name and a value: temperature   ");
  // Its strings go into JSON blobs: they must be UTF-8.
  EXPECT_EQ(message("FROM .\nSYSTEM \"caf\xe9\"\n"), "Modelfile is not valid UTF-8 (byte 0xe9 at offset 18)");
}

TEST(OllamaParserRenderer, Table) {
  auto arch = [](const char* a) { return nlohmann::json{{"architectures", {a}}}; };
  EXPECT_EQ(OllamaParserName(arch("MuseGlimmerForConditionalGeneration"), ""), "glimmer");
  EXPECT_EQ(OllamaParserName(arch("LagunaForCausalLM"), ""), "laguna");
  EXPECT_EQ(OllamaParserName(arch("LagunaForCausalLM"), "x laguna_glm_thinking_v8 y"), "poolside-v1");
  EXPECT_EQ(OllamaRendererName(arch("Cohere2MoeForCausalLM"), ""), "cohere");
  EXPECT_EQ(OllamaParserName(arch("Glm4MoeForCausalLM"), ""), "glm-4.7");
  EXPECT_EQ(OllamaParserName(arch("DeepseekV3ForCausalLM"), ""), "deepseek3");
  EXPECT_EQ(OllamaParserName(arch("Gemma4ForConditionalGeneration"), ""), "gemma4");
  EXPECT_EQ(OllamaParserName(arch("Qwen3_5MoeForConditionalGeneration"), ""), "qwen3.5");
  EXPECT_EQ(OllamaRendererName(arch("Qwen3_5MoeForConditionalGeneration"), ""), "qwen3.5");
  EXPECT_EQ(OllamaRendererName(arch("Qwen3NextForCausalLM"), "resolved_reasoning_effort preserve_thinking"), "qwen3.8");
  EXPECT_EQ(OllamaParserName(arch("Qwen3MoeForCausalLM"), ""), "qwen3");
  EXPECT_EQ(OllamaRendererName(arch("Qwen3MoeForCausalLM"), ""), "qwen3-coder");
  const nlohmann::json omni = {{"architectures", {"NemotronH_Nano_Omni_Reasoning_V3"}},
                               {"llm_config", {{"model_type", "nemotron_h"}}},
                               {"vision_config", nlohmann::json::object()},
                               {"sound_config", nlohmann::json::object()}};
  EXPECT_EQ(OllamaParserName(omni, ""), "nemotron-3-nano");
  EXPECT_EQ(OllamaParserName(omni, "{reasoning effort: efficient}"), "nemotron-3.5-nano");
  EXPECT_EQ(OllamaCapabilities(omni, "", "nemotron-3-nano"),
            (std::vector<std::string>{"completion", "vision", "audio", "tools", "thinking"}));
  EXPECT_EQ(OllamaParserName(arch("LlamaForCausalLM"), ""), "");
}

TEST(OllamaCapabilities, Inference) {
  const nlohmann::json llama = {{"architectures", {"LlamaForCausalLM"}}};
  EXPECT_EQ(OllamaCapabilities(llama, "", ""), (std::vector<std::string>{"completion"}));
  EXPECT_EQ(OllamaCapabilities(llama, "<think> </think>", ""), (std::vector<std::string>{"completion", "thinking"}));
  EXPECT_EQ(OllamaCapabilities(llama, "content.split('</think>')", ""),
            (std::vector<std::string>{"completion", "thinking"}));
  EXPECT_EQ(OllamaCapabilities(llama, "content.split('</think>') reasoning_content", ""),
            (std::vector<std::string>{"completion"}));
  EXPECT_EQ(OllamaCapabilities({{"model_type", "qwen3_5"}}, "", ""), (std::vector<std::string>{"completion", "thinking"}));
  EXPECT_EQ(OllamaCapabilities({{"has_vision", true}}, "", ""), (std::vector<std::string>{"completion", "vision"}));
  EXPECT_EQ(OllamaCapabilities({{"vision_config", nullptr}}, "", ""), (std::vector<std::string>{"completion"}));
  EXPECT_EQ(OllamaCapabilities({{"audio_config", nlohmann::json::object()}}, "", ""),
            (std::vector<std::string>{"completion", "audio"}));
}

TEST(OllamaModelDir, Detection) {
  const fs::path dir = fs::temp_directory_path() / ("stquant_md_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  EXPECT_FALSE(IsSafetensorsModelDir(dir.string()));
  std::ofstream(dir / "config.json") << "{}";
  EXPECT_FALSE(IsSafetensorsModelDir(dir.string()));
  std::ofstream(dir / "model.safetensors") << "";
  EXPECT_TRUE(IsSafetensorsModelDir(dir.string()));
  fs::remove(dir / "config.json");
  EXPECT_FALSE(IsSafetensorsModelDir(dir.string()));
  EXPECT_FALSE(IsSafetensorsModelDir((dir / "nope").string()));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace stquant::model
