// Packing of integer codes into MLX's uint32 words (spec §4.3): each row is one little-endian,
// least-significant-bit-first bit stream; code i occupies stream bits [i*bits, (i+1)*bits).
// For 3, 5 and 6 bits, codes straddle word boundaries. REQUIRES: count*bits % 32 == 0.
#pragma once

#include <cstdint>
#include <cstring>

namespace stquant::quant {

inline void PackCodesRef(const uint8_t* codes, int64_t count, int bits, uint32_t* words) {
  uint64_t buffer = 0;
  int buffered = 0;
  int64_t word = 0;
  for (int64_t i = 0; i < count; ++i) {
    buffer |= static_cast<uint64_t>(codes[i]) << buffered;
    buffered += bits;
    if (buffered >= 32) {
      words[word++] = static_cast<uint32_t>(buffer);
      buffer >>= 32;
      buffered -= 32;
    }
  }
}

inline uint8_t UnpackCodeRef(const uint32_t* words, int64_t index, int bits) {
  const int64_t bit = index * bits;
  const int64_t word = bit / 32;
  const int shift = static_cast<int>(bit % 32);
  uint64_t window = words[word] >> shift;
  if (shift + bits > 32) window |= static_cast<uint64_t>(words[word + 1]) << (32 - shift);
  return static_cast<uint8_t>(window & ((1u << bits) - 1u));
}

}  // namespace stquant::quant
