// Block-scaled FP8 decode against MLX's own decode in ../shared/golden/fp8_e4m3.safetensors.
#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "golden_util.h"
#include "numeric/bf16.h"
#include "numeric/f16.h"
#include "numeric/fp8.h"
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
  const Fp8ScaleWindow window = ScaleWindow(Fp8Block{}, first, count, col, width);
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
  const int64_t result = DecodeBlockFp8Rows(QuantProfile::kMlxCpu0322, Fp8Block{}, codes.data(), first, count, col,
                                            width, scales.data(), scale.dtype, DType::kBF16, decoded.data());
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
  EXPECT_EQ(1, DecodeBlockFp8Rows(QuantProfile::kMlxCpu, Fp8Block{}, codes, 0, 1, 0, 4, &scale, DType::kF32,
                                  DType::kBF16, out));
  EXPECT_EQ(-1, DecodeBlockFp8Rows(QuantProfile::kMlxCpu0322, Fp8Block{}, codes, 0, 1, 0, 4, &scale, DType::kF32,
                                   DType::kBF16, out));
  EXPECT_EQ(out[1], 0x4470);  // 480 * 2 = 960 in bf16
  EXPECT_EQ(out[2], 0xC470);
}

// Per-channel ([R, 1] scales: a block of one row) and per-tensor (one scale) layouts of
// compressed-tensors float-quantized, into every output dtype: decoded in uneven parts (with the
// scale window cut out as the converter does) equals the plain definition, element by element.
TEST(Fp8BlockDecode, ChannelAndTensorScalesInPartsMatchTheDefinition) {
  constexpr int64_t kRows = 37, kCols = 300;
  std::mt19937 rng(7);
  std::vector<uint8_t> codes(kRows * kCols);
  for (uint8_t& c : codes) {
    do c = static_cast<uint8_t>(rng()); while ((c & 0x7F) == 0x7F);
  }
  std::vector<uint16_t> bf16_scales(kRows);
  for (uint16_t& s : bf16_scales) s = numeric::BF16FromFloat(std::ldexp(1.0f + (rng() % 255) / 256.0f, -int(rng() % 12)));
  const std::array<float, 256>& e4m3 = numeric::E4M3Table();
  struct Layout {
    Fp8Block block;
    int64_t scale_cols;
  };
  for (const Layout& layout : {Layout{{1, kCols}, 1}, Layout{{kRows, kCols}, 1}, Layout{{1, 64}, 5}}) {
    const int64_t scale_rows = (kRows + layout.block.rows - 1) / layout.block.rows;
    std::vector<uint16_t> scales(scale_rows * layout.scale_cols);
    for (size_t i = 0; i < scales.size(); ++i) scales[i] = bf16_scales[i % kRows];
    for (const DType out_dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
      const int bytes = DTypeBits(out_dtype) / 8;
      std::vector<uint8_t> out(kRows * kCols * bytes), part;
      for (int64_t first = 0; first < kRows; first += 5) {
        const int64_t count = std::min<int64_t>(5, kRows - first);
        for (int64_t col = 0; col < kCols; col += 70) {
          const int64_t width = std::min<int64_t>(70, kCols - col);
          const Fp8ScaleWindow w = ScaleWindow(layout.block, first, count, col, width);
          std::vector<uint16_t> window, block_codes;
          for (int64_t r = 0; r < w.rows; ++r) {
            for (int64_t c = 0; c < w.cols; ++c) window.push_back(scales[(w.first_row + r) * layout.scale_cols + w.first_col + c]);
          }
          std::vector<uint8_t> cut;
          for (int64_t r = 0; r < count; ++r) cut.insert(cut.end(), &codes[(first + r) * kCols + col], &codes[(first + r) * kCols + col] + width);
          part.assign(count * width * bytes, 0);
          ASSERT_EQ(-1, DecodeBlockFp8Rows(QuantProfile::kMlxCpu, layout.block, cut.data(), first, count, col, width,
                                           window.data(), DType::kBF16, out_dtype, part.data()));
          for (int64_t r = 0; r < count; ++r) {
            std::memcpy(&out[((first + r) * kCols + col) * bytes], &part[r * width * bytes], width * bytes);
          }
        }
      }
      for (int64_t r = 0; r < kRows; ++r) {
        for (int64_t c = 0; c < kCols; ++c) {
          const float scale = numeric::BF16ToFloat(scales[(r / layout.block.rows) * layout.scale_cols + c / layout.block.cols]);
          const float product = e4m3[codes[r * kCols + c]] * scale;
          const size_t at = (r * kCols + c) * bytes;
          if (out_dtype == DType::kF32) {
            float got;
            std::memcpy(&got, &out[at], 4);
            ASSERT_EQ(got, product);
          } else {
            uint16_t got;
            std::memcpy(&got, &out[at], 2);
            ASSERT_EQ(got, out_dtype == DType::kBF16 ? numeric::BF16FromFloat(product) : numeric::F16FromFloat(product));
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace stquant::testing
