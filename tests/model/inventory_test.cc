#include "model/inventory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "stquant/safetensors.h"
#include "util/file_test_util.h"

namespace stquant::model {
namespace {

namespace fs = std::filesystem;
using ::stquant::testing::IsOk;
using ::stquant::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using safetensors::TensorDecl;

const std::string kFixtures = std::string(STQUANT_SHARED_DIR) + "/fixtures/hf/";

// A scratch model directory with helpers to write its files.
class ModelDirTest : public ::testing::Test {
 protected:
  ~ModelDirTest() override {
    std::error_code ec;
    fs::remove_all(dir_.path(), ec);  // subdirectories too (ScratchDir removes only files)
  }

  std::string Path(const std::string& name) const { return dir_.File(name); }
  void WriteText(const std::string& name, const std::string& text) {
    fs::create_directories(fs::path(Path(name)).parent_path());
    ::stquant::testing::WriteBytes(Path(name), text);
  }
  // A valid safetensors file holding `tensors`, data all zero.
  void WriteShard(const std::string& name, std::vector<TensorDecl> tensors) {
    fs::create_directories(fs::path(Path(name)).parent_path());
    auto writer = safetensors::Writer::Create(Path(name), std::move(tensors));
    ASSERT_THAT(writer, IsOk());
    for (size_t i = 0; i < (*writer)->num_tensors(); ++i) {
      std::vector<uint8_t> zeros((*writer)->tensor(i).nbytes());
      ASSERT_THAT((*writer)->WriteTensorData(i, 0, zeros), IsOk());
    }
    ASSERT_THAT((*writer)->Commit(), IsOk());
  }
  void WriteConfig(const std::string& json = R"({"model_type": "llama"})") { WriteText("config.json", json); }

  Result<Inventory> Open() { return Inventory::Open(dir_.path()); }
  void ExpectInvalidInput(const std::string& what) {
    EXPECT_THAT(Open(), StatusIs(StatusCode::kInvalidInput, HasSubstr(what)));
  }

