// Highway mx/nv encoders: MLX CPU's composite-op fp quantizer (spec §8.2, §9.2) on float32
// lanes, with every intermediate rounded to the input dtype as MLX's ops do.
//
// Chunks of N groups as in affine-inl.h: pass 1 reduces |x| per group (as float bits), the
// per-group scale math runs one group per lane with the same IEEE operations as group_params.h,
// and pass 2 encodes. Groups whose scale falls outside the range where the fast path is proven
// equal (rare: subnormal or saturated scales, the 0.32.2 profile's log2) take a per-group path
// that restates the reference.

#if defined(STQUANT_QUANT_FP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STQUANT_QUANT_FP_INL_H_
#undef STQUANT_QUANT_FP_INL_H_
#else
#define STQUANT_QUANT_FP_INL_H_
#endif

#include <algorithm>
#include <array>
#include <cstring>

#include "numeric/e8m0.h"
#include "numeric/fp4.h"
#include "numeric/fp8.h"
#include "quant/group_params.h"
#include "quant/kernels.h"
#include "quant/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace stquant::quant::HWY_NAMESPACE {

// E2M1 code by MLX's argmin rule (spec §5(b)) for lanes with |x| < 2^22, where it equals counting
// the midpoints strictly below |x|; the sign is kept only for a non-zero magnitude.
HWY_INLINE VI E2M1ArgminSmallCount(VF x) {
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

// The same code (in the low byte of each lane; bytes 2-3 are not cleared, see EmitStep) with one
// table lookup. Every E2M1 midpoint m (0.25 .. 5) has at most 2 mantissa
// bits, so |x| > m exactly when u = ceil(bits(|x|) / 2^21) > bits(m) / 2^21. With u clamped to
// 503 + [0, 15], a 16-entry table gives the magnitude for |x| > 0.25 (u >= 501); 0.25 itself is
// the one threshold below the table and is a separate comparison (it also drops the sign of a
// zero code).
HWY_INLINE VI E2M1ArgminSmall(VF x) {
#if HWY_TARGET == HWY_SCALAR
  return E2M1ArgminSmallCount(x);
#else
  const DI di;
  const hn::Repartition<uint8_t, DI> d8;
  // u - 503 -> magnitude: u <= 506 (|x| <= 0.75): 1; 507..509 (<= 1.25): 2; 510..511: 3;
  // 512..513: 4; 514..515: 5; 516..517 (<= 5): 6; >= 518: 7.
  alignas(16) static constexpr uint8_t kTable[16] = {1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7};
  const auto table = hn::LoadDup128(d8, kTable);
  const VI bits = hn::BitCast(di, x);
  const VI magnitude_bits = hn::And(bits, hn::Set(di, 0x7FFFFFFF));
  VI key = hn::ShiftRight<21>(hn::Add(magnitude_bits, hn::Set(di, 0x1FFFFF - (503 << 21))));
  key = hn::Min(hn::Max(key, hn::Zero(di)), hn::Set(di, 15));
  // Bytes 1..3 of each key lane are 0 and read table[0] (= 1): garbage that EmitStep ignores.
  const VI magnitude = hn::BitCast(di, hn::TableLookupBytes(table, hn::BitCast(d8, key)));
  const VI sign = hn::And(hn::ShiftRight<28>(bits), hn::Set(di, 8));
  const auto above_quarter = hn::Gt(magnitude_bits, hn::Set(di, 0x3E800000));  // 0.25f
  return hn::IfThenElseZero(above_quarter, hn::Or(magnitude, sign));
#endif
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

// Accumulates the largest magnitude bits of one step into `acc`: f32: per-lane max of |x| bits;
// bf16/f16: per-16-bit-half max of the raw magnitudes (see AbsMaxBits).
template <DType kT>
HWY_INLINE void AbsMaxStep(const void* base, int64_t i, VU& acc) {
  const DF df;
  const DU du;
  if constexpr (kT == DType::kF32) {
    const float* p = static_cast<const float*>(base) + i;
    const VU mask = hn::Set(du, 0x7FFFFFFFu);
    const VU a = hn::And(hn::BitCast(du, hn::LoadU(df, p)), mask);
    const VU b = hn::And(hn::BitCast(du, hn::LoadU(df, p + hn::Lanes(df))), mask);
    acc = hn::Max(acc, hn::Max(a, b));
  } else {
    acc = MaxMagnitude16(acc, LoadRaw16(base, i));
  }
}

// A group's accumulator as u32 lanes of float32 bits (f32, bf16) or f16 bits (f16), whose lane
// maximum is the group's largest magnitude; magnitudes order like their bit patterns.
template <DType kT>
HWY_INLINE VU AbsMaxLanes(VU acc) {
  const DU du;
  if constexpr (kT == DType::kF32) return acc;
  if constexpr (kT == DType::kBF16) return hn::Max(hn::ShiftLeft<16>(acc), hn::And(acc, hn::Set(du, 0xFFFF0000u)));
  return hn::Max(hn::And(acc, hn::Set(du, 0xFFFFu)), hn::ShiftRight<16>(acc));
}

// Per-chunk state: |x| maxima of `count` groups from column `first`, one lane per group.
// Returns the column of the first group holding NaN/Inf, or -1 (and the float maxima).
template <DType kT>
HWY_INLINE int64_t ChunkAbsMax(const void* row, int64_t first, int64_t count, int gs, VF& amax) {
  const DU du;
  const int64_t n = static_cast<int64_t>(hn::Lanes(du));
  VU lanes[kMaxLanes];
  for (int64_t g = 0; g < count; ++g) {
    VU acc = hn::Zero(du);
    for (int64_t j = 0; j < gs; j += 2 * n) AbsMaxStep<kT>(row, first + g * gs + j, acc);
    lanes[g] = acc;
  }
  for (int64_t g = count; g < n; ++g) lanes[g] = hn::Zero(du);
  VU bits;
  if constexpr (kT == DType::kF32) {
    bits = ReduceTranspose(du, lanes, MaxOp());
  } else {  // reduce the 16-bit halves first, then the two halves of each group's lane
    bits = AbsMaxLanes<kT>(ReduceTranspose(du, lanes, MaxHalvesOp()));
  }
  const uint32_t limit = kT == DType::kF16 ? 0x7C00u : 0x7F800000u;
  const auto bad = hn::Gt(hn::BitCast(DI(), bits), hn::Set(DI(), static_cast<int32_t>(limit) - 1));
  if (HWY_UNLIKELY(!hn::AllFalse(DI(), bad))) {
    HWY_ALIGN uint32_t b[kMaxLanes];
    hn::Store(bits, du, b);
    for (int64_t g = 0; g < count; ++g) {
      if (b[g] >= limit) return first + g * gs;
    }
  }
  amax = kT == DType::kF16 ? F16BitsToFloat(bits) : hn::BitCast(DF(), bits);
  return -1;
}

// Codes of one group by the reference's own formulas (the rare groups outside the fast path),
// written in the row's output format (kBits 4: nibbles, 8: bytes).
template <int kBits>
HWY_INLINE void EmitGroupCodes(const uint8_t* codes, int gs, uint8_t* out) {
  if constexpr (kBits == 8) {
    std::memcpy(out, codes, gs);
  } else {
    for (int j = 0; j < gs; j += 2) out[j / 2] = static_cast<uint8_t>(codes[j] | (codes[j + 1] << 4));
  }
}

#undef STQUANT_16BIT_LANES  // per target
#if !HWY_HAVE_SCALABLE && HWY_TARGET != HWY_SCALAR
#define STQUANT_16BIT_LANES 1
// mx on bf16 input with -124 <= e <= 0, on 16-bit lanes (2N elements per vector instead of N).
// x = w * 2^-e is exact in bf16 (see MxEncodeRowT), and for a normal w it is w's bits plus -e in
// the exponent field. A zero or subnormal w becomes a wrong but tiny value <= 2^(-e-126) <= 0.25
// that way; the callers below treat that region separately.
//
// E2M1 codes of 2N values given as u32 lanes holding the (even, odd) values' "ceil16" bits:
// sign | ceil(|bits| / 2^16), i.e. bf16 bits rounded away from zero. Every E2M1 midpoint m (0.25
// .. 5) is a bf16 value with at most 2 mantissa bits, so |x| > m exactly when ceil16(|x|) >
// bits16(m), and E2M1ArgminSmall's key u = ceil(bits / 2^21) is ceil(ceil16 / 2^5) (nested
// ceilings of divisions compose). Valid for |x| < 2^22. Returns lanes whose low byte is
// even | odd << 4 (other bytes: garbage; see EmitStep).
HWY_INLINE VU E2M1PairBytes(VU ceil16) {
  const DU du;
  const hn::Repartition<int16_t, DU> d16;
  const hn::Repartition<uint8_t, DU> d8;
  alignas(16) static constexpr uint8_t kTable[16] = {1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7};
  const auto table = hn::LoadDup128(d8, kTable);
  const auto x = hn::BitCast(d16, ceil16);
  const auto magnitude = hn::And(x, hn::Set(d16, 0x7FFF));
  auto key = hn::ShiftRight<5>(hn::Add(magnitude, hn::Set(d16, static_cast<int16_t>(0x1F - 503 * 32))));
  key = hn::Min(hn::Max(key, hn::Zero(d16)), hn::Set(d16, 15));
  auto code = hn::BitCast(d16, hn::TableLookupBytes(table, hn::BitCast(d8, key)));  // byte 1: garbage
  code = hn::Or(code, hn::And(hn::ShiftRight<12>(x), hn::Set(d16, 8)));
  code = hn::IfThenElseZero(hn::Gt(magnitude, hn::Set(d16, 0x3E80)), code);  // 0.25 in bf16
  // u32 lane = (even code, odd code) in its 16-bit halves: byte = even | odd << 4.
  const VU lanes = hn::BitCast(du, code);
  return hn::Or(lanes, hn::ShiftRight<12>(lanes));
  (void)du;
}

// The ceil16 bits of even/odd float32 lanes, as (even, odd) halves of u32 lanes. No NaN lanes;
// finite magnitudes cannot carry into the sign.
HWY_INLINE VU Ceil16Pair(VF even, VF odd) {
  const DU du;
  const VU round_up = hn::Set(du, 0xFFFFu);
  return hn::Or(hn::ShiftRight<16>(hn::Add(hn::BitCast(du, even), round_up)),
                hn::And(hn::Add(hn::BitCast(du, odd), round_up), hn::Set(du, 0xFFFF0000u)));
}

HWY_INLINE void StoreStep4(VU pair_bytes, uint8_t* out) {
  const hn::Rebind<uint8_t, DU> d8;
  hn::StoreU(hn::TruncateTo(d8, pair_bytes), d8, out);
}

// mxfp4: writes the N code bytes of one step (2N bf16 elements `raw`, as bits). x = w * 2^-e is
// then exact bf16 bits: its ceil16 bits are the bits themselves. Every |x| <= 0.25 has code 0, so
// the tiny wrong values need nothing.
HWY_INLINE void Mxfp4StepBF16(VU raw, VU shift, uint8_t* out) {
  StoreStep4(E2M1PairBytes(hn::Add(raw, shift)), out);
}

// mxfp8: writes the 2N code bytes of one step, or returns false (writing nothing) if a non-zero w
// lands below 2^-6, in E4M3's subnormal range (rare: |w| < amax / 2^15); a zero w is sign | 0.
HWY_INLINE bool Mxfp8StepBF16(VU raw, VU shift, uint8_t* out) {
  const hn::Repartition<int16_t, DU> d16;
  const auto w = hn::BitCast(d16, raw);
  const auto w_magnitude = hn::And(w, hn::Set(d16, 0x7FFF));
  const auto zero = hn::Eq(w_magnitude, hn::Zero(d16));
  const auto magnitude = hn::Add(w_magnitude, hn::BitCast(d16, shift));
  const auto tiny = hn::Lt(magnitude, hn::Set(d16, 121 << 7));  // 2^-6
  if (HWY_UNLIKELY(!hn::AllFalse(d16, hn::AndNot(zero, tiny)))) return false;
  // to_fp8's normal branch on bf16 bits: rebias 127 -> 7 and round 7 mantissa bits to 3 (RNE).
  const auto odd = hn::And(hn::ShiftRight<4>(magnitude), hn::Set(d16, 1));
  auto code = hn::ShiftRight<4>(hn::Add(hn::Add(magnitude, hn::Set(d16, static_cast<int16_t>(7 - (120 << 7)))), odd));
  code = hn::IfThenElse(hn::Gt(magnitude, hn::Set(d16, 0x43E0 - 1)), hn::Set(d16, 0x7E), code);  // >= 448
  code = hn::IfThenZeroElse(zero, code);
  const hn::Repartition<uint16_t, DU> du16;
  code = hn::Or(code, hn::BitCast(d16, hn::And(hn::ShiftRight<8>(hn::BitCast(du16, w)), hn::Set(du16, 0x80))));
  const hn::Rebind<uint8_t, decltype(du16)> d8;
  hn::StoreU(hn::TruncateTo(d8, hn::BitCast(du16, code)), d8, out);
  return true;
}
#endif

// Per-chunk group parameters of the fp modes (one entry per group), prepared one chunk ahead of
// the encoding as in affine-inl.h.
struct FpChunk {
  HWY_ALIGN int32_t exponent[kMaxLanes];  // mx: e
  HWY_ALIGN int32_t fast[kMaxLanes];      // nv: -1 where the fast path applies
  HWY_ALIGN float scale[kMaxLanes];       // nv: the decoded E4M3 scale
  HWY_ALIGN uint32_t shift[kMaxLanes];    // mx, bf16: (-e << 7) in both 16-bit halves
  bool all_fast;                          // nv: every group of the chunk takes the fast path;
                                          // mx, bf16: every e is in [-124, 0] (16-bit lanes)
};

// mx pass 1 for groups [g0, g0 + count): exponents into `chunk`, scale bytes into scales[g].
template <DType kT, QuantMode kMode>
HWY_INLINE int64_t MxPrepareChunk(QuantProfile profile, int gs, const void* row, int64_t g0, int64_t count,
                                  FpChunk& chunk, uint8_t* scales) {
  constexpr float kMaxVal = kMode == QuantMode::kMxfp4 ? 6.0f : 448.0f;
  const DF df;
  const DI di;
  VF amax = hn::Zero(df);
  const int64_t bad = ChunkAbsMax<kT>(row, g0 * gs, count, gs, amax);
  if (HWY_UNLIKELY(bad >= 0)) return bad;
  // MxExponent, kMlxCpu: s = T(amax / maxval); the smallest e with 2^e >= s (0 for s == 0).
  // For a normal s = 2^E (1 + m), e = E + (m != 0), within [-126, 126].
  const VF s = RoundToT<kT>(hn::Div(amax, hn::Set(df, kMaxVal)));
  const VI s_bits = hn::BitCast(di, s);
  const VI biased = hn::ShiftRight<23>(s_bits);
  const VI has_mantissa = hn::VecFromMask(di, hn::Ne(hn::And(s_bits, hn::Set(di, 0x7FFFFF)), hn::Zero(di)));
  VI e = hn::Sub(hn::Sub(biased, hn::Set(di, 127)), has_mantissa);  // mask is -1: subtracting adds 1
  e = hn::IfThenZeroElse(hn::Eq(s_bits, hn::Zero(di)), e);
  hn::Store(e, di, chunk.exponent);
  const bool special = profile != QuantProfile::kMlxCpu ||
                       !hn::AllFalse(di, hn::And(hn::Eq(biased, hn::Zero(di)), hn::Ne(s_bits, hn::Zero(di))));
  if (HWY_UNLIKELY(special)) {  // subnormal s, or the 0.32.2 profile's log2: the scalar rule
    HWY_ALIGN float amax_of[kMaxLanes];
    hn::Store(amax, df, amax_of);
    for (int64_t g = 0; g < count; ++g) chunk.exponent[g] = MxExponent(profile, kT, amax_of[g], kMaxVal);
  }
  // MxScaleByte: e + 127 as uint8 (wrapping).
  const VI exponent = hn::Load(di, chunk.exponent);
  StoreLowBytes(hn::BitCast(DU(), hn::Add(exponent, hn::Set(di, 127))), count, scales + g0);
  chunk.all_fast = false;
#ifdef STQUANT_16BIT_LANES
  if constexpr (kT == DType::kBF16) {
    const VI shift = hn::ShiftLeft<7>(hn::Neg(exponent));
    hn::Store(hn::BitCast(DU(), hn::Or(shift, hn::ShiftLeft<16>(shift))), DU(), chunk.shift);
    const auto in_range = hn::And(hn::Gt(exponent, hn::Set(di, -125)), hn::Lt(exponent, hn::Set(di, 1)));
    chunk.all_fast = hn::CountTrue(di, hn::And(in_range, hn::FirstN(di, static_cast<size_t>(count)))) ==
                     static_cast<size_t>(count);
  }
#endif
  return -1;
}

// mxfp4 / mxfp8 row encoder: packed codes (4 or 8 bits) to `out`, U8 scales to scales[g].
// Returns the column of the first group holding NaN/Inf (outputs are then unspecified), or -1.
template <DType kT, QuantMode kMode>
HWY_NOINLINE int64_t MxEncodeRowT(QuantProfile profile, int gs, const void* row, int64_t cols, uint8_t* out,
                                  uint8_t* scales) {
  constexpr bool kFp4 = kMode == QuantMode::kMxfp4;
  constexpr int kBits = kFp4 ? 4 : 8;
  const DF df;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  const int64_t groups = cols / gs;
  FpChunk chunks[2];
  if (groups == 0) return -1;
  [[maybe_unused]] const int log_gs = GroupSizeLog2(gs);  // unused when every element step is 16-bit
  int64_t bad = MxPrepareChunk<kT, kMode>(profile, gs, row, 0, std::min<int64_t>(n, groups), chunks[0], scales);
  if (HWY_UNLIKELY(bad >= 0)) return bad;
  for (int64_t g0 = 0, c = 0; g0 < groups; g0 += n, ++c) {
    const int64_t count = std::min<int64_t>(n, groups - g0);
    if (g0 + n < groups) {
      bad = MxPrepareChunk<kT, kMode>(profile, gs, row, g0 + n, std::min<int64_t>(n, groups - g0 - n),
                                      chunks[(c + 1) & 1], scales);
      if (HWY_UNLIKELY(bad >= 0)) return bad;
    }
    const FpChunk& chunk = chunks[c & 1];
#ifdef STQUANT_16BIT_LANES
    if (kT == DType::kBF16 && HWY_LIKELY(chunk.all_fast)) {
      // Every group on 16-bit lanes: one flat loop over the chunk's steps (see AffineEncodeRowT).
      const int64_t base = g0 * gs;
      const int64_t span = count * gs;
      for (int64_t j = 0; j < span; j += 2 * n) {
        const int64_t g = j >> log_gs;
        const VU shift = hn::Set(DU(), chunk.shift[g]);
        const VU raw = LoadRaw16(row, base + j);
        if constexpr (kFp4) {
          StoreStep4(E2M1PairBytes(hn::Add(raw, shift)), out + (base + j) / 2);
        } else {
          if (HWY_LIKELY(Mxfp8StepBF16(raw, shift, out + base + j))) continue;
          const VF factor = hn::Set(df, numeric::ExactPow2(-chunk.exponent[g]));
          VF even, odd;
          LoadEvenOdd<kT>(row, base + j, even, odd);
          EmitStep8(E4M3Encode(hn::Mul(even, factor)), E4M3Encode(hn::Mul(odd, factor)), out + base + j);
        }
      }
      continue;
    }
#endif
    for (int64_t g = 0; g < count; ++g) {
      const int exponent = chunk.exponent[g];
      const int64_t start = (g0 + g) * gs;
      uint8_t* group_out = out + start * kBits / 8;
      if (HWY_UNLIKELY(exponent < -126 || exponent > 126)) {
        // MLX divides by T(2^e), which is not a power-of-two multiplication out there.
        const float divisor = RoundTo(kT, numeric::ExactPow2(exponent));
        uint8_t codes[128];
        for (int j = 0; j < gs; ++j) {
          const float x = RoundTo(kT, LoadElement(kT, row, start + j) / divisor);
          codes[j] = kFp4 ? numeric::E2M1FromFloatArgmin(x) : numeric::E4M3FromFloat(x);
        }
        EmitGroupCodes<kBits>(codes, gs, group_out);
        continue;
      }
      // Dividing by 2^e equals multiplying by 2^-e (exact, one rounding) for 2^-e normal. For
      // e <= 0 and T = bf16/f16 the product is w * 2^|e| with |w * 2^-e| <= ~2 maxval: exact in T,
      // so T-rounding it is the identity and is skipped.
      const VF factor = hn::Set(df, numeric::ExactPow2(-exponent));
      const bool round = kT != DType::kF32 && exponent > 0;
#ifdef STQUANT_16BIT_LANES
      if (kT == DType::kBF16 && exponent >= -124 && exponent <= 0) {
        const VU shift = hn::Set(DU(), static_cast<uint32_t>(-exponent << 7) * 0x10001u);  // both halves
        for (int64_t j = 0; j < gs; j += 2 * n) {
          const VU raw = LoadRaw16(row, start + j);
          if constexpr (kFp4) {
            Mxfp4StepBF16(raw, shift, out + (start + j) / 2);
            continue;
          } else {
            if (HWY_LIKELY(Mxfp8StepBF16(raw, shift, out + start + j))) continue;
          }
          VF even, odd;
          LoadEvenOdd<kT>(row, start + j, even, odd);
          EmitStep8(E4M3Encode(hn::Mul(even, factor)), E4M3Encode(hn::Mul(odd, factor)), out + start + j);
        }
        continue;
      }
#endif
      for (int64_t j = 0; j < gs; j += 2 * n) {
        VF even, odd;
        LoadEvenOdd<kT>(row, start + j, even, odd);
        even = hn::Mul(even, factor);
        odd = hn::Mul(odd, factor);
        if (round) {
          even = RoundToT<kT>(even);
          odd = RoundToT<kT>(odd);
        }
        if constexpr (kFp4) {
#ifdef STQUANT_16BIT_LANES
          StoreStep4(E2M1PairBytes(Ceil16Pair(even, odd)), out + (start + j) / 2);
#else
          EmitStep4(E2M1ArgminSmall(even), E2M1ArgminSmall(odd), out + (start + j) / 2);
#endif
        } else {
          EmitStep8(E4M3Encode(even), E4M3Encode(odd), out + start + j);
        }
      }
    }
  }
  return -1;
}

// nv pass 1 for groups [g0, g0 + count): scales and fast-path flags into `chunk`, bytes into scales[g].
template <DType kT>
HWY_INLINE int64_t NvPrepareChunk(bool global_scale, int gs, const void* row, int64_t g0, int64_t count,
                                  float encode, FpChunk& chunk, uint8_t* scales) {
  const DF df;
  const DI di;
  VF amax = hn::Zero(df);
  const int64_t bad = ChunkAbsMax<kT>(row, g0 * gs, count, gs, amax);
  if (HWY_UNLIKELY(bad >= 0)) return bad;
  // NvScaleByte: to_fp8(T(amax / 6) [* encode]).
  VF s = RoundToT<kT>(hn::Div(amax, hn::Set(df, 6.0f)));
  if (global_scale) s = hn::Mul(s, hn::Set(df, encode));
  const VI bytes = E4M3Encode(s);
  StoreLowBytes(hn::BitCast(DU(), bytes), count, scales + g0);
  // Fast path where 2^-9 <= s <= 400 (false for NaN): the decoded scale d = to_fp8(s) >= s / 2
  // and |w| <= amax, so every |T(w / d) [* encode]| <= ~12.1: inside E2M1ArgminSmall's range
  // and f16's, and d != 0.
  const auto fast = hn::And(hn::Ge(s, hn::Set(df, 1.0f / 512.0f)), hn::Le(s, hn::Set(df, 400.0f)));
  hn::Store(hn::VecFromMask(di, hn::RebindMask(di, fast)), di, chunk.fast);
  chunk.all_fast = hn::CountTrue(df, hn::And(fast, hn::FirstN(df, static_cast<size_t>(count)))) ==
                   static_cast<size_t>(count);
  // E4M3ToFloat of the (non-negative, in the fast lanes) codes: exponent field 0: m * 2^-9;
  // else the code's 7 bits shifted into a float32 with the exponent rebiased 7 -> 127.
  const VF normal = hn::BitCast(df, hn::Add(hn::ShiftLeft<20>(bytes), hn::Set(di, 120 << 23)));
  const VF subnormal = hn::Mul(hn::ConvertTo(df, hn::And(bytes, hn::Set(di, 7))), hn::Set(df, 1.0f / 512.0f));
  hn::Store(hn::IfThenElse(hn::RebindMask(df, hn::Lt(bytes, hn::Set(di, 8))), subnormal, normal), df, chunk.scale);
  return -1;
}

// nvfp4 row encoder; contract as MxEncodeRowT (always 4 bits).
template <DType kT>
HWY_NOINLINE int64_t NvEncodeRowT(bool global_scale, int gs, const void* row, int64_t cols, float encode,
                                  uint8_t* out, uint8_t* scales) {
  const DF df;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  const int64_t groups = cols / gs;
  const VF encode_v = hn::Set(df, encode);
  FpChunk chunks[2];
  if (groups == 0) return -1;
  const int log_gs = GroupSizeLog2(gs);
  int64_t bad = NvPrepareChunk<kT>(global_scale, gs, row, 0, std::min<int64_t>(n, groups), encode, chunks[0], scales);
  if (HWY_UNLIKELY(bad >= 0)) return bad;
  for (int64_t g0 = 0, c = 0; g0 < groups; g0 += n, ++c) {
    const int64_t count = std::min<int64_t>(n, groups - g0);
    if (g0 + n < groups) {
      bad = NvPrepareChunk<kT>(global_scale, gs, row, g0 + n, std::min<int64_t>(n, groups - g0 - n), encode,
                               chunks[(c + 1) & 1], scales);
      if (HWY_UNLIKELY(bad >= 0)) return bad;
    }
    const FpChunk& chunk = chunks[c & 1];
    if (HWY_LIKELY(chunk.all_fast)) {
      // One flat loop over the chunk's steps (see AffineEncodeRowT).
      const int64_t base = g0 * gs;
      const int64_t span = count * gs;
      for (int64_t j = 0; j < span; j += 2 * n) {
        const VF divisor = hn::Set(df, chunk.scale[j >> log_gs]);
        VF even, odd;
        LoadEvenOdd<kT>(row, base + j, even, odd);
        even = RoundToT<kT>(hn::Div(even, divisor));
        odd = RoundToT<kT>(hn::Div(odd, divisor));
        if (global_scale) {
          even = hn::Mul(even, encode_v);
          odd = hn::Mul(odd, encode_v);
        }
#ifdef STQUANT_16BIT_LANES
        StoreStep4(E2M1PairBytes(Ceil16Pair(even, odd)), out + (base + j) / 2);
#else
        EmitStep4(E2M1ArgminSmall(even), E2M1ArgminSmall(odd), out + (base + j) / 2);
#endif
      }
      continue;
    }
    for (int64_t g = 0; g < count; ++g) {
      const int64_t start = (g0 + g) * gs;
      uint8_t* group_out = out + start / 2;
      if (HWY_UNLIKELY(!chunk.fast[g])) {
        const float scale = numeric::E4M3Table()[scales[g0 + g]];
        uint8_t codes[128];
        if (scale == 0.0f) {
          // w / 0 is +-Inf or NaN, and MLX's argmin gives code 0 for both.
          std::memset(codes, 0, gs);
        } else {
          NvEncodeGroupRef(kT, row, start, gs, scale, global_scale, encode, codes);
        }
        EmitGroupCodes<4>(codes, gs, group_out);
        continue;
      }
      const VF divisor = hn::Set(df, chunk.scale[g]);
      for (int64_t j = 0; j < gs; j += 2 * n) {
        VF even, odd;
        LoadEvenOdd<kT>(row, start + j, even, odd);
        even = RoundToT<kT>(hn::Div(even, divisor));
        odd = RoundToT<kT>(hn::Div(odd, divisor));
        if (global_scale) {
          even = hn::Mul(even, encode_v);
          odd = hn::Mul(odd, encode_v);
        }
#ifdef STQUANT_16BIT_LANES
        StoreStep4(E2M1PairBytes(Ceil16Pair(even, odd)), out + (start + j) / 2);
#else
        EmitStep4(E2M1ArgminSmall(even), E2M1ArgminSmall(odd), out + (start + j) / 2);
#endif
      }
    }
  }
  return -1;
}

}  // namespace stquant::quant::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // STQUANT_QUANT_FP_INL_H_
