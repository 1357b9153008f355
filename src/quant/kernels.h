// Internal kernel entry points. The *Ref functions are the scalar references: they restate
// MLX's CPU code one operation at a time and define the output; the fast kernels in
// quantize.cc must produce the same bytes. Contracts as QuantizeRows in stquant/quantize.h.
#pragma once

#include <cstdint>
#include <functional>

#include "stquant/quantize.h"

namespace stquant::quant {

Status AffineQuantizeRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows,
                         int64_t cols, QuantizedBuffers out);
Status FpQuantizeRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                     float global_scale, QuantizedBuffers out);
Status QuantizeRowsRef(const QuantSpec& spec, DType dtype, const void* input, int64_t rows,
                       int64_t cols, float global_scale, QuantizedBuffers out);

// nvfp4 codes of one group of `count` elements from element `start`, given its decoded E4M3
// scale (non-zero) and the encode factor (spec §9.2).
void NvEncodeGroupRef(DType dtype, const void* input, int64_t start, int count, float scale, bool global_scale,
                      float encode, uint8_t* codes);

// The fast (Highway) kernel on the best target this CPU supports.
Status QuantizeRowsFast(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                        float global_scale, QuantizedBuffers out);
// Runs fn once per SIMD target compiled in and supported by this CPU, with the dispatch forced to
// that target (tests use it to check every target against the reference); restores it after.
void ForEachSupportedTarget(const std::function<void(const char* target_name)>& fn);

// Index of the first non-finite element among `count`, or -1.
int64_t FindNonFinite(DType dtype, const void* input, int64_t count);
// "element N is V ...": V is element `index` of `input`, N is index_base + index (the position in
// the whole tensor when `input` is a block of it).
Status NonFiniteError(DType dtype, const void* input, int64_t index, int64_t index_base = 0);

}  // namespace stquant::quant
