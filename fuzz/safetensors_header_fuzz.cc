// libFuzzer target: Reader::ParseHeader on arbitrary bytes taken as the JSON header text.
//
// Besides "no crash, no sanitizer report", it checks the contract of an accepted header:
// tensors sorted by offset, non-empty unique names, sizes that match dtype x shape, no two
// non-empty tensors sharing a byte; and that the data-section bound is exact: the header parsed
// against a data section of exactly max(end) bytes is accepted without a trailing-bytes warning,
// and against one byte less is refused.
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <set>
#include <string>
#include <string_view>

#include "safetensors/format.h"
#include "stquant/safetensors.h"

namespace {

using stquant::safetensors::Reader;

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

// "<path>: <N> trailing bytes after ...": matched from the start, since other warnings quote tensor
// names, which may contain any text.
bool IsTrailingBytesWarning(std::string_view warning, std::string_view path) {
  if (!warning.starts_with(path) || !warning.substr(path.size()).starts_with(": ")) return false;
  warning.remove_prefix(path.size() + 2);
  size_t digits = 0;
  while (digits < warning.size() && warning[digits] >= '0' && warning[digits] <= '9') ++digits;
  return digits > 0 && warning.substr(digits).starts_with(" trailing bytes after ");
}

void CheckAccepted(const Reader::Header& header, uint64_t data_bytes) {
  std::set<std::string_view> names;
  const stquant::safetensors::TensorInfo* previous = nullptr;
  uint64_t covered = 0;
  for (const auto& t : header.tensors) {
    Require(!t.name.empty() && t.name != "__metadata__");
    Require(names.insert(t.name).second);
    Require(t.begin <= t.end && t.end <= data_bytes);
    const auto elements = stquant::safetensors::internal::ElementCount(t.shape);
    Require(elements.has_value() && *elements == t.num_elements());
    const auto bytes = stquant::safetensors::internal::ByteSize(*elements, t.dtype);
    Require(bytes.has_value() && *bytes == t.nbytes());
    if (previous != nullptr) Require(previous->begin <= t.begin);
    if (t.nbytes() > 0) {
      Require(t.begin >= covered);
      covered = t.end;
    }
    previous = &t;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string path = "fuzz.safetensors";
  auto unbounded = Reader::ParseHeader(text, std::numeric_limits<uint64_t>::max(), path);
  if (!unbounded.ok()) {
    Require(unbounded.status().code() == stquant::StatusCode::kInvalidInput);
    Require(unbounded.status().message().find('\n') == std::string::npos);
    return 0;
  }
  CheckAccepted(*unbounded, std::numeric_limits<uint64_t>::max());

  uint64_t end = 0;
  for (const auto& t : unbounded->tensors) end = std::max(end, t.end);
  auto exact = Reader::ParseHeader(text, end, path);
  Require(exact.ok());
  CheckAccepted(*exact, end);
  for (const std::string& warning : exact->warnings) Require(!IsTrailingBytesWarning(warning, path));
  if (end > 0) {
    auto short_by_one = Reader::ParseHeader(text, end - 1, path);
    Require(!short_by_one.ok());
    Require(short_by_one.status().message().find("end past data section") != std::string::npos);
  }
  return 0;
}
