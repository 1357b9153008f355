// Highway building blocks shared by the SIMD kernels: widening the input dtype to float32,
// rounding float32 results to bf16/f16 (MLX computes "in T", spec §10), and packing u8 codes into
// MLX's uint32 words (spec §4.3). Included once per target by quantize.cc (foreach_target).

// Per-target include guard, the Highway idiom for -inl.h files.
#if defined(STQUANT_QUANT_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STQUANT_QUANT_SIMD_INL_H_
#undef STQUANT_QUANT_SIMD_INL_H_
#else
#define STQUANT_QUANT_SIMD_INL_H_
#endif

#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "quant/packing.h"
#include "stquant/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace stquant::quant::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 16 float lanes, so that the lane count divides every group size (16..128).
using DF = hn::CappedTag<float, 16>;
using DI = hn::RebindToSigned<DF>;
using DU = hn::RebindToUnsigned<DF>;
using VF = hn::Vec<DF>;
using VI = hn::Vec<DI>;
using VU = hn::Vec<DU>;

// IEEE f16 bits (in the low half of u32 lanes) to float32, exactly, Inf and NaN included.
// (Highway's emulated PromoteTo for targets without F16C maps Inf/NaN to finite values.)
HWY_INLINE VF F16BitsToFloat(VU h) {
  const DF df;
  const DU du;
  const VU sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(du, 0x8000u)));
  const VU magnitude = hn::And(h, hn::Set(du, 0x7FFFu));
  // Normal, Inf and NaN: shift into place and rebias the exponent (15 -> 127); exponent 31 needs
  // the same again to reach 255.
  VU bits = hn::Add(hn::ShiftLeft<13>(magnitude), hn::Set(du, 112u << 23));
  const auto special = hn::RebindMask(du, hn::Gt(hn::BitCast(DI(), magnitude), hn::Set(DI(), 0x7BFF)));
  bits = hn::IfThenElse(special, hn::Add(bits, hn::Set(du, 112u << 23)), bits);
  // Zero and subnormal: mantissa * 2^-24, exact in float32.
  const VF small = hn::Mul(hn::ConvertTo(df, hn::BitCast(DI(), magnitude)), hn::Set(df, 5.9604644775390625e-8f));
  const auto is_small = hn::RebindMask(du, hn::Lt(hn::BitCast(DI(), magnitude), hn::Set(DI(), 0x0400)));
  return hn::BitCast(df, hn::Or(sign, hn::IfThenElse(is_small, hn::BitCast(du, small), bits)));
}

// Lanes(DF()) float32 values from element `i` of an array of `dtype`.
HWY_INLINE VF LoadAsFloat(DType dtype, const void* base, int64_t i) {
  const DF df;
  if (dtype == DType::kF32) return hn::LoadU(df, static_cast<const float*>(base) + i);
  const hn::Rebind<uint16_t, DF> d16;
  const VU raw = hn::PromoteTo(DU(), hn::LoadU(d16, static_cast<const uint16_t*>(base) + i));
  if (dtype == DType::kBF16) return hn::BitCast(df, hn::ShiftLeft<16>(raw));
  return F16BitsToFloat(raw);
}

// Rounds float32 lanes to the nearest bf16 (RNE). REQUIRES: no NaN lanes.
HWY_INLINE VF RoundToBF16(VF x) {
  const DU du;
  const VU bits = hn::BitCast(du, x);
  const VU lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
  const VU rounded = hn::Add(bits, hn::Add(hn::Set(du, 0x7FFFu), lsb));
  return hn::BitCast(DF(), hn::And(rounded, hn::Set(du, 0xFFFF0000u)));
}

