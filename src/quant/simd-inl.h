// Highway building blocks shared by the SIMD kernels: loading the input dtype as float32 in
// even/odd element pairs, rounding float32 results to bf16/f16 (MLX computes "in T", spec §10),
// per-group reductions transposed into one lane per group, emitting packed codes, and packing u8
// codes into MLX's uint32 words (spec §4.3). Included once per target by quantize.cc
// (foreach_target).
//
// Layout used by every kernel: a "step" is 2N consecutive elements (N = Lanes(DF) <= 8), loaded
// as two float vectors `even` (elements 0, 2, .., 2N-2) and `odd` (1, 3, .., 2N-1). Group sizes
// are >= 16 >= 2N, so a step never straddles two groups. The codes of a step are emitted from the
// two code vectors with shifts (even | odd << bits), which puts them in stream order for free.

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
#include "quant/element.h"
#include "quant/packing.h"
#include "stquant/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace stquant::quant::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 8 float lanes, so that a step of 2N elements fits in the smallest group (16).
using DF = hn::CappedTag<float, 8>;
using DI = hn::RebindToSigned<DF>;
using DU = hn::RebindToUnsigned<DF>;
using VF = hn::Vec<DF>;
using VI = hn::Vec<DI>;
using VU = hn::Vec<DU>;
constexpr size_t kMaxLanes = hn::MaxLanes(DF());

// The two 16-bit elements of a u32 lane are (low, high) = (even, odd) on little-endian machines.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the bf16/f16 even/odd split assumes little-endian lanes");

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

// One step of 2N 16-bit elements from element i, as N u32 lanes (even element in the low half).
HWY_INLINE VU LoadRaw16(const void* base, int64_t i) {
  return hn::LoadU(DU(), reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(base) + i));
}

// Per-16-bit-half maximum of acc and the magnitudes (sign cleared) of the 16-bit elements in raw.
HWY_INLINE VU MaxMagnitude16(VU acc, VU raw) {
#if HWY_TARGET == HWY_SCALAR
  const DU du;
  const VU mask = hn::Set(du, 0x7FFFu);
  const VU low = hn::Max(hn::And(acc, hn::Set(du, 0xFFFFu)), hn::And(raw, mask));
  const VU high = hn::Max(hn::ShiftRight<16>(acc), hn::And(hn::ShiftRight<16>(raw), mask));
  return hn::Or(low, hn::ShiftLeft<16>(high));
#else
  const hn::Repartition<uint16_t, DU> d16;
  return hn::BitCast(DU(), hn::Max(hn::BitCast(d16, acc), hn::And(hn::BitCast(d16, raw), hn::Set(d16, 0x7FFF))));
#endif
}

// True if a 16-bit half of an accumulator of MaxMagnitude16 is >= limit (Inf/NaN magnitudes).
HWY_INLINE bool AnyHalfAtLeast(VU acc, uint32_t limit) {
  const DU du;
  const DI di;
  const VU high = hn::ShiftRight<16>(acc);
  const VU low = hn::And(acc, hn::Set(du, 0xFFFFu));
  const VI top = hn::BitCast(di, hn::Max(high, low));
  return !hn::AllFalse(di, hn::Gt(top, hn::Set(di, static_cast<int32_t>(limit) - 1)));
}

// Pairs of 16-bit kT elements (bf16 or f16) held in u32 lanes, as float32: the even element is
// the low half of each lane, the odd element the high half.
template <DType kT>
HWY_INLINE void SplitEvenOdd16(VU raw, VF& even, VF& odd) {
  const DF df;
  const DU du;
  if constexpr (kT == DType::kBF16) {
    even = hn::BitCast(df, hn::ShiftLeft<16>(raw));
    odd = hn::BitCast(df, hn::And(raw, hn::Set(du, 0xFFFF0000u)));
  } else {
    even = F16BitsToFloat(hn::And(raw, hn::Set(du, 0xFFFFu)));
    odd = F16BitsToFloat(hn::ShiftRight<16>(raw));
  }
}