  ::stquant::testing::ScratchDir dir_;
};

TensorDecl Bf16(const std::string& name, std::vector<int64_t> shape = {4, 8}) {
  return {name, DType::kBF16, std::move(shape)};
}

// ---- The shared Hugging Face fixtures ----------------------------------------------------------

TEST(InventoryFixtureTest, ShardedQwen3MoeWithIndex) {
  auto inv = Inventory::Open(kFixtures + "tiny-qwen3-moe");
  ASSERT_THAT(inv, IsOk());
  EXPECT_TRUE(inv->is_directory());
  EXPECT_TRUE(inv->has_index());
  EXPECT_EQ(inv->tensors().size(), 69u);
  EXPECT_EQ(inv->names().size(), 69u);
  EXPECT_TRUE(std::is_sorted(inv->names().begin(), inv->names().end()));
  ASSERT_EQ(inv->shards().size(), 7u);
  EXPECT_EQ(inv->shards()[0].file_name, "model-00001-of-00007.safetensors");
  EXPECT_EQ(inv->config().at("model_type"), "qwen3_moe");
  const TensorRef* ref = inv->Find("model.layers.0.mlp.experts.0.down_proj.weight");
  ASSERT_NE(ref, nullptr);
  EXPECT_EQ(inv->shards()[ref->shard].file_name, "model-00002-of-00007.safetensors");
  EXPECT_EQ(ref->info->dtype, DType::kBF16);
  EXPECT_THAT(ref->info->shape, ElementsAre(256, 128));
  EXPECT_EQ(inv->Find("no.such.tensor"), nullptr);
  EXPECT_TRUE(inv->warnings().empty());
  const Classification c = Classify(*inv);
  EXPECT_EQ(c.kind, SourceKind::kFloat);
  EXPECT_EQ(c.detail, "BF16");
}

TEST(InventoryFixtureTest, SingleFileModels) {
  for (const auto& [name, count] : std::vector<std::pair<std::string, size_t>>{{"tiny-llama", 21}, {"tiny-qwen3", 24}}) {
    auto inv = Inventory::Open(kFixtures + name);
    ASSERT_THAT(inv, IsOk()) << name;
    EXPECT_FALSE(inv->has_index());
    ASSERT_EQ(inv->shards().size(), 1u);
    EXPECT_EQ(inv->shards()[0].file_name, "model.safetensors");
    EXPECT_EQ(inv->tensors().size(), count) << name;
    EXPECT_EQ(Classify(*inv).kind, SourceKind::kFloat);
  }
}

TEST(InventoryFixtureTest, BlockFp8) {
  auto inv = Inventory::Open(kFixtures + "tiny-qwen3-fp8");
  ASSERT_THAT(inv, IsOk());
  const Classification c = Classify(*inv);
  EXPECT_EQ(c.kind, SourceKind::kBlockFp8);
  EXPECT_EQ(SourceKindName(c.kind), "block-fp8");
  EXPECT_THAT(c.detail, AllOf(HasSubstr("14 of 14"), HasSubstr("[128,128]")));
}

TEST(InventoryFixtureTest, BundledExampleModel) {
  auto inv = Inventory::Open(std::string(STQUANT_SOURCE_DIR) + "/examples/tiny-model");
  ASSERT_THAT(inv, IsOk());
  EXPECT_EQ(inv->shards().size(), 2u);
  EXPECT_EQ(inv->tensors().size(), 35u);
  EXPECT_EQ(inv->config().at("model_type"), "qwen3_moe");
  EXPECT_NE(inv->Find("model.layers.1.mlp.experts.3.down_proj.weight"), nullptr);
  EXPECT_TRUE(inv->warnings().empty());
}

TEST(InventoryFixtureTest, OpenFileHasNoConfig) {
  auto inv = Inventory::OpenFile(kFixtures + "tiny-llama/model.safetensors");
  ASSERT_THAT(inv, IsOk());
  EXPECT_FALSE(inv->is_directory());
  EXPECT_TRUE(inv->config().is_object());
  EXPECT_TRUE(inv->config().empty());
  EXPECT_EQ(inv->tensors().size(), 21u);
}

// ---- Shard discovery -------------------------------------------------------------------------

TEST_F(ModelDirTest, ModelShardsWithoutIndex) {
  WriteConfig();
  WriteShard("model-00002-of-00002.safetensors", {Bf16("b")});
  WriteShard("model-00001-of-00002.safetensors", {Bf16("a")});
  WriteShard("other.safetensors", {Bf16("ignored")});  // model-* shards take precedence
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  ASSERT_EQ(inv->shards().size(), 2u);
  EXPECT_EQ(inv->shards()[0].file_name, "model-00001-of-00002.safetensors");
  EXPECT_THAT(inv->names(), ElementsAre("a", "b"));
}

TEST_F(ModelDirTest, AnySafetensorsFileWithoutModelPrefix) {
  WriteConfig();
  WriteShard("consolidated.safetensors", {Bf16("a"), Bf16("b")});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_THAT(inv->names(), ElementsAre("a", "b"));
}

TEST_F(ModelDirTest, IndexNamesOnlyItsShards) {
  WriteConfig();
  WriteShard("model-00001-of-00001.safetensors", {Bf16("a")});
  WriteShard("stray.safetensors", {Bf16("stray")});  // not indexed: not read
  WriteText("model.safetensors.index.json",
            R"({"metadata": {"total_size": 64}, "weight_map": {"a": "model-00001-of-00001.safetensors"}})");
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_THAT(inv->names(), ElementsAre("a"));
  EXPECT_TRUE(inv->warnings().empty());
}

TEST_F(ModelDirTest, HuggingFaceCacheSymlinks) {
  // snapshots/<rev>/x -> ../../blobs/<hash>, as huggingface_hub lays out its cache.
  WriteShard("blobs/1111", {Bf16("a")});
  WriteText("blobs/2222", R"({"model_type": "llama"})");
  fs::create_directories(Path("snapshots/rev"));
  fs::create_symlink("../../blobs/1111", Path("snapshots/rev/model.safetensors"));
  fs::create_symlink("../../blobs/2222", Path("snapshots/rev/config.json"));
  auto inv = Inventory::Open(Path("snapshots/rev"));
  ASSERT_THAT(inv, IsOk());
  EXPECT_THAT(inv->names(), ElementsAre("a"));
  EXPECT_EQ(inv->config().at("model_type"), "llama");
}

TEST_F(ModelDirTest, TotalSizeMismatchIsAWarning) {
  WriteConfig();
  WriteShard("model.safetensors", {Bf16("a")});
  WriteText("model.safetensors.index.json",
            R"({"metadata": {"total_size": 1}, "weight_map": {"a": "model.safetensors"}})");
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_THAT(inv->warnings(), ElementsAre(HasSubstr("total_size 1 differs from the 64 bytes")));
}

// ---- One test per error ------------------------------------------------------------------------

TEST_F(ModelDirTest, MissingPath) {
  EXPECT_THAT(Inventory::Open(Path("nope")), StatusIs(StatusCode::kInvalidArgument, HasSubstr("no such file")));
}

TEST_F(ModelDirTest, NotADirectory) {
  WriteText("file", "x");
  EXPECT_THAT(Inventory::Open(Path("file")), StatusIs(StatusCode::kInvalidArgument, HasSubstr("not a directory")));
}

TEST_F(ModelDirTest, MissingConfig) {
  WriteShard("model.safetensors", {Bf16("a")});
  ExpectInvalidInput("has no config.json");
}

TEST_F(ModelDirTest, ConfigNotJson) {
  WriteConfig("{\"model_type\": ");
  WriteShard("model.safetensors", {Bf16("a")});
  EXPECT_THAT(Open(), StatusIs(StatusCode::kInvalidInput,
                               AllOf(HasSubstr(Path("config.json")), HasSubstr("invalid JSON"))));
}

TEST_F(ModelDirTest, ConfigNotAnObject) {
  WriteConfig("[1, 2]");
  WriteShard("model.safetensors", {Bf16("a")});
  ExpectInvalidInput("config.json': expected a JSON object, got array");
}

TEST_F(ModelDirTest, IndexNotJson) {
  WriteConfig();
  WriteShard("model.safetensors", {Bf16("a")});
  WriteText("model.safetensors.index.json", "nope");
  ExpectInvalidInput("model.safetensors.index.json': invalid JSON");
}

TEST_F(ModelDirTest, IndexWithoutWeightMap) {
  WriteConfig();
  WriteShard("model.safetensors", {Bf16("a")});
  WriteText("model.safetensors.index.json", R"({"metadata": {}})");
  ExpectInvalidInput("missing \"weight_map\" object");
}

TEST_F(ModelDirTest, IndexEntryNotAString) {
  WriteConfig();
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": 3}})");
  ExpectInvalidInput("weight_map entry 'a' is not a string");
}

TEST_F(ModelDirTest, IndexShardWithDirectory) {
  WriteConfig();
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": "../model.safetensors"}})");
  ExpectInvalidInput("shard '../model.safetensors' must be a bare file name");
}

