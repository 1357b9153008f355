// Bit casts between float and its IEEE-754 binary32 pattern.
#pragma once

#include <bit>
#include <cstdint>

namespace stquant::numeric {

inline uint32_t FloatBits(float x) { return std::bit_cast<uint32_t>(x); }
inline float FloatFromBits(uint32_t bits) { return std::bit_cast<float>(bits); }

}  // namespace stquant::numeric
