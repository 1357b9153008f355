// Quantize and dequantize blocks of rows in memory, byte-exact with MLX's CPU backend.
//
// A tensor of shape [..., K] is seen as rows x K (rows = product of the leading dims); groups of
// spec.group_size consecutive elements along K are quantized independently, so any split of the
// rows gives the same bytes as one call over the whole tensor.
//
// Thread safety: the functions are pure and reentrant; the *Parallel variants use the process-wide
// worker pool.
#pragma once

#include <cstdint>

#include "stquant/dtype.h"
#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant {

// Output buffers for `rows` rows of K elements:
//   packed  rows * PackedWordsPerRow(spec, K) uint32 words (little-endian LSB-first bit stream)
//   scales  rows * GroupsPerRow(spec, K) elements of ScaleDType(spec, input dtype)
//   biases  affine only: as scales; ignored otherwise
struct QuantizedBuffers {
  uint32_t* packed = nullptr;
  void* scales = nullptr;
  void* biases = nullptr;
};
struct ConstQuantizedBuffers {
  const uint32_t* packed = nullptr;
  const void* scales = nullptr;
  const void* biases = nullptr;
};

// float32(max |x|) over `count` elements, the global scale MLX's nvfp4 expects
// (astype(max(abs(w)), float32)). Non-finite inputs give a non-finite result.
float AbsMax(DType dtype, const void* input, int64_t count);

// Quantizes rows x cols elements of `dtype` (BF16, F16 or F32). `global_scale` is used only when
// spec.global_scale (nvfp4). REQUIRES: ValidateQuantSpec(spec) and the shape checks hold.
// A NaN or Inf input gives kInvalidInput naming the element's index (row-major from `input`); MLX's
// output for such groups is undefined, so none is produced.
Status QuantizeRows(const QuantSpec& spec, DType dtype, const void* input, int64_t rows, int64_t cols,
                    float global_scale, QuantizedBuffers out);
// The same, split into row blocks over the worker pool (`threads` 0 = all cores).
Status QuantizeRowsParallel(const QuantSpec& spec, DType dtype, const void* input, int64_t rows,
                            int64_t cols, float global_scale, QuantizedBuffers out, int threads = 0);

// The dtype MLX's dequantize returns when none is requested: the scales' dtype for affine,
// bfloat16 for the fp modes, float32 for nvfp4 with a global scale (a CPU quirk, spec §9.4).
DType DefaultDequantizeDType(const QuantSpec& spec, DType scale_dtype);

// Dequantizes rows x cols elements into `output` of `out_dtype` (BF16, F16 or F32), with MLX's CPU
// arithmetic (spec §4.4, §8.4, §9.4). `scale_dtype` is the dtype of affine scales and biases.
// nvfp4 with a global scale always computes in float32; out_dtype must then be F32.
Status DequantizeRows(const QuantSpec& spec, DType scale_dtype, ConstQuantizedBuffers in, int64_t rows,
                      int64_t cols, float global_scale, DType out_dtype, void* output);

}  // namespace stquant
