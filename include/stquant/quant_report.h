// The per-tensor quantization report (`stquant convert --report FILE.json`, `--verbose`): for every
// quantized tensor, how far MLX's dequantization of the written fields is from the values that
// were quantized. Measured in the conversion's own pass (ConvertOptions::measure_quant_error).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "stquant/dtype.h"
#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant {

struct TensorQuantError {
  std::string name;  // the output tensor (ollama layout: its name in the blobs)
  QuantSpec spec;
  DType dtype = DType::kBF16;  // of the values quantized (affine scales and biases have it)
  uint64_t elements = 0;
  double squared_error = 0.0;   // sum over elements of (dequantized - value)^2
  double squared_values = 0.0;  // sum of value^2
  double max_abs_error = 0.0;
  uint64_t groups = 0;
  // Groups (nvfp4/mx blocks, affine groups) with a non-zero value that dequantize to all zeros:
  // nvfp4 blocks whose scale underflows E4M3 lose their values this way.
  uint64_t zeroed_groups = 0;

  // sqrt(squared_error / squared_values); 0 for an all-zero tensor.
  double RelativeRmse() const;
};

// Bits per weight of a quantized tensor of `dtype` values: the codes plus the group's scale (and
// bias) bits.
double BitsPerWeight(const QuantSpec& spec, DType dtype);

// A tensor whose relative RMSE is more than this many times the median of the model's quantized
// tensors is flagged: the place to look first when a converted model misbehaves.
inline constexpr double kQuantErrorOutlierFactor = 3.0;

// The report as JSON: every tensor (name, type, bits, group size, bits per weight, relative RMSE,
// max abs error, share of zeroed groups, flagged), the model's median and overall relative RMSE,
// and the same per quantization type.
std::string QuantReportJson(const std::vector<TensorQuantError>& tensors);

// A short table for the terminal: per type the tensors, bits per weight and overall relative RMSE,
// then the flagged tensors (the worst first).
std::string QuantReportTable(const std::vector<TensorQuantError>& tensors);

// Writes QuantReportJson to `path` atomically.
Status WriteQuantReport(const std::vector<TensorQuantError>& tensors, const std::string& path);

}  // namespace stquant