TEST_F(ModelDirTest, IndexShardAbsolute) {
  WriteConfig();
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": "/etc/model.safetensors"}})");
  ExpectInvalidInput("shard '/etc/model.safetensors' must be a bare file name");
}

TEST_F(ModelDirTest, IndexShardDotDot) {
  WriteConfig();
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": ".."}})");
  ExpectInvalidInput("shard '..' must be a bare file name");
}

TEST_F(ModelDirTest, IndexShardNotSafetensors) {
  WriteConfig();
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": "pytorch_model.bin"}})");
  ExpectInvalidInput("shard 'pytorch_model.bin' is not a .safetensors file");
}

TEST_F(ModelDirTest, IndexShardWithoutStem) {  // found by model_index_fuzz
  WriteConfig();
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": ".safetensors"}})");
  ExpectInvalidInput("shard '.safetensors' is not a .safetensors file");
}

TEST_F(ModelDirTest, IndexEmpty) {
  WriteConfig();
  WriteText("model.safetensors.index.json", R"({"weight_map": {}})");
  ExpectInvalidInput("weight_map is empty");
}

TEST_F(ModelDirTest, IndexedShardMissing) {
  WriteConfig();
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": "model-00001-of-00001.safetensors"}})");
  // A missing shard is an incomplete model (exit 2), not a failure of the OS (exit 3).
  EXPECT_THAT(Open(), StatusIs(StatusCode::kInvalidInput,
                               AllOf(HasSubstr("names shard 'model-00001-of-00001.safetensors', which does not exist"),
                                     HasSubstr("model.safetensors.index.json"))));
}

