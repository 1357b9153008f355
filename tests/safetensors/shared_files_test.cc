// Every real safetensors file in ../shared (Hugging Face fixtures, MLX golden vectors) opens
// cleanly, and survives a copy through our Writer byte for byte.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "safetensors/st_test_util.h"

namespace stquant::safetensors {
namespace {

namespace fs = std::filesystem;
using testing::IsOk;

const fs::path kShared = STQUANT_SHARED_DIR;

// Sorted *.safetensors paths under ../shared/fixtures/hf/*/ and ../shared/golden/.
std::vector<std::string> SharedFiles() {
  std::vector<std::string> files;
  auto add_dir = [&files](const fs::path& dir) {
    if (!fs::is_directory(dir)) return;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_regular_file() && entry.path().extension() == ".safetensors") files.push_back(entry.path());
    }
  };
  if (fs::is_directory(kShared / "fixtures" / "hf")) {
    for (const auto& model : fs::directory_iterator(kShared / "fixtures" / "hf")) add_dir(model.path());
  }
  add_dir(kShared / "golden");
  std::sort(files.begin(), files.end());
  return files;
}

TEST(SharedFilesTest, FindsTheFiles) {
  // 4 HF fixtures (one with 7 shards) and 8 golden files.
  EXPECT_EQ(SharedFiles().size(), 3u + 7u + 8u);
}

TEST(SharedFilesTest, EveryFileOpensCleanlyAndEveryTensorIsReadable) {
  for (const std::string& path : SharedFiles()) {
    SCOPED_TRACE(path);
    auto reader = Reader::Open(path);
    ASSERT_THAT(reader, IsOk());
    EXPECT_TRUE((*reader)->warnings().empty());
    EXPECT_TRUE((*reader)->metadata().has_value());
    ASSERT_FALSE((*reader)->tensors().empty());
    // Written contiguously in offset order, ending exactly at the end of the file.
    uint64_t expected_begin = 0;
    for (const TensorInfo& t : (*reader)->tensors()) {
      EXPECT_EQ(t.begin, expected_begin) << t.name;
      expected_begin = t.end;
      auto view = (*reader)->View(t);
      ASSERT_THAT(view, IsOk());
      EXPECT_EQ(view->size(), t.nbytes());
    }
    EXPECT_EQ((*reader)->data_offset() + expected_begin, (*reader)->file_size());
  }
}

TEST(SharedFilesTest, GoldenTensorCountsMatchTheReadme) {
  const std::vector<std::pair<std::string, size_t>> expected = {
      {"bf16_affine", 245}, {"bf16_fp", 66}, {"bf16_large", 13}, {"f16_affine", 227},
      {"f16_fp", 79},       {"f32_affine", 227}, {"f32_fp", 79}, {"fp8_e4m3", 16}};
  for (const auto& [name, count] : expected) {
    auto reader = Reader::Open(kShared / "golden" / (name + ".safetensors"));
    ASSERT_THAT(reader, IsOk()) << name;
    EXPECT_EQ((*reader)->tensors().size(), count) << name;
  }
  auto fp8 = Reader::Open(kShared / "golden" / "fp8_e4m3.safetensors");
  ASSERT_THAT(fp8, IsOk());
  const TensorInfo* block = (*fp8)->Find("block2d.weight");
  ASSERT_NE(block, nullptr);
  EXPECT_EQ(block->dtype, DType::kF8E4M3);
}

TEST(SharedFilesTest, MoeShardsMatchTheIndex) {
  const fs::path dir = kShared / "fixtures" / "hf" / "tiny-qwen3-moe";
  std::ifstream index_file(dir / "model.safetensors.index.json");
  const nlohmann::json index = nlohmann::json::parse(index_file);
  std::set<std::string> shards;
  size_t tensors = 0;
  for (const auto& [name, shard] : index.at("weight_map").items()) {
    shards.insert(shard.get<std::string>());
    auto reader = Reader::Open(dir / shard.get<std::string>());
    ASSERT_THAT(reader, IsOk()) << shard;
    EXPECT_NE((*reader)->Find(name), nullptr) << name << " not in " << shard;
  }
  for (const std::string& shard : shards) {
    auto reader = Reader::Open(dir / shard);
    ASSERT_THAT(reader, IsOk());
    tensors += (*reader)->tensors().size();
  }
  EXPECT_EQ(shards.size(), 7u);
  EXPECT_EQ(tensors, 69u);
  EXPECT_EQ(index.at("weight_map").size(), 69u);
}

TEST(SharedFilesTest, CopyThroughWriterKeepsEveryTensor) {
  ::stquant::testing::ScratchDir dir;
  for (const std::string& path : SharedFiles()) {
    SCOPED_TRACE(path);
    auto in = Reader::Open(path);
    ASSERT_THAT(in, IsOk());
    std::vector<TensorDecl> decls;
    for (const TensorInfo& t : (*in)->tensors()) decls.push_back({t.name, t.dtype, t.shape});
    const std::string out_path = dir.File("copy.safetensors");
    auto writer = Writer::Create(out_path, decls, (*in)->metadata());
    ASSERT_THAT(writer, IsOk());
    for (size_t i = 0; i < decls.size(); ++i) {
      auto view = (*in)->View((*in)->tensors()[i]);
      ASSERT_THAT(view, IsOk());
      ASSERT_THAT((*writer)->WriteTensorData(i, 0, *view), IsOk());
    }
    ASSERT_THAT((*writer)->Commit(), IsOk());
    auto out = Reader::Open(out_path);
    ASSERT_THAT(out, IsOk());
    EXPECT_EQ((*out)->metadata(), (*in)->metadata());
    ASSERT_EQ((*out)->tensors().size(), (*in)->tensors().size());
    for (const TensorInfo& t : (*in)->tensors()) {
      const TensorInfo* copy = (*out)->Find(t.name);
      ASSERT_NE(copy, nullptr) << t.name;
      EXPECT_EQ(copy->dtype, t.dtype);
      EXPECT_EQ(copy->shape, t.shape);
      auto a = (*in)->View(t);
      auto b = (*out)->View(*copy);
      ASSERT_THAT(a, IsOk());
      ASSERT_THAT(b, IsOk());
      EXPECT_TRUE(std::equal(a->begin(), a->end(), b->begin(), b->end())) << t.name;
    }
  }
}

}  // namespace
}  // namespace stquant::safetensors
