// The SIMD kernel on every target this CPU runs must give the reference's bytes, over random
// inputs of many shapes and distributions, for every mode, bit width, group size, dtype and
// profile.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "numeric/bf16.h"
#include "numeric/f16.h"
#include "quant/kernels.h"
#include "stquant/quantize.h"

namespace stquant {
namespace {

enum class Distribution { kNormal, kTiny, kHuge, kOutliers, kConstant, kZeros, kPowersOfTwo, kMidpoints };

float Sample(Distribution d, std::mt19937_64& rng, int64_t i, DType dtype) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float max_value = dtype == DType::kF16 ? 60000.0f : 3e38f;
  switch (d) {
    case Distribution::kNormal: return normal(rng) * 0.02f;
    case Distribution::kTiny: return normal(rng) * (dtype == DType::kF16 ? 1e-6f : 1e-39f);
    case Distribution::kHuge: return std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng) * max_value;
    case Distribution::kOutliers: return normal(rng) * ((rng() % 50 == 0) ? 30.0f : 0.02f);
    case Distribution::kConstant: return ((i / 16) % 3 - 1) * 0.75f;
    case Distribution::kZeros: return (rng() % 7 == 0) ? normal(rng) : ((rng() % 2) ? 0.0f : -0.0f);
    case Distribution::kPowersOfTwo: return std::ldexp((rng() % 2) ? 1.0f : -1.0f, static_cast<int>(rng() % 20) - 10);
    case Distribution::kMidpoints: {
      static const float kMid[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f, 464.0f, 448.0f};
      return kMid[rng() % 10] * std::ldexp(1.0f, static_cast<int>(rng() % 8) - 4) * ((rng() % 2) ? 1 : -1);
    }
  }
  return 0.0f;
}

std::vector<uint8_t> MakeInput(DType dtype, int64_t count, Distribution d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int bytes = dtype == DType::kF32 ? 4 : 2;
  std::vector<uint8_t> out(count * bytes);
  for (int64_t i = 0; i < count; ++i) {
    const float v = Sample(d, rng, i, dtype);
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + i * 4, &v, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? numeric::BF16FromFloat(v) : numeric::F16FromFloat(v);
      std::memcpy(out.data() + i * 2, &h, 2);
    }
  }
  return out;
}

struct Outputs {
  std::vector<uint32_t> packed;
  std::vector<uint8_t> scales, biases;
};

Outputs Quantize(bool fast, const QuantSpec& spec, DType dtype, const std::vector<uint8_t>& input, int64_t rows,
             int64_t cols, float global_scale) {
  Outputs run;
  const int scale_bytes = spec.mode == QuantMode::kAffine ? (dtype == DType::kF32 ? 4 : 2) : 1;
  run.packed.assign(rows * PackedWordsPerRow(spec, cols), 0x5A5A5A5A);
  run.scales.assign(rows * GroupsPerRow(spec, cols) * scale_bytes, 0x5A);
  run.biases.assign(spec.mode == QuantMode::kAffine ? run.scales.size() : 0, 0x5A);
  QuantizedBuffers out{run.packed.data(), run.scales.data(), run.biases.data()};
  const Status status =
      fast ? quant::QuantizeRowsFast(spec, dtype, input.data(), rows, cols, global_scale, out)
           : quant::QuantizeRowsRef(spec, dtype, input.data(), rows, cols, global_scale, out);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return run;
}

std::vector<QuantSpec> AllSpecs() {
  std::vector<QuantSpec> specs;
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int gs : {32, 64, 128}) specs.push_back({QuantMode::kAffine, bits, gs, false, QuantProfile::kMlxCpu});
  }
  for (QuantProfile profile : {QuantProfile::kMlxCpu, QuantProfile::kMlxCpu0322}) {
    specs.push_back({QuantMode::kMxfp4, 4, 32, false, profile});
    specs.push_back({QuantMode::kMxfp8, 8, 32, false, profile});
  }
  specs.push_back({QuantMode::kNvfp4, 4, 16, false, QuantProfile::kMlxCpu});
  specs.push_back({QuantMode::kNvfp4, 4, 16, true, QuantProfile::kMlxCpu});
  return specs;
}