TEST_F(ModelDirTest, IndexedShardDanglingSymlink) {
  WriteConfig();
  fs::create_symlink("../../blobs/missing", Path("model.safetensors"));
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": "model.safetensors"}})");
  ExpectInvalidInput("model.safetensors': dangling symbolic link (its target '../../blobs/missing' does not exist)");
}

TEST_F(ModelDirTest, HostileNamesInIndexAreEscaped) {
  WriteConfig();
  WriteShard("model.safetensors", {Bf16("a")});
  WriteText("model.safetensors.index.json",
            "{\"weight_map\": {\"a\": \"model.safetensors\", \"b\\n\\u001b[2J\": \"model.safetensors\"}}");
  EXPECT_THAT(Open(), StatusIs(StatusCode::kInvalidInput, HasSubstr("tensor 'b\\x0a\\x1b[2J' is indexed")));
}

TEST(ParseIndexTextTest, AcceptsBareShardNamesOnly) {
  auto parsed = ParseIndexText(R"({"weight_map": {"a": "x.safetensors"}, "metadata": {"total_size": 8}})", "i.json");
  ASSERT_THAT(parsed, IsOk());
  EXPECT_EQ(parsed->weight_map.at("a"), "x.safetensors");
  EXPECT_EQ(parsed->total_size, 8u);
  for (const char* shard : {"../x.safetensors", "/x.safetensors", "d/x.safetensors", "..", "x.bin"}) {
    SCOPED_TRACE(shard);
    EXPECT_THAT(ParseIndexText(std::string(R"({"weight_map": {"a": ")") + shard + "\"}}", "i.json"),
                StatusIs(StatusCode::kInvalidInput, HasSubstr("'i.json': weight_map entry 'a': shard")));
  }
  EXPECT_THAT(ParseIndexText("{\"a\": ", "i.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(ParseJsonObjectText("[1]", "c.json", util::kJsonConfigLimit),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("expected a JSON object, got array")));
}

TEST_F(ModelDirTest, IndexedTensorNotInShard) {
  WriteConfig();
  WriteShard("model.safetensors", {Bf16("a")});
  WriteText("model.safetensors.index.json",
            R"({"weight_map": {"a": "model.safetensors", "b": "model.safetensors"}})");
  ExpectInvalidInput("tensor 'b' is indexed in 'model.safetensors' by");
}

TEST_F(ModelDirTest, IndexedTensorInOtherShard) {
  WriteConfig();
  WriteShard("model-00001-of-00002.safetensors", {Bf16("a")});
  WriteShard("model-00002-of-00002.safetensors", {Bf16("b")});
  WriteText("model.safetensors.index.json",
            R"({"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  // Only the indexed shard is opened, so "a" is simply not there.
  ExpectInvalidInput("tensor 'a' is indexed in 'model-00002-of-00002.safetensors'");
}

TEST_F(ModelDirTest, IndexPointsTensorToWrongShard) {
  WriteConfig();
  WriteShard("model-00001-of-00002.safetensors", {Bf16("a")});
  WriteShard("model-00002-of-00002.safetensors", {Bf16("b")});
  WriteText("model.safetensors.index.json",
            R"({"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}})");
  ExpectInvalidInput(
      "tensor 'a' is indexed in 'model-00002-of-00002.safetensors' by '" + Path("model.safetensors.index.json") +
      "' but found in 'model-00001-of-00002.safetensors'");
}

TEST_F(ModelDirTest, TensorMissingFromIndex) {
  WriteConfig();
  WriteShard("model.safetensors", {Bf16("a"), Bf16("extra")});
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": "model.safetensors"}})");
  ExpectInvalidInput("tensor 'extra' of '" + Path("model.safetensors") + "' is missing from");
}

