// Loading the MLX golden vectors of ../shared/golden (see its README) for the kernel tests.
#pragma once

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "stquant/quant_spec.h"
#include "stquant/safetensors.h"

namespace stquant::testing {

inline std::string GoldenPath(const std::string& file) { return std::string(STQUANT_SHARED_DIR) + "/golden/" + file; }

struct GoldenTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Every tensor of a golden file, by name.
inline std::map<std::string, GoldenTensor> LoadGolden(const std::string& file) {
  std::map<std::string, GoldenTensor> out;
  auto reader = safetensors::Reader::Open(GoldenPath(file));
  if (!reader.ok()) {
    ADD_FAILURE() << reader.status().ToString();
    return out;
  }
  for (const auto& info : (*reader)->tensors()) {
    GoldenTensor t{info.dtype, info.shape, std::vector<uint8_t>(info.nbytes())};
    EXPECT_TRUE((*reader)->Read(info, 0, t.bytes).ok());
    out[info.name] = std::move(t);
  }
  return out;
}

// One golden quantization: "<case>.<combo>" with its input and expected outputs.
struct GoldenCase {
  std::string file, name, combo;
  QuantSpec spec;
  const GoldenTensor* input = nullptr;
  const GoldenTensor* weight = nullptr;
  const GoldenTensor* scales = nullptr;
  const GoldenTensor* biases = nullptr;
  float global_scale = 0.0f;
  int64_t rows = 0, cols = 0;
};

// The spec a golden combo name stands for ("affine_b3_g64", "mxfp4", "nvfp4_gscale", ...), with
// the profile of the MLX that wrote the golden vectors (0.32.2).
inline QuantSpec SpecForCombo(const std::string& combo) {
  QuantSpec spec;
  spec.profile = QuantProfile::kMlxCpu0322;
  if (combo.rfind("affine", 0) == 0) {
    spec.mode = QuantMode::kAffine;
    std::sscanf(combo.c_str(), "affine_b%d_g%d", &spec.bits, &spec.group_size);
  } else if (combo == "mxfp4") {
    spec = {QuantMode::kMxfp4, 4, 32, false, QuantProfile::kMlxCpu0322};
  } else if (combo == "mxfp8") {
    spec = {QuantMode::kMxfp8, 8, 32, false, QuantProfile::kMlxCpu0322};
  } else {
    spec = {QuantMode::kNvfp4, 4, 16, combo == "nvfp4_gscale", QuantProfile::kMlxCpu0322};
  }
  return spec;
}

// All quantization cases of a loaded golden file.
inline std::vector<GoldenCase> GoldenCases(const std::string& file, const std::map<std::string, GoldenTensor>& t) {
  std::vector<GoldenCase> cases;
  for (const auto& [name, weight] : t) {
    const std::string suffix = ".weight";
    if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string stem = name.substr(0, name.size() - suffix.size());  // <case>.<combo>
    const size_t dot = stem.find('.');
    GoldenCase c;
    c.file = file;
    c.name = stem;
    c.combo = stem.substr(dot + 1);
    c.spec = SpecForCombo(c.combo);
    c.input = &t.at(stem.substr(0, dot) + ".input");
    c.weight = &weight;
    c.scales = &t.at(stem + ".scales");
    if (auto it = t.find(stem + ".biases"); it != t.end()) c.biases = &it->second;
    if (auto it = t.find(stem + ".global_scale"); it != t.end()) std::memcpy(&c.global_scale, it->second.bytes.data(), 4);
    c.cols = c.input->shape.back();
    c.rows = 1;
    for (size_t i = 0; i + 1 < c.input->shape.size(); ++i) c.rows *= c.input->shape[i];
    cases.push_back(c);
  }
  return cases;
}

inline const std::vector<std::string>& GoldenQuantFiles() {
  static const std::vector<std::string> files = {"bf16_affine.safetensors", "f16_affine.safetensors",
                                                 "f32_affine.safetensors",  "bf16_fp.safetensors",
                                                 "f16_fp.safetensors",      "f32_fp.safetensors",
                                                 "bf16_large.safetensors"};
  return files;
}

}  // namespace stquant::testing
