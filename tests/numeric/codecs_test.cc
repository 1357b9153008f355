// The numeric codecs against MLX's own from_fp8 / to_fp8 (../shared/golden/fp8_e4m3.safetensors)
// and hand-picked rounding cases from the spec. The exhaustive comparisons with ml_dtypes and pip
// MLX over all 16-bit codes are in tests/python/test_numeric_codecs.py.
#include <cmath>
#include <cstring>
#include <limits>

#include <gtest/gtest.h>

#include "../quant/golden_util.h"
#include "numeric/bf16.h"
#include "numeric/e8m0.h"
#include "numeric/f16.h"
#include "numeric/fp4.h"
#include "numeric/fp8.h"

namespace stquant::testing {
namespace {

using namespace numeric;

TEST(E4M3, DecodeEqualsMlxFromFp8ForAll256Codes) {
  const auto t = LoadGolden("fp8_e4m3.safetensors");
  const GoldenTensor& codes = t.at("from_fp8.input");
  const GoldenTensor& f32 = t.at("from_fp8.f32");
  const GoldenTensor& bf16 = t.at("from_fp8.bf16");
  const GoldenTensor& f16 = t.at("from_fp8.f16");
  for (int i = 0; i < 256; ++i) {
    const float v = E4M3ToFloat(codes.bytes[i]);
    float expected;
    std::memcpy(&expected, f32.bytes.data() + 4 * i, 4);
    EXPECT_EQ(std::memcmp(&v, &expected, 4), 0) << "code " << i;
    uint16_t b, h;
    std::memcpy(&b, bf16.bytes.data() + 2 * i, 2);
    std::memcpy(&h, f16.bytes.data() + 2 * i, 2);
    EXPECT_EQ(BF16FromFloat(v), b) << "code " << i;
    EXPECT_EQ(F16FromFloat(v), h) << "code " << i;
  }
}

TEST(E4M3, EncodeEqualsMlxToFp8OnTheGoldenProbes) {
  const auto t = LoadGolden("fp8_e4m3.safetensors");
  for (const char* suffix : {"f32", "bf16"}) {
    const GoldenTensor& input = t.at(std::string("to_fp8.input_") + suffix);
    const GoldenTensor& output = t.at(std::string("to_fp8.output_from_") + suffix);
    const int64_t n = input.shape[0];
    for (int64_t i = 0; i < n; ++i) {
      float x;
      if (input.dtype == DType::kF32) {
        std::memcpy(&x, input.bytes.data() + 4 * i, 4);
      } else {
        uint16_t b;
        std::memcpy(&b, input.bytes.data() + 2 * i, 2);
        x = BF16ToFloat(b);
      }
      EXPECT_EQ(E4M3FromFloat(x), output.bytes[i]) << suffix << " probe " << i << " = " << x;
    }
  }
}

TEST(E4M3, SpecExamples) {
  // mlx-quant-spec §13: to_fp8 of [448,449,464,479,480,600,inf,-inf,nan,-nan,1.0625,1.1875,2^-10,
  // 2^-9,1.5*2^-9,1e-9,-0,2^-6,1.2].
  const float inf = std::numeric_limits<float>::infinity();
  const float in[] = {448, 449, 464, 479, 480, 600, inf, -inf, std::nanf(""), -std::nanf(""), 1.0625f, 1.1875f,
                      std::ldexp(1.0f, -10), std::ldexp(1.0f, -9), 1.5f * std::ldexp(1.0f, -9), 1e-9f, -0.0f,
                      std::ldexp(1.0f, -6), 1.2f};
  const uint8_t out[] = {0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0x7E, 0xFE,
                         0x38, 0x3A, 0x00, 0x01, 0x02, 0x00, 0x80, 0x08, 0x3A};
  for (size_t i = 0; i < std::size(in); ++i) EXPECT_EQ(E4M3FromFloat(in[i]), out[i]) << i;
  EXPECT_EQ(E4M3ToFloat(0x7F), 480.0f);
  EXPECT_TRUE(std::isnan(E4M3FnToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(E4M3FnToFloat(0xFF)));
  EXPECT_EQ(E4M3FnToFloat(0x7E), 448.0f);
}

TEST(BF16, SpecExamples) {
  // §10 and §13: f32 -> bf16 of [-1e-7, -0.05, 1.00390625, 1.01171875, nan, -nan, 3.4e38].
  EXPECT_EQ(BF16FromFloat(-1e-7f), 0xB3D7);
  EXPECT_EQ(BF16FromFloat(-0.05f), 0xBD4D);
  EXPECT_EQ(BF16FromFloat(1.00390625f), 0x3F80);  // tie to even
  EXPECT_EQ(BF16FromFloat(1.01171875f), 0x3F82);  // tie to even (up)
  EXPECT_EQ(BF16FromFloat(std::nanf("")), 0x7FC0);
  EXPECT_EQ(BF16FromFloat(-std::nanf("")), 0x7FC0);
  EXPECT_EQ(BF16FromFloat(3.4e38f), 0x7F80);
}

TEST(F16, SpecExamplesAndEdges) {
  EXPECT_EQ(F16FromFloat(-1e-7f), 0x8002);
  EXPECT_EQ(F16FromFloat(65504.0f), 0x7BFF);
  EXPECT_EQ(F16FromFloat(65519.99f), 0x7BFF);
  EXPECT_EQ(F16FromFloat(65520.0f), 0x7C00);  // the tie rounds to even: Inf
  EXPECT_EQ(F16FromFloat(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(F16FromFloat(std::ldexp(1.0f, -25)), 0x0000);  // tie to even: 0
  EXPECT_EQ(F16FromFloat(std::ldexp(3.0f, -25)), 0x0002);  // tie to even: 2 * 2^-24
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = F16ToFloat(static_cast<uint16_t>(h));
    if (!std::isnan(f)) EXPECT_EQ(F16FromFloat(f), h) << h;
  }
}

TEST(E8M0, DecodeAndPow2) {
  EXPECT_EQ(E8M0ToFloat(127), 1.0f);
  EXPECT_EQ(E8M0ToFloat(0), std::ldexp(1.0f, -127));
  EXPECT_TRUE(std::isinf(E8M0ToFloat(255)));
  for (int e = -149; e <= 127; ++e) EXPECT_EQ(ExactPow2(e), std::ldexp(1.0f, e)) << e;
}

TEST(E2M1, ArgminEncoderTiesAndSigns) {
  // Ties go to the smaller magnitude; |x| <= 0.25 and negatives rounding to 0 give code 0.
  EXPECT_EQ(E2M1FromFloatArgmin(0.25f), 0);
  EXPECT_EQ(E2M1FromFloatArgmin(-0.25f), 0);
  EXPECT_EQ(E2M1FromFloatArgmin(-0.0f), 0);
  EXPECT_EQ(E2M1FromFloatArgmin(0.75f), 1);
  EXPECT_EQ(E2M1FromFloatArgmin(1.75f), 3);
  EXPECT_EQ(E2M1FromFloatArgmin(3.5f), 5);
  EXPECT_EQ(E2M1FromFloatArgmin(-5.0f), 0xE);
  EXPECT_EQ(E2M1FromFloatArgmin(-7.0f), 0xF);
  EXPECT_EQ(E2M1FromFloatArgmin(3e37f), 0);  // float32 distances tie: the first index wins
  EXPECT_EQ(E2M1FromFloatArgmin(std::nanf("")), 0);
  // The threshold form equals the argmin wherever distances are exact.
  for (int i = -200000; i <= 200000; ++i) {
    const float x = i * 0.0000625f;
    ASSERT_EQ(E2M1FromFloatArgminSmall(x), E2M1FromFloatArgmin(x)) << x;
  }
  EXPECT_EQ(E2M1FromFloatRne(0.75f), 2);
  EXPECT_EQ(E2M1FromFloatRne(-0.1f), 0x8);
}

}  // namespace
}  // namespace stquant::testing