TEST_F(ModelDirTest, TensorInTwoShards) {
  WriteConfig();
  WriteShard("model-00001-of-00002.safetensors", {Bf16("a")});
  WriteShard("model-00002-of-00002.safetensors", {Bf16("a")});
  ExpectInvalidInput("duplicate tensor 'a': found in both '" + Path("model-00001-of-00002.safetensors") + "' and '" +
                     Path("model-00002-of-00002.safetensors") + "'");
}

TEST_F(ModelDirTest, SingleAndShardedIsAmbiguous) {
  WriteConfig();
  WriteShard("model.safetensors", {Bf16("a")});
  WriteShard("model-00001-of-00001.safetensors", {Bf16("b")});
  ExpectInvalidInput("found both model.safetensors and sharded model-00001-of-00001.safetensors");
}

TEST_F(ModelDirTest, NoSafetensorsFiles) {
  WriteConfig();
  WriteText("pytorch_model.bin", "x");
  ExpectInvalidInput("no *.safetensors files in");
}

TEST_F(ModelDirTest, NoTensors) {
  WriteConfig();
  WriteShard("model.safetensors", {});
  ExpectInvalidInput("no tensors in the safetensors files of");
}

TEST_F(ModelDirTest, CorruptShard) {
  WriteConfig();
  WriteText("model.safetensors", std::string("\x04\x00\x00\x00\x00\x00\x00\x00{}", 10));
  EXPECT_THAT(Open(), StatusIs(StatusCode::kInvalidInput, HasSubstr(Path("model.safetensors"))));
}

// ---- Classification ----------------------------------------------------------------------------

TEST_F(ModelDirTest, ClassifiesMlxAffineFromConfigWithOverride) {
  WriteConfig(R"({"quantization": {"group_size": 64, "bits": 4, "mode": "affine",
                                    "l1": {"group_size": 64, "bits": 8}}})");
  WriteShard("model.safetensors",
             {{"l0.weight", DType::kU32, {8, 16}}, Bf16("l0.scales", {8, 2}), Bf16("l0.biases", {8, 2}),
              {"l1.weight", DType::kU32, {8, 32}}, Bf16("l1.scales", {8, 2}), Bf16("l1.biases", {8, 2}),
              Bf16("norm.weight", {8})});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  const Classification c = Classify(*inv);
  EXPECT_EQ(c.kind, SourceKind::kMlx);
  EXPECT_THAT(c.detail, AllOf(HasSubstr("affine, bits 4, group size 64"), HasSubstr("2 quantized layers")));
  auto q = FindMlxQuantized(*inv);
  ASSERT_THAT(q, IsOk());
  ASSERT_EQ(q->size(), 2u);
  EXPECT_EQ((*q)[0].base, "l0");
  EXPECT_EQ((*q)[0].params.bits, 4);
  EXPECT_EQ((*q)[0].params.group_size, 64);
  EXPECT_TRUE((*q)[0].params.from_config);
  EXPECT_TRUE((*q)[0].has_biases);
  EXPECT_EQ((*q)[1].params.bits, 8);
}

