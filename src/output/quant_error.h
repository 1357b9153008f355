// Accumulates one tensor's TensorQuantError (stquant/quant_report.h) over the blocks that
// QuantizeRowSource quantizes, from any of its threads.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "stquant/quant_report.h"
#include "stquant/quantize.h"

namespace stquant::output {

class QuantErrorMeter {
 public:
  QuantErrorMeter(std::string name, const QuantSpec& spec, DType dtype);

  // Dequantizes `fields` (rows x cols, as QuantizeRows wrote them for `values`) with MLX's CPU
  // arithmetic and adds the block's error; `first_element` orders the blocks, so the totals do
  // not depend on which thread measured which block.
  Status Add(int64_t first_element, const uint8_t* values, ConstQuantizedBuffers fields, int64_t rows, int64_t cols,
             float global_scale);

  // The totals, summed over the blocks in element order.
  TensorQuantError Total() const;

 private:
  TensorQuantError base_;
  mutable std::mutex mu_;
  std::map<int64_t, TensorQuantError> blocks_;  // by first element
};

}  // namespace stquant::output
