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
    SplitEvenOdd16<kT>(raw, even, odd);
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

// Scales (or biases) of `count` groups from lane 0 of `v`, stored as kT at out[0 .. count).
template <DType kT>
HWY_INLINE void StoreGroupValues(VF v, int64_t count, void* out) {
  const DF df;
  HWY_ALIGN float lanes[kMaxLanes];
  if constexpr (kT == DType::kF32) {
    if (count == static_cast<int64_t>(hn::Lanes(df))) return hn::StoreU(v, df, static_cast<float*>(out));
  } else if constexpr (kT == DType::kBF16) {
    // BF16FromFloat: RNE on the bits (no NaN here: the inputs are finite).
    if (count == static_cast<int64_t>(hn::Lanes(df))) {
      const DU du;
      const hn::Rebind<uint16_t, DU> d16;
      const VU bits = hn::ShiftRight<16>(hn::BitCast(du, RoundToBF16(v)));
      return hn::StoreU(hn::DemoteTo(d16, hn::BitCast(DI(), bits)), d16, static_cast<uint16_t*>(out));
    }
  }
  hn::Store(v, df, lanes);
  for (int64_t g = 0; g < count; ++g) StoreElement(kT, out, g, lanes[g]);
}

// Per-chunk group parameters (one lane per group), prepared one chunk ahead of the encoding so
// that their latency (reductions, three dependent divisions) overlaps the previous chunk's work.
struct AffineChunk {
  HWY_ALIGN float scale[kMaxLanes];
  HWY_ALIGN float bias[kMaxLanes];
};

// Pass 1 for groups [g0, g0 + count): scale and bias into `chunk` and into scales/biases (as kT).
// Returns the column of the first group holding NaN/Inf, or -1.
template <DType kT>
HWY_INLINE int64_t AffinePrepareChunk(int bits, int gs, const void* row, int64_t g0, int64_t count,
                                      AffineChunk& chunk, void* scales, void* biases) {
  const DF df;
  const DU du;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  const int64_t step = 2 * n;
  const VF zero = hn::Zero(df);
  const VF inf = hn::Set(df, std::numeric_limits<float>::infinity());
  VF lo[kMaxLanes], hi[kMaxLanes];
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
  const VF max_code = hn::Set(df, static_cast<float>((1 << bits) - 1));
  const auto edge_is_min = hn::Gt(hn::Abs(w_min), hn::Abs(w_max));
  VF scale = hn::Max(hn::Div(hn::Sub(w_max, w_min), max_code), hn::Set(df, 1e-7f));
  scale = hn::IfThenElse(edge_is_min, scale, hn::Neg(scale));
  const VF edge = hn::IfThenElse(edge_is_min, w_min, w_max);
  const VF q0 = hn::Round(hn::Div(edge, scale));
  const auto q0_zero = hn::Eq(q0, zero);
  scale = hn::IfThenElse(q0_zero, scale, hn::Div(edge, q0));
  const VF bias = hn::IfThenZeroElse(q0_zero, edge);
  hn::Store(scale, df, chunk.scale);
  hn::Store(bias, df, chunk.bias);
  const int element_bytes = ElementBytes(kT);
  StoreGroupValues<kT>(scale, count, static_cast<char*>(scales) + g0 * element_bytes);
  StoreGroupValues<kT>(bias, count, static_cast<char*>(biases) + g0 * element_bytes);
  return -1;
}

// Encodes one row of `cols` elements at `row` (already offset) into `out`: packed bytes for
// kPack 4, else one code per byte (8 bits: the packed row; other widths: packed by the caller);
// stores each group's scale and bias (as kT) at scales/biases[g]. Returns the column of the first
// group holding NaN/Inf (outputs are then unspecified), or -1.
template <DType kT, int kPack>
HWY_NOINLINE int64_t AffineEncodeRowT(int bits, int gs, const void* row, int64_t cols, uint8_t* out,
                                      void* scales, void* biases) {
  const DF df;
  const DU du;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  const int64_t step = 2 * n;
  const int64_t groups = cols / gs;
  const VF zero = hn::Zero(df);
  const VF magic = hn::Set(df, 8388608.0f);  // 2^23
  const VF max_code = hn::Set(df, static_cast<float>((1 << bits) - 1));
  AffineChunk chunks[2];
  if (groups == 0) return -1;
  const int log_gs = GroupSizeLog2(gs);
  int64_t bad = AffinePrepareChunk<kT>(bits, gs, row, 0, std::min<int64_t>(n, groups), chunks[0], scales, biases);
  if (HWY_UNLIKELY(bad >= 0)) return bad;
  for (int64_t g0 = 0, c = 0; g0 < groups; g0 += n, ++c) {
    const int64_t count = std::min<int64_t>(n, groups - g0);
    if (g0 + n < groups) {
      bad = AffinePrepareChunk<kT>(bits, gs, row, g0 + n, std::min<int64_t>(n, groups - g0 - n), chunks[(c + 1) & 1],
                                   scales, biases);
      if (HWY_UNLIKELY(bad >= 0)) return bad;
    }
    const AffineChunk& chunk = chunks[c & 1];
    // One flat loop over the chunk's steps (a step never straddles groups): the per-group
    // values are broadcast from memory, and the constants stay in registers.
    const int64_t base = g0 * gs;
    const int64_t span = count * gs;
    for (int64_t j = 0; j < span; j += step) {
      const int64_t g = j >> log_gs;
      const VF s = hn::Set(df, chunk.scale[g]);
      const VF b = hn::Set(df, chunk.bias[g]);
      VF even, odd;
      LoadEvenOdd<kT>(row, base + j, even, odd);
      // clamp(rint(y), 0, max) == rint(clamp(y, 0, max)) for integer bounds, and adding 2^23 to
      // y in [0, 2^23) rounds it to the nearest integer, ties to even, into the low mantissa
      // bits: the lanes are 0x4B000000 + code.
      const VF qe = hn::Add(hn::Min(hn::Max(hn::Div(hn::Sub(even, b), s), zero), max_code), magic);
      const VF qo = hn::Add(hn::Min(hn::Max(hn::Div(hn::Sub(odd, b), s), zero), max_code), magic);
      const VU ce = hn::BitCast(du, qe);
      const VU co = hn::BitCast(du, qo);
      if constexpr (kPack == 4) {
        EmitStep<4>(ce, co, out + (base + j) / 2);
      } else {
        EmitStep<8>(ce, co, out + base + j);
      }
    }
  }
  return -1;
}

}  // namespace stquant::quant::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // STQUANT_QUANT_AFFINE_INL_H_