TEST_F(ModelDirTest, MlxOverrideWithoutModeIsAffine) {
  // What mlx-lm writes for an mxfp4 MoE: the router keeps 8-bit affine, without a "mode" key.
  WriteConfig(R"({"quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4",
                                    "router": {"group_size": 64, "bits": 8}}})");
  WriteShard("model.safetensors", {{"expert.weight", DType::kU32, {8, 16}},
                                   {"expert.scales", DType::kU8, {8, 4}},
                                   {"router.weight", DType::kU32, {4, 32}},
                                   Bf16("router.scales", {4, 2}),
                                   Bf16("router.biases", {4, 2})});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  auto q = FindMlxQuantized(*inv);
  ASSERT_THAT(q, IsOk());
  ASSERT_EQ(q->size(), 2u);
  EXPECT_EQ((*q)[0].params.mode, "mxfp4");
  EXPECT_EQ((*q)[1].base, "router");
  EXPECT_EQ((*q)[1].params.mode, "affine");
  EXPECT_EQ((*q)[1].params.bits, 8);
  EXPECT_EQ((*q)[1].params.group_size, 64);
}

TEST_F(ModelDirTest, InfersMlxParamsFromShapes) {
  WriteConfig();
  WriteShard("model.safetensors",
             {{"a.weight", DType::kU32, {8, 16}}, Bf16("a.scales", {8, 2}), Bf16("a.biases", {8, 2}),
              {"f.weight", DType::kU32, {8, 16}}, {"f.scales", DType::kU8, {8, 4}},
              {"n.weight", DType::kU32, {8, 16}}, {"n.scales", DType::kU8, {8, 8}},
              {"x.weight", DType::kU32, {8, 32}}, {"x.scales", DType::kU8, {8, 4}}});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_EQ(Classify(*inv).kind, SourceKind::kMlx);
  auto q = FindMlxQuantized(*inv);
  ASSERT_THAT(q, IsOk());
  ASSERT_EQ(q->size(), 4u);
  auto params = [&](size_t i) {
    const MlxQuantParams& p = (*q)[i].params;
    return p.mode + "/" + std::to_string(p.bits) + "/" + std::to_string(p.group_size) + (p.from_config ? "/c" : "/i");
  };
  EXPECT_EQ(params(0), "affine/4/64/i");  // 16 / 2 = 8 = 4 * 64 / 32: the default group size wins
  EXPECT_EQ(params(1), "mxfp4/4/32/i");
  EXPECT_EQ(params(2), "nvfp4/4/16/i");
  EXPECT_EQ(params(3), "mxfp8/8/32/i");
}

TEST_F(ModelDirTest, MlxShapesContradictingConfig) {
  WriteConfig(R"({"quantization": {"group_size": 64, "bits": 4}})");
  WriteShard("model.safetensors",
             {{"a.weight", DType::kU32, {8, 24}}, Bf16("a.scales", {8, 2}), Bf16("a.biases", {8, 2})});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_THAT(FindMlxQuantized(*inv),
              StatusIs(StatusCode::kInvalidInput,
                       AllOf(HasSubstr("'a'"), HasSubstr("24 packed U32 columns"), HasSubstr("contradict config"))));
}

TEST_F(ModelDirTest, MlxShapesFitNoMode) {
  WriteConfig();
  WriteShard("model.safetensors", {{"a.weight", DType::kU32, {8, 7}}, {"a.scales", DType::kU8, {8, 7}}});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_THAT(FindMlxQuantized(*inv), StatusIs(StatusCode::kInvalidInput, HasSubstr("fit no MLX mode")));
}

TEST_F(ModelDirTest, MlxAffineWithoutBiases) {
  WriteConfig(R"({"quantization": {"group_size": 64, "bits": 4, "mode": "affine"}})");
  WriteShard("model.safetensors", {{"a.weight", DType::kU32, {8, 16}}, Bf16("a.scales", {8, 2})});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_THAT(FindMlxQuantized(*inv), StatusIs(StatusCode::kInvalidInput, HasSubstr("needs .biases")));
}

