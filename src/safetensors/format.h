// Helpers shared by the safetensors reader and writer: byte-size arithmetic that cannot overflow,
// UTF-8 validation and the formatting of names and shapes in messages.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "stquant/dtype.h"
#include "util/printable.h"

namespace stquant::safetensors::internal {

// Product of `shape`, or nullopt when it exceeds INT64_MAX. Checked by division before each
// multiplication, never after. A shape with a 0 dimension has 0 elements, whatever the others.
// REQUIRES: every dimension >= 0.
std::optional<int64_t> ElementCount(std::span<const int64_t> shape);

// Product of the non-zero dimensions of `shape`, or nullopt when it exceeds INT64_MAX. Consumers
// that do arithmetic on single dimensions (a row of `cols` elements times the bits per element)
// bound it, since a zero-size tensor can declare any other dimension.
std::optional<int64_t> NonZeroElementCount(std::span<const int64_t> shape);

// Bytes occupied by `elements` elements of `dtype`, or nullopt when the bit count is not a whole
// number of bytes (possible only for the 4- and 6-bit dtypes). Never overflows: with elements
// <= INT64_MAX and at most 64 bits each the result is below 2^63 + 64.
std::optional<uint64_t> ByteSize(int64_t elements, DType dtype);

// Offset of the first byte of `text` that is not part of well-formed UTF-8 (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF), or nullopt when all of it is.
std::optional<size_t> FindInvalidUtf8(std::string_view text);

// `name` for a one-line message (util/printable.h).
using util::Printable;

// "[2, 3]".
std::string ShapeString(std::span<const int64_t> shape);

}  // namespace stquant::safetensors::internal