// Rounds float32 lanes to the nearest f16 (RNE, with f16 subnormals), as float32.
// REQUIRES: |x| < 65504 and no NaN (the callers' values are bounded far below that).
HWY_INLINE VF RoundToF16(VF x) {
  const DF df;
  const DU du;
  const VU bits = hn::BitCast(du, x);
  const VU sign = hn::And(bits, hn::Set(du, 0x80000000u));
  const VU magnitude = hn::AndNot(sign, bits);
  // Normal f16 range: keep 10 mantissa bits, ties to even.
  const VU lsb = hn::And(hn::ShiftRight<13>(magnitude), hn::Set(du, 1u));
  const VU normal = hn::And(hn::Add(magnitude, hn::Add(hn::Set(du, 0xFFFu), lsb)), hn::Set(du, 0xFFFFE000u));
  // Subnormal f16 range (|x| < 2^-14): adding 0.5 rounds to a multiple of 2^-24 (RNE).
  const VF half = hn::Set(df, 0.5f);
  const VU subnormal = hn::BitCast(du, hn::Sub(hn::Add(hn::BitCast(df, magnitude), half), half));
  const auto is_normal = hn::RebindMask(du, hn::Gt(hn::BitCast(DI(), magnitude), hn::Set(DI(), 0x38800000 - 1)));
  return hn::BitCast(df, hn::Or(sign, hn::IfThenElse(is_normal, normal, subnormal)));
}

HWY_INLINE VF RoundToDType(DType dtype, VF x) {
  if (dtype == DType::kBF16) return RoundToBF16(x);
  if (dtype == DType::kF16) return RoundToF16(x);
  return x;
}

// Stores the low byte of each int32 lane (values 0..255) to codes[0 .. Lanes).
HWY_INLINE void StoreCodes(VI codes, uint8_t* out) {
  const hn::Rebind<uint8_t, DI> d8;
  hn::StoreU(hn::DemoteTo(d8, codes), d8, out);
}

// Packs `count` codes of `bits` bits into MLX's words. count * bits % 32 == 0 by the group rule.
HWY_INLINE void PackCodes(const uint8_t* codes, int64_t count, int bits, uint32_t* words) {
  if (bits == 8) {  // one code per byte, little-endian words: the bytes are the words
    std::memcpy(words, codes, count);
    return;
  }
#if HWY_TARGET != HWY_SCALAR
  auto* out = reinterpret_cast<uint8_t*>(words);
  if (bits == 4) {
    // Two codes per byte, even element in the low nibble: read code pairs as 16-bit lanes.
    const hn::ScalableTag<int16_t> d16;
    const hn::Repartition<uint8_t, decltype(d16)> d8;
    const hn::Rebind<uint8_t, decltype(d16)> d8_half;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d16));
    int64_t i = 0;
    for (; i + 2 * n <= count; i += 2 * n) {
      const auto pair = hn::BitCast(d16, hn::LoadU(d8, codes + i));
      const auto low = hn::And(pair, hn::Set(d16, 0x0F));
      const auto high = hn::And(hn::ShiftRight<4>(pair), hn::Set(d16, 0xF0));
      hn::StoreU(hn::DemoteTo(d8_half, hn::Or(low, high)), d8_half, out + i / 2);
    }
    for (; i < count; i += 2) out[i / 2] = static_cast<uint8_t>(codes[i] | (codes[i + 1] << 4));
    return;
  }
  if (bits == 2) {
    // Four codes per byte: read code quads as 32-bit lanes.
    const hn::ScalableTag<int32_t> d32;
    const hn::Repartition<uint8_t, decltype(d32)> d8;
    const hn::Rebind<uint8_t, decltype(d32)> d8_quarter;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d32));
    int64_t i = 0;
    for (; i + 4 * n <= count; i += 4 * n) {
      const auto quad = hn::BitCast(d32, hn::LoadU(d8, codes + i));
      auto packed = hn::And(quad, hn::Set(d32, 0x3));
      packed = hn::Or(packed, hn::And(hn::ShiftRight<6>(quad), hn::Set(d32, 0xC)));
      packed = hn::Or(packed, hn::And(hn::ShiftRight<12>(quad), hn::Set(d32, 0x30)));
      packed = hn::Or(packed, hn::And(hn::ShiftRight<18>(quad), hn::Set(d32, 0xC0)));
      hn::StoreU(hn::DemoteTo(d8_quarter, packed), d8_quarter, out + i / 4);
    }
    for (; i < count; i += 4) {
      out[i / 4] = static_cast<uint8_t>(codes[i] | (codes[i + 1] << 2) | (codes[i + 2] << 4) | (codes[i + 3] << 6));
    }
    return;
  }
#endif
  // 3, 5 and 6 bits (and every width on the scalar target) straddle words; these widths are rare, the scalar bit stream is enough.
  PackCodesRef(codes, count, bits, words);
}

}  // namespace stquant::quant::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // STQUANT_QUANT_SIMD_INL_H_
