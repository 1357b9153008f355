// Round-trip properties MLX's own tests pin (python/tests/test_quantized.py): affine dequantized
// values lie within |scale| of the input, per group; fp modes reproduce exactly the values their
// element format and scale can represent.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "numeric/bf16.h"
#include "numeric/fp4.h"
#include "numeric/fp8.h"
#include "stquant/quantize.h"

namespace stquant {
namespace {

std::vector<float> Quantized(const QuantSpec& spec, const std::vector<float>& w, int64_t rows, int64_t cols,
                             std::vector<float>* scales_out) {
  std::vector<uint32_t> packed(rows * PackedWordsPerRow(spec, cols));
  const int64_t groups = rows * GroupsPerRow(spec, cols);
  std::vector<uint8_t> scales(groups * 4), biases(groups * 4);
  const float global = spec.global_scale ? AbsMax(DType::kF32, w.data(), rows * cols) : 0.0f;
  EXPECT_TRUE(QuantizeRows(spec, DType::kF32, w.data(), rows, cols, global, {packed.data(), scales.data(), biases.data()}).ok());
  std::vector<float> out(rows * cols);
  EXPECT_TRUE(DequantizeRows(spec, DType::kF32, {packed.data(), scales.data(), biases.data()}, rows, cols, global,
                             DType::kF32, out.data())
                  .ok());
  if (scales_out) {
    scales_out->resize(groups);
    std::memcpy(scales_out->data(), scales.data(), groups * 4);
  }
  return out;
}

TEST(RoundTrip, AffineErrorIsWithinOneScalePerGroup) {
  std::mt19937_64 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 16, cols = 256;
  std::vector<float> w(rows * cols);
  for (float& x : w) x = normal(rng) * ((rng() % 40 == 0) ? 20.0f : 0.5f);
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int gs : {32, 64, 128}) {
      const QuantSpec spec{QuantMode::kAffine, bits, gs};
      std::vector<float> scales;
      const std::vector<float> dq = Quantized(spec, w, rows, cols, &scales);
      for (int64_t i = 0; i < rows * cols; ++i) {
        const float scale = std::fabs(scales[i / gs]);
        ASSERT_LE(std::fabs(w[i] - dq[i]), scale * (1 + 1e-6f)) << "bits " << bits << " g" << gs << " element " << i;
      }
    }
  }
}

TEST(RoundTrip, ZerosStayZeroInEveryMode) {
  std::vector<float> w(4 * 64, 0.0f);
  for (int i = 0; i < 64; ++i) w[64 + i] = (i % 3 == 0) ? 0.0f : 0.25f * (i % 7);
  const QuantSpec specs[] = {{QuantMode::kAffine, 4, 32}, {QuantMode::kMxfp4, 4, 32}, {QuantMode::kMxfp8, 8, 32},
                             {QuantMode::kNvfp4, 4, 16}};
  for (const QuantSpec& spec : specs) {
    const std::vector<float> dq = Quantized(spec, w, 4, 64, nullptr);
    for (int64_t i = 0; i < 4 * 64; ++i) {
      if (w[i] == 0.0f) {
        EXPECT_EQ(dq[i], 0.0f) << QuantTypeName(spec) << " element " << i;
      }
    }
  }
}

TEST(RoundTrip, RepresentableFpValuesComeBackExactly) {
  std::mt19937_64 rng(7);
  const int64_t rows = 8, cols = 128;
  for (QuantMode mode : {QuantMode::kMxfp4, QuantMode::kMxfp8, QuantMode::kNvfp4}) {
    const QuantSpec spec{mode, mode == QuantMode::kMxfp8 ? 8 : 4, mode == QuantMode::kNvfp4 ? 16 : 32};
    std::vector<float> w(rows * cols);
    for (int64_t g = 0; g < rows * cols / spec.group_size; ++g) {
      // One power-of-two scale per group and element-format values; each group holds its format's
      // largest value, so the scale MLX picks is exactly the one used here.
      const float scale = std::ldexp(1.0f, static_cast<int>(rng() % 16) - 8);
      for (int j = 0; j < spec.group_size; ++j) {
        float v;
        if (mode == QuantMode::kMxfp8) {
          v = numeric::E4M3ToFloat(static_cast<uint8_t>(rng() % 0x7E) | ((rng() % 2) ? 0x80 : 0));
        } else {
          v = numeric::E2M1ToFloat(static_cast<uint8_t>(rng() % 16));
        }
        w[g * spec.group_size + j] = (j == 0 ? (mode == QuantMode::kMxfp8 ? 448.0f : 6.0f) : v) * scale;
      }
    }
    const std::vector<float> dq = Quantized(spec, w, rows, cols, nullptr);
    for (int64_t i = 0; i < rows * cols; ++i) {
      ASSERT_EQ(dq[i], w[i]) << ModeInfo(mode).name << " element " << i;
    }
  }
}

}  // namespace
}  // namespace stquant
