// Element types of safetensors files, with their on-disk names and sizes.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace stquant {

// Every dtype of the current safetensors specification. The enumerator order is not
// written anywhere; the names (DTypeName) are, and they are frozen.
enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kF16,
  kBF16,
  kU32,
  kI32,
  kF32,
  kU64,
  kI64,
  kF64,
  kC64,
  kF8E4M3,
  kF8E5M2,
  kF8E8M0,
  kF6E2M3,
  kF6E3M2,
  kF4,
};

// "BF16", "F8_E4M3", ... as written in safetensors headers.
std::string_view DTypeName(DType dtype);
// The inverse of DTypeName; nullopt for an unknown name.
std::optional<DType> ParseDType(std::string_view name);
// Size of one element in bits (4 for F4, 6 for F6_*; 8 * bytes otherwise).
int DTypeBits(DType dtype);
inline bool IsFloatingDType(DType d) {
  return d == DType::kF16 || d == DType::kBF16 || d == DType::kF32 || d == DType::kF64;
}

}  // namespace stquant
