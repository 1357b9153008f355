// Highway affine encoder: MLX CPU's affine quantizer (spec §4.1) on float32 lanes.
//
// A row is processed in chunks of N groups (N = float lanes): pass 1 reduces each group's min and
// max to a vector, the N vectors are transposed-reduced into one lane per group, and the scale and
// bias of all N groups are computed at once with the very operations of AffineGroupParams
// (IEEE division, rint = Round, no FMA), lane by lane. Pass 2 re-reads the chunk (still in L1)
// and encodes it, emitting packed codes directly for 4 and 8 bits.

#if defined(STQUANT_QUANT_AFFINE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STQUANT_QUANT_AFFINE_INL_H_
#undef STQUANT_QUANT_AFFINE_INL_H_
#else
#define STQUANT_QUANT_AFFINE_INL_H_
#endif

#include <algorithm>
#include <limits>

#include "quant/group_params.h"
#include "quant/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace stquant::quant::HWY_NAMESPACE {

// Accumulates min/max of one step into lo/hi and the non-finite detector `bad`
// (u32 lanes; kT f32: max |x| bits, >= 0x7F800000 means Inf/NaN; bf16/f16: max of the two
// 16-bit magnitudes per lane, checked per half).
template <DType kT>
HWY_INLINE void MinMaxStep(const void* base, int64_t i, VF& lo, VF& hi, VU& bad) {
  const DF df;
  const DU du;
  if constexpr (kT == DType::kF32) {
    const float* p = static_cast<const float*>(base) + i;
    const VF a = hn::LoadU(df, p);
    const VF b = hn::LoadU(df, p + hn::Lanes(df));
    lo = hn::Min(lo, hn::Min(a, b));
    hi = hn::Max(hi, hn::Max(a, b));
    const VU mask = hn::Set(du, 0x7FFFFFFFu);
    bad = hn::Max(bad, hn::Max(hn::And(hn::BitCast(du, a), mask), hn::And(hn::BitCast(du, b), mask)));
  } else {
    const VU raw = LoadRaw16(base, i);
    VF even, odd;
    if constexpr (kT == DType::kBF16) {
      even = hn::BitCast(df, hn::ShiftLeft<16>(raw));
      odd = hn::BitCast(df, hn::And(raw, hn::Set(du, 0xFFFF0000u)));
    } else {
      even = F16BitsToFloat(hn::And(raw, hn::Set(du, 0xFFFFu)));
      odd = F16BitsToFloat(hn::ShiftRight<16>(raw));
    }
    lo = hn::Min(lo, hn::Min(even, odd));
    hi = hn::Max(hi, hn::Max(even, odd));
    bad = MaxMagnitude16(bad, raw);
  }
}

// True if the detector of MinMaxStep saw a non-finite element.
template <DType kT>
HWY_INLINE bool SawNonFinite(VU bad) {
  const DI di;
  if constexpr (kT == DType::kF32) {
    return !hn::AllFalse(di, hn::Gt(hn::BitCast(di, bad), hn::Set(di, 0x7F800000 - 1)));
  } else {
    return AnyHalfAtLeast(bad, kT == DType::kBF16 ? 0x7F80u : 0x7C00u);
  }
}

template <DType kT>
HWY_INLINE void StoreScalar(void* base, int64_t i, float value) {
  StoreElement(kT, base, i, value);
}

