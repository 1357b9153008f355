// Block-scaled FP8 decode against MLX's own decode in ../shared/golden/fp8_e4m3.safetensors.
#include <cstring>

#include <gtest/gtest.h>

#include "golden_util.h"
#include "stquant/fp8_block.h"

namespace stquant::testing {
namespace {

void CheckBlockCase(const std::map<std::string, GoldenTensor>& t, const std::string& name) {
  const GoldenTensor& weight = t.at(name + ".weight");
  const GoldenTensor& scale = t.at(name + ".weight.scale_inv");
  const GoldenTensor& expected = t.at(name + ".decoded_bf16");
  ASSERT_EQ(weight.dtype, DType::kF8E4M3);
  const int64_t rows = weight.shape[weight.shape.size() - 2], cols = weight.shape.back();
  const int64_t experts = weight.shape.size() == 3 ? weight.shape[0] : 1;
  const int64_t scale_bytes_per_expert = static_cast<int64_t>(scale.bytes.size()) / experts;
  std::vector<uint16_t> out(experts * rows * cols);
  for (int64_t e = 0; e < experts; ++e) {
    // Decode in uneven row blocks, as the streaming converter does.
    for (int64_t first = 0; first < rows; first += 77) {
      const int64_t count = std::min<int64_t>(77, rows - first);
      const int64_t offset = (e * rows + first) * cols;
      EXPECT_EQ(-1, DecodeBlockFp8Rows(QuantProfile::kMlxCpu0322, weight.bytes.data() + offset, first, count, cols,
                                       scale.bytes.data() + e * scale_bytes_per_expert, scale.dtype, out.data() + offset));
    }
  }
  ASSERT_EQ(out.size() * 2, expected.bytes.size());
  EXPECT_EQ(0, std::memcmp(out.data(), expected.bytes.data(), expected.bytes.size()));
}

TEST(Fp8BlockDecode, MatchesMlxDecodeIn2D) { CheckBlockCase(LoadGolden("fp8_e4m3.safetensors"), "block2d"); }
TEST(Fp8BlockDecode, MatchesMlxDecodeIn3DPerExpert) { CheckBlockCase(LoadGolden("fp8_e4m3.safetensors"), "block3d"); }

TEST(Fp8BlockDecode, NanCodesAreRefusedUnderTheCurrentProfile) {
  const uint8_t codes[4] = {0x38, 0x7F, 0xFF, 0x00};
  const float scale = 2.0f;
  uint16_t out[4];
  EXPECT_EQ(1, DecodeBlockFp8Rows(QuantProfile::kMlxCpu, codes, 0, 1, 4, &scale, DType::kF32, out));
  EXPECT_EQ(-1, DecodeBlockFp8Rows(QuantProfile::kMlxCpu0322, codes, 0, 1, 4, &scale, DType::kF32, out));
  EXPECT_EQ(out[1], 0x4470);  // 480 * 2 = 960 in bf16
  EXPECT_EQ(out[2], 0xC470);
}

}  // namespace
}  // namespace stquant::testing
