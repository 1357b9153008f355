#include "safetensors/format.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <limits>

#include "stquant/safetensors.h"

namespace stquant::safetensors {

int64_t TensorInfo::num_elements() const {
  // Shapes reach a TensorInfo only through the reader or the writer, which both reject overflow.
  return internal::ElementCount(shape).value_or(-1);
}

namespace internal {

std::optional<int64_t> ElementCount(std::span<const int64_t> shape) {
  // A zero dimension makes the product 0 however large the others are: no overflow to report.
  for (const int64_t dim : shape) {
    if (dim == 0) return 0;
  }
  int64_t count = 1;
  for (const int64_t dim : shape) {
    if (count > std::numeric_limits<int64_t>::max() / dim) return std::nullopt;
    count *= dim;
  }
  return count;
}

std::optional<int64_t> NonZeroElementCount(std::span<const int64_t> shape) {
  int64_t count = 1;
  for (const int64_t dim : shape) {
    if (dim == 0) continue;
    if (dim < 0 || count > std::numeric_limits<int64_t>::max() / dim) return std::nullopt;
    count *= dim;
  }
  return count;
}

std::optional<uint64_t> ByteSize(int64_t elements, DType dtype) {
  // Split elements = 8q + r so that bits = 8*q*b + r*b: q*b bytes are always whole, and only the
  // r*b remainder (r < 8) can leave a partial byte.
  const uint64_t bits = static_cast<uint64_t>(DTypeBits(dtype));
  const uint64_t n = static_cast<uint64_t>(elements);
  const uint64_t rest_bits = (n % 8) * bits;
  if (rest_bits % 8 != 0) return std::nullopt;
  return (n / 8) * bits + rest_bits / 8;
}

std::optional<size_t> FindInvalidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  size_t i = 0;
  while (i < size) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    // Length and the allowed range of the second byte (Table 3-7 of the Unicode standard), which
    // excludes overlong forms, surrogates and code points above U+10FFFF.
    size_t length;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (size - i < length) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < length; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    }
    i += length;
  }
  return std::nullopt;
}

std::string ShapeString(std::span<const int64_t> shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace internal
}  // namespace stquant::safetensors