TEST(SimdVsRef, EveryTargetMatchesTheReference) {
  const int64_t rows = 3, cols = 384;
  int compared = 0;
  quant::ForEachSupportedTarget([&](const char* target) {
    for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
      for (Distribution d : {Distribution::kNormal, Distribution::kTiny, Distribution::kHuge, Distribution::kOutliers,
                             Distribution::kConstant, Distribution::kZeros, Distribution::kPowersOfTwo,
                             Distribution::kMidpoints}) {
        const auto input = MakeInput(dtype, rows * cols, d, 1000 + static_cast<int>(d));
        const float global_scale = AbsMax(dtype, input.data(), rows * cols);  // nvfp4 gscale specs
        for (const QuantSpec& spec : AllSpecs()) {
          SCOPED_TRACE(std::string(target) + " dtype " + std::string(DTypeName(dtype)) + " dist " +
                       std::to_string(static_cast<int>(d)) + " " + QuantTypeName(spec) + " g" +
                       std::to_string(spec.group_size) + (spec.global_scale ? " gscale" : "") + " profile " +
                       std::string(QuantProfileName(spec.profile)));
          const Outputs ref = Quantize(false, spec, dtype, input, rows, cols, global_scale);
          const Outputs fast = Quantize(true, spec, dtype, input, rows, cols, global_scale);
          ASSERT_EQ(ref.packed, fast.packed);
          ASSERT_EQ(ref.scales, fast.scales);
          ASSERT_EQ(ref.biases, fast.biases);
          ++compared;
        }
      }
    }
  });
  EXPECT_GT(compared, 500);
}

TEST(SimdVsRef, ParallelDriverEqualsOneCall) {
  const int64_t rows = 300, cols = 1024;
  const auto input = MakeInput(DType::kBF16, rows * cols, Distribution::kOutliers, 7);
  for (const QuantSpec& spec : AllSpecs()) {
    const Outputs one = Quantize(true, spec, DType::kBF16, input, rows, cols, 1.0f);
    Outputs parallel = one;
    std::fill(parallel.packed.begin(), parallel.packed.end(), 0);
    ASSERT_TRUE(QuantizeRowsParallel(spec, DType::kBF16, input.data(), rows, cols, 1.0f,
                                     {parallel.packed.data(), parallel.scales.data(), parallel.biases.data()}, 2)
                    .ok());
    EXPECT_EQ(one.packed, parallel.packed);
  }
}

TEST(SimdVsRef, NonFiniteInputIsRefusedWithItsIndexOnEveryTarget) {
  const float inf = std::numeric_limits<float>::infinity();
  int checked = 0;
  quant::ForEachSupportedTarget([&](const char* target) {
    for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
      const int bytes = dtype == DType::kF32 ? 4 : 2;
      for (float bad : {inf, -inf, std::numeric_limits<float>::quiet_NaN()}) {
        std::vector<uint8_t> input = MakeInput(dtype, 4 * 128, Distribution::kNormal, 3);
        if (dtype == DType::kF32) {
          std::memcpy(input.data() + 4 * 300, &bad, 4);
        } else {
          const uint16_t h = dtype == DType::kBF16 ? numeric::BF16FromFloat(bad) : numeric::F16FromFloat(bad);
          std::memcpy(input.data() + 2 * 300, &h, 2);
        }
        for (const QuantSpec& spec : AllSpecs()) {
          SCOPED_TRACE(std::string(target) + " " + std::string(DTypeName(dtype)) + " " + QuantTypeName(spec));
          std::vector<uint32_t> packed(4 * 128);
          std::vector<uint8_t> scales(4 * 128 * bytes), biases(4 * 128 * bytes);
          for (bool parallel : {false, true}) {
            const QuantizedBuffers out{packed.data(), scales.data(), biases.data()};
            const Status status = parallel ? QuantizeRowsParallel(spec, dtype, input.data(), 4, 128, 1.0f, out, 2)
                                           : quant::QuantizeRowsFast(spec, dtype, input.data(), 4, 128, 1.0f, out);
            ASSERT_EQ(status.code(), StatusCode::kInvalidInput);
            EXPECT_NE(status.message().find("element 300 "), std::string::npos) << status.message();
            ++checked;
          }
        }
      }
    }
  });
  EXPECT_GT(checked, 100);
}

}  // namespace
}  // namespace stquant
