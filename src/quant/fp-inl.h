// Highway mx/nv encoders: MLX CPU's composite-op fp quantizer (spec §8.2, §9.2) on float32
// lanes, with every intermediate rounded to the input dtype as MLX's ops do. The per-group scale
// comes from group_params.h, as in the reference.

#if defined(STQUANT_QUANT_FP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STQUANT_QUANT_FP_INL_H_
#undef STQUANT_QUANT_FP_INL_H_
#else
#define STQUANT_QUANT_FP_INL_H_
#endif

#include <cstring>

#include "numeric/e8m0.h"
#include "numeric/fp8.h"
#include "quant/group_params.h"
#include "quant/kernels.h"
#include "quant/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace stquant::quant::HWY_NAMESPACE {

// E2M1 code by MLX's argmin rule (spec §5(b)) for lanes with |x| < 2^22, where it equals counting
// the midpoints strictly below |x|; the sign is kept only for a non-zero magnitude.
HWY_INLINE VI E2M1ArgminSmall(VF x) {
  const DF df;
  const DI di;
  const VF a = hn::Abs(x);
  VI magnitude = hn::Zero(di);
  for (float midpoint : {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f}) {
    // A true mask is all ones (-1): subtracting it counts.
    magnitude = hn::Sub(magnitude, hn::VecFromMask(di, hn::RebindMask(di, hn::Gt(a, hn::Set(df, midpoint)))));
  }
  const auto negative = hn::RebindMask(di, hn::Lt(x, hn::Zero(df)));
  const auto nonzero = hn::Gt(magnitude, hn::Zero(di));
  return hn::Or(magnitude, hn::IfThenElseZero(hn::And(negative, nonzero), hn::Set(di, 8)));
}

// MLX's to_fp8 (spec §6.1) on lanes: RNE, saturating to 0x7E|sign at |x| >= 448.
HWY_INLINE VI E4M3Encode(VF x) {
  const DF df;
  const DI di;
  const VI bits = hn::BitCast(di, x);
  const VI sign = hn::And(bits, hn::Set(di, static_cast<int32_t>(0x80000000u)));
  const VI magnitude = hn::AndNot(sign, bits);  // non-negative as int32
  const VI odd = hn::And(hn::ShiftRight<20>(magnitude), hn::Set(di, 1));
  // Rebias the exponent (127 -> 7, i.e. add (7-127)<<23) and round the mantissa to 3 bits.
  const VI normal = hn::ShiftRight<20>(
      hn::Add(magnitude, hn::Add(hn::Set(di, static_cast<int32_t>(0xC4000000u + 0x7FFFFu)), odd)));
  const VI subnormal = hn::Sub(hn::BitCast(di, hn::Add(hn::BitCast(df, magnitude), hn::Set(df, 16384.0f))),
                               hn::Set(di, 141 << 23));
  VI code = hn::IfThenElse(hn::Lt(magnitude, hn::Set(di, 121 << 23)), subnormal, normal);
  code = hn::IfThenElse(hn::Gt(magnitude, hn::Set(di, 0x43E00000 - 1)), hn::Set(di, 0x7E), code);
  // The arithmetic shift smears the sign bit over bits 7..31; keep bit 7.
  return hn::Or(hn::And(code, hn::Set(di, 0xFF)), hn::And(hn::ShiftRight<24>(sign), hn::Set(di, 0x80)));
}

// Largest |x| of `count` floats as raw bits (float magnitudes order like their bit patterns).
HWY_INLINE uint32_t AbsMaxBits(DType dtype, const void* input, int64_t start, int count, float* group) {
  const DF df;
  const DU du;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  VU abs_bits = hn::Zero(du);
  for (int j = 0; j < count; j += n) {
    const VF x = LoadAsFloat(dtype, input, start + j);
    hn::Store(x, df, group + j);
    abs_bits = hn::Max(abs_bits, hn::And(hn::BitCast(du, x), hn::Set(du, 0x7FFFFFFFu)));
  }
  return hn::GetLane(hn::MaxOfLanes(du, abs_bits));
}