// Encodes one row of `cols` elements at `row` (already offset) into `out`: packed bytes for
// kPack 4 or 8, else u8 codes (one per byte, packed by the caller); stores each group's scale and
// bias (as kT) at scales/biases[g]. Returns the column of the first group holding NaN/Inf
// (outputs from that chunk on are unspecified), or -1.
template <DType kT, int kPack>
HWY_NOINLINE int64_t AffineEncodeRowT(int bits, int gs, const void* row, int64_t cols, uint8_t* out,
                                      void* scales, void* biases) {
  const DF df;
  const DI di;
  const DU du;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  const int64_t step = 2 * n;
  const int64_t groups = cols / gs;
  const VF zero = hn::Zero(df);
  const VF max_code = hn::Set(df, static_cast<float>((1 << bits) - 1));
  const VF inf = hn::Set(df, std::numeric_limits<float>::infinity());
  HWY_ALIGN float scale_of[kMaxLanes];
  HWY_ALIGN float bias_of[kMaxLanes];
  VF lo[kMaxLanes], hi[kMaxLanes];
  for (int64_t g0 = 0; g0 < groups; g0 += n) {
    const int64_t count = std::min<int64_t>(n, groups - g0);
    VU bad = hn::Zero(du);
    for (int64_t g = 0; g < count; ++g) {
      const int64_t start = (g0 + g) * gs;
      VF l = inf, h = hn::Neg(inf);
      for (int64_t j = 0; j < gs; j += step) MinMaxStep<kT>(row, start + j, l, h, bad);
      lo[g] = l;
      hi[g] = h;
    }
    if (HWY_UNLIKELY(SawNonFinite<kT>(bad))) {
      for (int64_t g = 0; g < count; ++g) {
        const int64_t start = (g0 + g) * gs;
        VU b = hn::Zero(du);
        VF l = inf, h = hn::Neg(inf);
        for (int64_t j = 0; j < gs; j += step) MinMaxStep<kT>(row, start + j, l, h, b);
        if (SawNonFinite<kT>(b)) return start;
      }
    }
    for (int64_t g = count; g < n; ++g) lo[g] = hi[g] = zero;
    const VF w_min = ReduceTranspose(df, lo, MinOp());
    const VF w_max = ReduceTranspose(df, hi, MaxOp());
    // AffineGroupParams, one group per lane (group_params.h, spec §4.1 steps 2-6).
    const auto edge_is_min = hn::Gt(hn::Abs(w_min), hn::Abs(w_max));
    VF scale = hn::Max(hn::Div(hn::Sub(w_max, w_min), max_code), hn::Set(df, 1e-7f));
    scale = hn::IfThenElse(edge_is_min, scale, hn::Neg(scale));
    const VF edge = hn::IfThenElse(edge_is_min, w_min, w_max);
    const VF q0 = hn::Round(hn::Div(edge, scale));
    const auto q0_zero = hn::Eq(q0, zero);
    hn::Store(hn::IfThenElse(q0_zero, scale, hn::Div(edge, q0)), df, scale_of);
    hn::Store(hn::IfThenZeroElse(q0_zero, edge), df, bias_of);
    for (int64_t g = 0; g < count; ++g) {
      StoreScalar<kT>(scales, g0 + g, scale_of[g]);
      StoreScalar<kT>(biases, g0 + g, bias_of[g]);
    }
    for (int64_t g = 0; g < count; ++g) {
      const int64_t start = (g0 + g) * gs;
      const VF s = hn::Set(df, scale_of[g]);
      const VF b = hn::Set(df, bias_of[g]);
      for (int64_t j = 0; j < gs; j += step) {
        VF even, odd;
        LoadEvenOdd<kT>(row, start + j, even, odd);
        const VF qe = hn::Round(hn::Div(hn::Sub(even, b), s));
        const VF qo = hn::Round(hn::Div(hn::Sub(odd, b), s));
        const VI ce = hn::ConvertTo(di, hn::Min(hn::Max(qe, zero), max_code));
        const VI co = hn::ConvertTo(di, hn::Min(hn::Max(qo, zero), max_code));
        if constexpr (kPack == 4) {
          EmitStep<4>(ce, co, out + (start + j) / 2);
        } else {
          EmitStep<8>(ce, co, out + start + j);
        }
      }
    }
  }
  return -1;
}

}  // namespace stquant::quant::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // STQUANT_QUANT_AFFINE_INL_H_
