// Runs the `stquant` binary (STQUANT_CLI_PATH) and checks what `inspect` prints and its exit codes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "stquant/safetensors.h"
#include "util/file_test_util.h"

namespace stquant {
namespace {

namespace fs = std::filesystem;
using ::stquant::testing::IsOk;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kFixtures = std::string(STQUANT_SHARED_DIR) + "/fixtures/hf/";

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `stquant <args>`; stdout is captured through the pipe, stderr through a file.
RunResult RunStquant(const std::vector<std::string>& args) {
  ::stquant::testing::ScratchDir scratch;
  const std::string err_path = scratch.File("stderr");
  std::string command = Quote(STQUANT_CLI_PATH);
  for (const std::string& a : args) command.append(" ").append(Quote(a));
  command.append(" 2>").append(Quote(err_path)).append(" </dev/null");
  RunResult r;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.out.append(buf, n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.err = ::stquant::testing::ReadBytes(err_path);
  return r;
}

TEST(InspectCliTest, ShardedModelDirectory) {
  const RunResult r = RunStquant({"inspect", kFixtures + "tiny-qwen3-moe"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out, HasSubstr("69 tensors across 7 shards, 4467712 bytes"));
  EXPECT_THAT(r.out, HasSubstr("arch:   Qwen3MoeForCausalLM"));
  EXPECT_THAT(r.out, HasSubstr("source: float (BF16)"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("\nmodel\\.layers\\.0\\.mlp\\.experts\\.0\\.down_proj\\.weight +BF16 +"
                                              "\\[256, 128\\] +65536 +model-00002-of-00007\\.safetensors\n"));
  EXPECT_THAT(r.out, HasSubstr("  BF16 "));
}

TEST(InspectCliTest, SingleSafetensorsFile) {
  const RunResult r = RunStquant({"inspect", kFixtures + "tiny-llama/model.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("(safetensors file)"), HasSubstr("21 tensors across 1 shard,")));
}

TEST(InspectCliTest, BlockFp8Model) {
  const RunResult r = RunStquant({"inspect", kFixtures + "tiny-qwen3-fp8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("source: block-fp8 ("));
  EXPECT_THAT(r.out, HasSubstr("  F8_E4M3 "));
}

TEST(InspectCliTest, Json) {
  const RunResult r = RunStquant({"inspect", "--json", kFixtures + "tiny-qwen3-moe"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["source_kind"], "float");
  EXPECT_EQ(j["architecture"], "Qwen3MoeForCausalLM");
  EXPECT_EQ(j["is_directory"], true);
  EXPECT_EQ(j["totals"]["tensors"], 69);
  EXPECT_EQ(j["totals"]["bytes"], 4467712);
  EXPECT_EQ(j["totals"]["by_dtype"]["BF16"]["tensors"], 69);
  ASSERT_EQ(j["shards"].size(), 7u);
  EXPECT_EQ(j["shards"][0]["file"], "model-00001-of-00007.safetensors");
  ASSERT_EQ(j["tensors"].size(), 69u);
  const nlohmann::json& first = j["tensors"][0];
  EXPECT_EQ(first["name"], "lm_head.weight");
  EXPECT_EQ(first["dtype"], "BF16");
  EXPECT_EQ(first["shape"], nlohmann::json({512, 256}));
  EXPECT_EQ(first["bytes"], 262144);
  EXPECT_EQ(first["shard"], "model-00001-of-00007.safetensors");
  EXPECT_TRUE(j["quantized"].empty());
}

TEST(InspectCliTest, MlxQuantizedLayers) {
  ::stquant::testing::ScratchDir dir;
  ::stquant::testing::WriteBytes(dir.File("config.json"),
                                 R"({"model_type": "llama", "quantization": {"group_size": 64, "bits": 4}})");
  auto writer = safetensors::Writer::Create(dir.File("model.safetensors"),
                                            {{"l.weight", DType::kU32, {8, 16}},
                                             {"l.scales", DType::kBF16, {8, 2}},
                                             {"l.biases", DType::kBF16, {8, 2}}});
  ASSERT_THAT(writer, IsOk());
  for (size_t i = 0; i < 3; ++i) {
    std::vector<uint8_t> zeros((*writer)->tensor(i).nbytes());
    ASSERT_THAT((*writer)->WriteTensorData(i, 0, zeros), IsOk());
  }
  ASSERT_THAT((*writer)->Commit(), IsOk());

  const RunResult text = RunStquant({"inspect", dir.path()});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_THAT(text.out, HasSubstr("source: mlx (affine, bits 4, group size 64 (config), 1 quantized layers)"));
  EXPECT_THAT(text.out, ::testing::ContainsRegex("\nl\\.weight +U32 +\\[8, 16\\] +512 +model\\.safetensors +"
                                                 "affine 4-bit g64\n"));
  const RunResult json = RunStquant({"inspect", "--json", dir.path()});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const nlohmann::json j = nlohmann::json::parse(json.out);
  ASSERT_EQ(j["quantized"].size(), 1u);
  EXPECT_EQ(j["quantized"][0],
            nlohmann::json({{"name", "l"}, {"mode", "affine"}, {"bits", 4}, {"group_size", 64}, {"source", "config"}}));
}

// ---- Bad input: one line on stderr, exit code 2, nothing on stdout ----------------------------

void ExpectUsageError(const RunResult& r, const std::string& what) {
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, AllOf(StartsWith("stquant: error: "), HasSubstr(what)));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(InspectCliTest, MissingPath) {
  ExpectUsageError(RunStquant({"inspect", "/nonexistent/model"}), "'/nonexistent/model': no such file or directory");
}

TEST(InspectCliTest, NotASafetensorsFile) {
  ExpectUsageError(RunStquant({"inspect", kFixtures + "tiny-llama/config.json"}), "tiny-llama/config.json");
}

TEST(InspectCliTest, DirectoryWithoutConfig) {
  ::stquant::testing::ScratchDir dir;
  ExpectUsageError(RunStquant({"inspect", dir.path()}), "has no config.json");
}

TEST(InspectCliTest, MalformedConfig) {
  ::stquant::testing::ScratchDir dir;
  ::stquant::testing::WriteBytes(dir.File("config.json"), "[]");
  ExpectUsageError(RunStquant({"inspect", dir.path()}), "expected a JSON object");
}

TEST(InspectCliTest, NoPathArgument) { ExpectUsageError(RunStquant({"inspect"}), "path is required"); }

TEST(InspectCliTest, NoSubcommand) { ExpectUsageError(RunStquant({}), "subcommand"); }

TEST(InspectCliTest, UnknownFlag) { ExpectUsageError(RunStquant({"inspect", "--bogus", "x"}), "--bogus"); }

TEST(InspectCliTest, Help) {
  const RunResult r = RunStquant({"inspect", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, AllOf(HasSubstr("--json"), HasSubstr("path")));
}

}  // namespace
}  // namespace stquant
