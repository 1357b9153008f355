// Internal kernel entry points. The *Ref functions are the scalar references: they restate
// MLX's CPU code one operation at a time and define the output; the fast kernels in
// quantize.cc must produce the same bytes. Contracts as QuantizeRows in stquant/quantize.h.
#pragma once

#include <cstdint>

#include "stquant/quantize.h"

namespace stquant::quant {

Status AffineQuantizeRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows,
                         int64_t cols, QuantizedBuffers out);
Status FpQuantizeRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                     float global_scale, QuantizedBuffers out);
Status QuantizeRowsRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows,
                       int64_t cols, float global_scale, QuantizedBuffers out);

// Index of the first non-finite element among `count`, or -1.
int64_t FindNonFinite(DType dtype, const void* input, int64_t count);
Status NonFiniteError(DType dtype, const void* input, int64_t index);

}  // namespace stquant::quant