TEST_F(ModelDirTest, MlxConfigOutOfRange) {
  WriteConfig(R"({"quantization": {"group_size": 64, "bits": 4, "a": {"bits": 4000000000000}}})");
  WriteShard("model.safetensors",
             {{"a.weight", DType::kU32, {8, 16}}, Bf16("a.scales", {8, 2}), Bf16("a.biases", {8, 2})});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_THAT(FindMlxQuantized(*inv), StatusIs(StatusCode::kInvalidInput, HasSubstr("bits 4000000000000")));
}

TEST_F(ModelDirTest, ClassifiesModelOptNvfp4ByTensors) {
  WriteConfig();
  WriteShard("model.safetensors", {{"l.weight", DType::kU8, {16, 8}},
                                   {"l.weight_scale", DType::kF8E4M3, {16, 1}},
                                   {"l.weight_scale_2", DType::kF32, {}},
                                   Bf16("norm.weight", {16})});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_EQ(Classify(*inv).kind, SourceKind::kModelOptNvfp4);
}

TEST_F(ModelDirTest, ClassifiesModelOptNvfp4ByHfQuantConfig) {
  WriteConfig();
  WriteText("hf_quant_config.json", R"({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4"}})");
  WriteShard("model.safetensors", {Bf16("l.weight")});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  ASSERT_TRUE(inv->hf_quant_config().has_value());
  EXPECT_EQ(Classify(*inv).kind, SourceKind::kModelOptNvfp4);
}

TEST_F(ModelDirTest, ClassifiesCompressedTensors) {
  WriteConfig(R"({"quantization_config": {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}})");
  WriteShard("model.safetensors", {{"l.weight_packed", DType::kU8, {16, 8}}, Bf16("norm.weight", {16})});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  const Classification c = Classify(*inv);
  EXPECT_EQ(c.kind, SourceKind::kCompressedTensors);
  EXPECT_THAT(c.detail, HasSubstr("format nvfp4-pack-quantized"));
}

TEST_F(ModelDirTest, ClassifiesGptOssMxfp4) {
  WriteConfig(R"({"quantization_config": {"quant_method": "mxfp4"}})");
  WriteShard("model.safetensors", {{"model.layers.0.mlp.experts.gate_up_proj_blocks", DType::kU8, {4, 8, 2, 16}},
                                   {"model.layers.0.mlp.experts.gate_up_proj_scales", DType::kU8, {4, 8, 2}},
                                   Bf16("model.norm.weight", {16})});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  EXPECT_EQ(Classify(*inv).kind, SourceKind::kGptOssMxfp4);
}

TEST_F(ModelDirTest, ClassifiesBlockFp8WithWeightScale) {
  WriteConfig();
  WriteShard("model.safetensors",
             {{"l.weight", DType::kF8E4M3, {128, 128}}, {"l.weight_scale", DType::kF32, {1, 1}}, Bf16("n.weight")});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  const Classification c = Classify(*inv);
  EXPECT_EQ(c.kind, SourceKind::kBlockFp8);
  EXPECT_THAT(c.detail, HasSubstr("1 of 1"));
}

TEST_F(ModelDirTest, FloatDetailListsWeightDTypes) {
  WriteConfig();
  WriteShard("model.safetensors", {Bf16("a.weight"), {"b.weight", DType::kF32, {2}}, {"c.bias", DType::kF16, {2}}});
  auto inv = Open();
  ASSERT_THAT(inv, IsOk());
  const Classification c = Classify(*inv);
  EXPECT_EQ(c.kind, SourceKind::kFloat);
  EXPECT_EQ(c.detail, "BF16, F32");
}

}  // namespace
}  // namespace stquant::model