// Elements i .. i+2N-1 of an array of kT as float32: even and odd elements.
template <DType kT>
HWY_INLINE void LoadEvenOdd(const void* base, int64_t i, VF& even, VF& odd) {
  if constexpr (kT == DType::kF32) {
    hn::LoadInterleaved2(DF(), static_cast<const float*>(base) + i, even, odd);
  } else {
    SplitEvenOdd16<kT>(LoadRaw16(base, i), even, odd);
  }
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

template <DType kT>
HWY_INLINE VF RoundToT(VF x) {
  if constexpr (kT == DType::kBF16) return RoundToBF16(x);
  if constexpr (kT == DType::kF16) return RoundToF16(x);
  return x;
}

HWY_INLINE VF RoundToDType(DType dtype, VF x) {
  if (dtype == DType::kBF16) return RoundToBF16(x);
  if (dtype == DType::kF16) return RoundToF16(x);
  return x;
}

// v[0 .. N) are per-group vectors; returns one vector whose lane g is op-reduced over v[g]'s lanes.
// Fixed-width targets halve the lanes per group at each level with ConcatEven/ConcatOdd (N-1 ops
// of each kind instead of N full reductions); others reduce each group on its own.
template <class D, class V, class Op>
HWY_INLINE V ReduceTranspose(D d, V* v, Op op) {
  const size_t n = hn::Lanes(d);
#if HWY_HAVE_SCALABLE || HWY_TARGET == HWY_SCALAR
  using T = hn::TFromD<D>;
  HWY_ALIGN T lanes[kMaxLanes * 8];
  HWY_ALIGN T out[kMaxLanes];
  for (size_t g = 0; g < n; ++g) {
    hn::StoreU(v[g], d, lanes);
    T r = lanes[0];
    for (size_t k = 1; k < n; ++k) r = hn::GetLane(op(hn::Set(d, r), hn::Set(d, lanes[k])));
    out[g] = r;
  }
  return hn::LoadU(d, out);
#else
  for (size_t width = n; width > 1; width /= 2) {
    for (size_t k = 0; k < width / 2; ++k) {
      v[k] = op(hn::ConcatEven(d, v[2 * k + 1], v[2 * k]), hn::ConcatOdd(d, v[2 * k + 1], v[2 * k]));
    }
  }
  return v[0];
#endif
}

struct MinOp {
  template <class V>
  HWY_INLINE V operator()(V a, V b) const { return hn::Min(a, b); }
};
struct MaxOp {
  template <class V>
  HWY_INLINE V operator()(V a, V b) const { return hn::Max(a, b); }
};
// Max of the 16-bit halves of u32 lanes (the accumulators of MaxMagnitude16).
struct MaxHalvesOp {
  HWY_INLINE VU operator()(VU a, VU b) const {
#if HWY_TARGET == HWY_SCALAR
    const DU du;
    const VU low = hn::Max(hn::And(a, hn::Set(du, 0xFFFFu)), hn::And(b, hn::Set(du, 0xFFFFu)));
    return hn::Or(low, hn::ShiftLeft<16>(hn::Max(hn::ShiftRight<16>(a), hn::ShiftRight<16>(b))));
#else
    const hn::Repartition<uint16_t, DU> d16;
    return hn::BitCast(DU(), hn::Max(hn::BitCast(d16, a), hn::BitCast(d16, b)));
#endif
  }
};

// log2 of the group size; every valid group size (16 .. 128) is a power of two (quant_spec.cc).
HWY_INLINE int GroupSizeLog2(int gs) {
  int log = 0;
  while ((1 << log) < gs) ++log;
  HWY_ASSERT((1 << log) == gs);
  return log;
}

// Stores the low byte of the first `count` lanes to out[0 .. count).
HWY_INLINE void StoreLowBytes(VU v, int64_t count, uint8_t* out) {
  const DU du;
  if (count == static_cast<int64_t>(hn::Lanes(du))) {
    const hn::Rebind<uint8_t, DU> d8;
#if HWY_HAVE_SCALABLE
    hn::StoreU(hn::DemoteTo(d8, hn::BitCast(DI(), hn::And(v, hn::Set(du, 0xFFu)))), d8, out);
#else
    hn::StoreU(hn::TruncateTo(d8, v), d8, out);
#endif
    return;
  }
  HWY_ALIGN uint32_t lanes[kMaxLanes];
  hn::Store(v, du, lanes);
  for (int64_t g = 0; g < count; ++g) out[g] = static_cast<uint8_t>(lanes[g]);
}

// Writes the codes of one step from the even/odd code vectors: kBits 4 -> N bytes at out (two
// codes per byte, even in the low nibble); kBits 8 -> 2N bytes. Each lane holds its code in the
// low byte (< 2^kBits); for kBits 8 byte 1 must be 0; the other bytes are ignored (truncation
// drops them, so the callers need not clear them).
template <int kBits>
HWY_INLINE void EmitStep(VU even, VU odd, uint8_t* out) {
  [[maybe_unused]] const DU du;  // used by the scalable-vector branches
  static_assert(kBits == 4 || kBits == 8, "4 or 8 bits");
  const VU pair = hn::Or(even, hn::ShiftLeft<kBits>(odd));
  if constexpr (kBits == 4) {
    const hn::Rebind<uint8_t, DU> d8;
#if HWY_HAVE_SCALABLE
    hn::StoreU(hn::DemoteTo(d8, hn::BitCast(DI(), hn::And(pair, hn::Set(du, 0xFFu)))), d8, out);
#else
    hn::StoreU(hn::TruncateTo(d8, pair), d8, out);
#endif
  } else {
    const hn::Rebind<uint16_t, DU> d16;
    auto* out16 = reinterpret_cast<uint16_t*>(out);
#if HWY_HAVE_SCALABLE
    hn::StoreU(hn::DemoteTo(d16, hn::BitCast(DI(), hn::And(pair, hn::Set(du, 0xFFFFu)))), d16, out16);
#else
    hn::StoreU(hn::TruncateTo(d16, pair), d16, out16);
#endif
  }
}
HWY_INLINE void EmitStep4(VI even, VI odd, uint8_t* out) { EmitStep<4>(hn::BitCast(DU(), even), hn::BitCast(DU(), odd), out); }
HWY_INLINE void EmitStep8(VI even, VI odd, uint8_t* out) { EmitStep<8>(hn::BitCast(DU(), even), hn::BitCast(DU(), odd), out); }

// 3, 5, 6 bits: 8 codes (one u64 of bytes) -> 8*kBits contiguous bits = kBits bytes.
template <int kBits>
HWY_INLINE void PackOddWidth(const uint8_t* codes, int64_t count, uint32_t* words) {
  auto* out = reinterpret_cast<uint8_t*>(words);
  uint8_t* const end = out + count * kBits / 8;
  for (int64_t i = 0; i < count; i += 8) {
    uint64_t x;
    std::memcpy(&x, codes + i, 8);
#if HWY_ARCH_X86_64 && HWY_TARGET <= HWY_AVX2
    // Highway's AVX2 and AVX-512 targets require BMI2: one PEXT gathers the 8 fields.
    x = _pext_u64(x, 0x0101010101010101ull * ((1u << kBits) - 1));
#else
    x = (x & 0x00FF00FF00FF00FFull) | (((x >> 8) & 0x00FF00FF00FF00FFull) << kBits);
    x = (x & 0x0000FFFF0000FFFFull) | (((x >> 16) & 0x0000FFFF0000FFFFull) << (2 * kBits));
    x = (x & 0x00000000FFFFFFFFull) | ((x >> 32) << (4 * kBits));
#endif
    if (end - out >= 8) {
      std::memcpy(out, &x, 8);  // the bytes past kBits are overwritten by the next store
    } else {
      std::memcpy(out, &x, kBits);
    }
    out += kBits;
  }
}

// Packs `count` codes of `bits` bits into MLX's words. count * bits % 32 == 0 by the group rule.
HWY_INLINE void PackCodes(const uint8_t* codes, int64_t count, int bits, uint32_t* words) {
  if (bits == 8) {  // one code per byte, little-endian words: the bytes are the words
    std::memcpy(words, codes, count);
    return;
  }
  // 8 codes per u64 for the widths that straddle words (count is a multiple of 8 for them).
  if (bits == 3) return PackOddWidth<3>(codes, count, words);
  if (bits == 5) return PackOddWidth<5>(codes, count, words);
  if (bits == 6) return PackOddWidth<6>(codes, count, words);
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
  PackCodesRef(codes, count, bits, words);
}

}  // namespace stquant::quant::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // STQUANT_QUANT_SIMD_INL_H_
