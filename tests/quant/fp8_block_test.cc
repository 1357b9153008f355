// Block-scaled FP8 decode against MLX's own decode in ../shared/golden/fp8_e4m3.safetensors.
#include <algorithm>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "golden_util.h"
#include "stquant/fp8_block.h"

namespace stquant::testing {
namespace {

// Decodes one expert's block [first, first + count) x [col, col + width), with the scale window
// cut out of the expert's whole scale matrix as the converter reads it.
int64_t DecodeBlock(const GoldenTensor& weight, const GoldenTensor& scale, int64_t expert, int64_t first, int64_t count,
                    int64_t col, int64_t width, std::vector<uint16_t>& out) {
  const int64_t rows = weight.shape[weight.shape.size() - 2], cols = weight.shape.back();
  const int64_t scale_rows = scale.shape[scale.shape.size() - 2], scale_cols = scale.shape.back();
  const int64_t scale_bytes = DTypeBits(scale.dtype) / 8;
  const Fp8ScaleWindow window = ScaleWindow(first, count, col, width);
  std::vector<uint8_t> scales;
  for (int64_t r = 0; r < window.rows; ++r) {
    const auto* at = scale.bytes.data() + ((expert * scale_rows + window.first_row + r) * scale_cols + window.first_col) * scale_bytes;
    scales.insert(scales.end(), at, at + window.cols * scale_bytes);
  }
  std::vector<uint8_t> codes;
  std::vector<uint16_t> decoded(count * width);
  for (int64_t r = 0; r < count; ++r) {
    const auto* at = weight.bytes.data() + (expert * rows + first + r) * cols + col;
    codes.insert(codes.end(), at, at + width);
  }
  const int64_t result = DecodeBlockFp8Rows(QuantProfile::kMlxCpu0322, codes.data(), first, count, col, width,
                                            scales.data(), scale.dtype, decoded.data());
  for (int64_t r = 0; r < count; ++r) {
    std::copy_n(decoded.data() + r * width, width, out.data() + (expert * rows + first + r) * cols + col);
  }
  return result;
}

// Decodes in uneven row blocks (whole rows), then row by row in uneven column parts, as the
// streaming converter does for rows larger than its block.
void CheckBlockCase(const std::map<std::string, GoldenTensor>& t, const std::string& name) {
  const GoldenTensor& weight = t.at(name + ".weight");
  const GoldenTensor& scale = t.at(name + ".weight.scale_inv");
  const GoldenTensor& expected = t.at(name + ".decoded_bf16");
  ASSERT_EQ(weight.dtype, DType::kF8E4M3);
  const int64_t rows = weight.shape[weight.shape.size() - 2], cols = weight.shape.back();
  const int64_t experts = weight.shape.size() == 3 ? weight.shape[0] : 1;
  ASSERT_GT(cols, 128);  // parts of 100 columns cross a scale block
  for (const bool by_columns : {false, true}) {
    std::vector<uint16_t> out(experts * rows * cols);
    for (int64_t e = 0; e < experts; ++e) {
      for (int64_t first = 0; first < rows; first += by_columns ? 1 : 77) {
        const int64_t count = by_columns ? 1 : std::min<int64_t>(77, rows - first);
        const int64_t part = by_columns ? 100 : cols;
        for (int64_t col = 0; col < cols; col += part) {
          EXPECT_EQ(-1, DecodeBlock(weight, scale, e, first, count, col, std::min(part, cols - col), out));
        }
      }
    }
    ASSERT_EQ(out.size() * 2, expected.bytes.size());
    EXPECT_EQ(0, std::memcmp(out.data(), expected.bytes.data(), expected.bytes.size())) << "by columns: " << by_columns;
  }
}

TEST(Fp8BlockDecode, MatchesMlxDecodeIn2D) { CheckBlockCase(LoadGolden("fp8_e4m3.safetensors"), "block2d"); }
TEST(Fp8BlockDecode, MatchesMlxDecodeIn3DPerExpert) { CheckBlockCase(LoadGolden("fp8_e4m3.safetensors"), "block3d"); }

TEST(Fp8BlockDecode, NanCodesAreRefusedUnderTheCurrentProfile) {
  const uint8_t codes[4] = {0x38, 0x7F, 0xFF, 0x00};
  const float scale = 2.0f;
  uint16_t out[4];
  EXPECT_EQ(1, DecodeBlockFp8Rows(QuantProfile::kMlxCpu, codes, 0, 1, 0, 4, &scale, DType::kF32, out));
  EXPECT_EQ(-1, DecodeBlockFp8Rows(QuantProfile::kMlxCpu0322, codes, 0, 1, 0, 4, &scale, DType::kF32, out));
  EXPECT_EQ(out[1], 0x4470);  // 480 * 2 = 960 in bf16
  EXPECT_EQ(out[2], 0xC470);
}

}  // namespace
}  // namespace stquant::testing
