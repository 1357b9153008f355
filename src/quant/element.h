// Reading, writing and rounding the three float dtypes the kernels accept, all through float32
// (MLX's CPU ops widen bf16/f16 operands to float32, compute, and round the result back, §10).
#pragma once

#include <cstdint>
#include <cstring>

#include "numeric/bf16.h"
#include "numeric/f16.h"
#include "stquant/dtype.h"

namespace stquant::quant {

inline float LoadElement(DType dtype, const void* base, int64_t i) {
  switch (dtype) {
    case DType::kBF16: return numeric::BF16ToFloat(static_cast<const uint16_t*>(base)[i]);
    case DType::kF16: return numeric::F16ToFloat(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

inline void StoreElement(DType dtype, void* base, int64_t i, float value) {
  switch (dtype) {
    case DType::kBF16: static_cast<uint16_t*>(base)[i] = numeric::BF16FromFloat(value); break;
    case DType::kF16: static_cast<uint16_t*>(base)[i] = numeric::F16FromFloat(value); break;
    default: static_cast<float*>(base)[i] = value; break;
  }
}

// The result of a float32 computation rounded to `dtype`, as MLX stores it in an array of T.
inline float RoundTo(DType dtype, float value) {
  switch (dtype) {
    case DType::kBF16: return numeric::RoundToBF16(value);
    case DType::kF16: return numeric::RoundToF16(value);
    default: return value;
  }
}

inline int ElementBytes(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

}  // namespace stquant::quant
