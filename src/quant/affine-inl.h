// Highway affine encoder: MLX CPU's affine quantizer (spec §4.1) on float32 lanes. The per-group
// scale and bias come from AffineGroupParams, as in the reference; only the element loop is SIMD.

#if defined(STQUANT_QUANT_AFFINE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STQUANT_QUANT_AFFINE_INL_H_
#undef STQUANT_QUANT_AFFINE_INL_H_
#else
#define STQUANT_QUANT_AFFINE_INL_H_
#endif

#include <limits>

#include "quant/group_params.h"
#include "quant/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace stquant::quant::HWY_NAMESPACE {

// Encodes one row of `cols` elements starting at element `row_start` of `input` into u8 codes,
// and stores each group's scale and bias (as the input dtype) at scales/biases[first_group + g].
// Returns the column of the first group holding NaN/Inf (nothing is encoded from there on), or -1.
HWY_INLINE int64_t AffineEncodeRow(const QuantSpec& spec, DType dtype, const void* input, int64_t row_start,
                                   int64_t cols, uint8_t* codes, void* scales, void* biases,
                                   int64_t first_group) {
  const DF df;
  const DI di;
  const DU du;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  const int gs = spec.group_size;
  const VF zero = hn::Zero(df);
  const VF max_code = hn::Set(df, static_cast<float>((1 << spec.bits) - 1));
  HWY_ALIGN float group[128];
  for (int64_t g = 0; g * gs < cols; ++g) {
    const int64_t start = row_start + g * gs;
    VF lo = hn::Set(df, std::numeric_limits<float>::infinity());
    VF hi = hn::Neg(lo);
    VU abs_bits = hn::Zero(du);
    for (int j = 0; j < gs; j += n) {
      const VF x = LoadAsFloat(dtype, input, start + j);
      hn::Store(x, df, group + j);
      lo = hn::Min(lo, x);
      hi = hn::Max(hi, x);
      abs_bits = hn::Max(abs_bits, hn::And(hn::BitCast(du, x), hn::Set(du, 0x7FFFFFFFu)));
    }
    // Float magnitudes order like their bit patterns; NaN and Inf are the largest.
    if (hn::GetLane(hn::MaxOfLanes(du, abs_bits)) >= 0x7F800000u) return g * gs;
    const AffineParams params =
        AffineGroupParams(hn::GetLane(hn::MinOfLanes(df, lo)), hn::GetLane(hn::MaxOfLanes(df, hi)), spec.bits);
    const VF scale = hn::Set(df, params.scale);
    const VF bias = hn::Set(df, params.bias);
    for (int j = 0; j < gs; j += n) {
      const VF q = hn::Round(hn::Div(hn::Sub(hn::Load(df, group + j), bias), scale));
      StoreCodes(hn::ConvertTo(di, hn::Min(hn::Max(q, zero), max_code)), codes + g * gs + j);
    }
    StoreElement(dtype, scales, first_group + g, params.scale);
    StoreElement(dtype, biases, first_group + g, params.bias);
  }
  return -1;
}

}  // namespace stquant::quant::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // STQUANT_QUANT_AFFINE_INL_H_
