#include "output/quant_error.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "quant/element.h"

namespace stquant::output {

QuantErrorMeter::QuantErrorMeter(std::string name, const QuantSpec& spec, DType dtype) {
  base_.name = std::move(name);
  base_.spec = spec;
  base_.dtype = dtype;
}

Status QuantErrorMeter::Add(int64_t first_element, const uint8_t* values, ConstQuantizedBuffers fields, int64_t rows,
                            int64_t cols, float global_scale) {
  const int64_t elements = rows * cols;
  thread_local std::vector<float> dequantized, source;
  dequantized.resize(static_cast<size_t>(elements));
  source.resize(static_cast<size_t>(elements));
  STQ_RETURN_IF_ERROR(DequantizeRows(base_.spec, ScaleDType(base_.spec, base_.dtype), fields, rows, cols, global_scale,
                                     DType::kF32, dequantized.data()));
  for (int64_t i = 0; i < elements; ++i) source[i] = quant::LoadElement(base_.dtype, values, i);
  TensorQuantError block;
  block.elements = static_cast<uint64_t>(elements);
  const int64_t group = base_.spec.group_size;
  for (int64_t g = 0; g < elements; g += group) {
    // Per group in double: exact enough for any group size, and the group's zero test in the same pass.
    double squared_error = 0.0, squared_values = 0.0, max_abs_error = 0.0;
    bool source_zero = true, dequantized_zero = true;
    for (int64_t i = g; i < g + group; ++i) {
      const double x = source[i], d = dequantized[i];
      squared_error += (d - x) * (d - x);
      squared_values += x * x;
      max_abs_error = std::max(max_abs_error, std::abs(d - x));
      source_zero &= x == 0.0;
      dequantized_zero &= d == 0.0;
    }
    block.squared_error += squared_error;
    block.squared_values += squared_values;
    block.max_abs_error = std::max(block.max_abs_error, max_abs_error);
    ++block.groups;
    block.zeroed_groups += dequantized_zero && !source_zero;
  }
  std::lock_guard<std::mutex> lock(mu_);
  blocks_[first_element] = block;
  return Status::Ok();
}

TensorQuantError QuantErrorMeter::Total() const {
  std::lock_guard<std::mutex> lock(mu_);
  TensorQuantError total = base_;
  for (const auto& [first, block] : blocks_) {
    total.elements += block.elements;
    total.squared_error += block.squared_error;
    total.squared_values += block.squared_values;
    total.max_abs_error = std::max(total.max_abs_error, block.max_abs_error);
    total.groups += block.groups;
    total.zeroed_groups += block.zeroed_groups;
  }
  return total;
}

}  // namespace stquant::output