// mxfp4 / mxfp8 row encoder; contract as AffineEncodeRow (U8 scales, no biases).
HWY_INLINE int64_t MxEncodeRow(const QuantSpec& spec, DType dtype, const void* input, int64_t row_start,
                               int64_t cols, uint8_t* codes, uint8_t* scales) {
  const DF df;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  const int gs = spec.group_size;
  const bool fp4 = spec.mode == QuantMode::kMxfp4;
  HWY_ALIGN float group[128];
  for (int64_t g = 0; g * gs < cols; ++g) {
    const int64_t start = row_start + g * gs;
    uint32_t amax_bits = AbsMaxBits(dtype, input, start, gs, group);
    if (amax_bits >= 0x7F800000u) return g * gs;
    float amax;
    std::memcpy(&amax, &amax_bits, 4);
    const int e = MxExponent(spec.profile, dtype, amax, fp4 ? 6.0f : 448.0f);
    // Dividing by 2^e equals multiplying by 2^-e (both exact, one rounding) when 2^-e is a
    // normal float; MLX divides by T(2^e), which only differs outside that range.
    const bool multiply = e >= -126 && e <= 126;
    const VF factor = hn::Set(df, multiply ? numeric::ExactPow2(-e) : RoundTo(dtype, numeric::ExactPow2(e)));
    for (int j = 0; j < gs; j += n) {
      const VF w = hn::Load(df, group + j);
      const VF x = RoundToDType(dtype, multiply ? hn::Mul(w, factor) : hn::Div(w, factor));
      StoreCodes(fp4 ? E2M1ArgminSmall(x) : E4M3Encode(x), codes + g * gs + j);
    }
    scales[g] = MxScaleByte(e);
  }
  return -1;
}

// nvfp4 row encoder; contract as MxEncodeRow.
HWY_INLINE int64_t NvEncodeRow(const QuantSpec& spec, DType dtype, const void* input, int64_t row_start,
                               int64_t cols, float encode, uint8_t* codes, uint8_t* scales) {
  const DF df;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  const int gs = spec.group_size;
  // Below this, the float32 argmin distances are exact and E2M1ArgminSmall applies (and f16
  // rounding cannot overflow); a group with larger scaled values takes the scalar path.
  const VF limit = hn::Set(df, 32768.0f);
  HWY_ALIGN float group[128];
  for (int64_t g = 0; g * gs < cols; ++g) {
    const int64_t start = row_start + g * gs;
    uint8_t* group_codes = codes + g * gs;
    uint32_t amax_bits = AbsMaxBits(dtype, input, start, gs, group);
    if (amax_bits >= 0x7F800000u) return g * gs;
    float amax;
    std::memcpy(&amax, &amax_bits, 4);
    const uint8_t byte = NvScaleByte(dtype, amax, spec.global_scale, encode);
    scales[g] = byte;
    const float scale = numeric::E4M3ToFloat(byte);
    if (scale == 0.0f) {
      // w / 0 is +-Inf or NaN, and MLX's argmin gives code 0 for both.
      std::memset(group_codes, 0, gs);
      continue;
    }
    const VF divisor = hn::Set(df, scale);
    const VF factor = hn::Set(df, encode);
    bool in_range = true;
    for (int j = 0; j < gs && in_range; j += n) {
      const VF q = hn::Div(hn::Load(df, group + j), divisor);
      if (!hn::AllFalse(df, hn::Ge(hn::Abs(q), limit))) {
        in_range = false;
        break;
      }
      VF x = RoundToDType(dtype, q);
      if (spec.global_scale) x = hn::Mul(x, factor);
      if (!hn::AllFalse(df, hn::Ge(hn::Abs(x), limit))) {
        in_range = false;
        break;
      }
      StoreCodes(E2M1ArgminSmall(x), group_codes + j);
    }
    if (!in_range) NvEncodeGroupRef(dtype, input, start, gs, scale, spec.global_scale, encode, group_codes);
  }
  return -1;
}

}  // namespace stquant::quant::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // STQUANT_QUANT_FP_INL_H_
