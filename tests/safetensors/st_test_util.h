// Helpers for the safetensors tests: raw files built byte by byte (to break every rule on
// purpose) and a fixture that opens them from a scratch directory.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "stquant/safetensors.h"
#include "util/file_test_util.h"

namespace stquant::safetensors::testing {

using ::stquant::testing::IsOk;
using ::stquant::testing::StatusIs;

// The 8-byte little-endian length `length`.
inline std::string LengthPrefix(uint64_t length) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xFF);
  return out;
}

// A file: length of `header`, `header`, then `data`.
inline std::string RawFile(std::string_view header, std::string_view data = {}) {
  return LengthPrefix(header.size()) + std::string(header) + std::string(data);
}

// Opens raw files written into a fresh scratch directory as "t.safetensors".
class RawFileTest : public ::testing::Test {
 protected:
  Result<std::unique_ptr<Reader>> OpenRaw(const std::string& bytes) {
    ::stquant::testing::WriteBytes(path(), bytes);
    return Reader::Open(path());
  }
  Result<std::unique_ptr<Reader>> OpenHeader(std::string_view header, std::string_view data = {}) {
    return OpenRaw(RawFile(header, data));
  }
  // Expects InvalidInput with one line that starts with the file and contains `what`.
  void ExpectInvalid(const std::string& bytes, const std::string& what) {
    const auto result = OpenRaw(bytes);
    EXPECT_THAT(result, StatusIs(StatusCode::kInvalidInput,
                                 ::testing::AllOf(::testing::StartsWith(path() + ": "), ::testing::HasSubstr(what),
                                                  ::testing::Not(::testing::HasSubstr("\n")))));
  }
  void ExpectInvalidHeader(std::string_view header, std::string_view data, const std::string& what) {
    ExpectInvalid(RawFile(header, data), what);
  }
  std::string path() const { return dir_.File("t.safetensors"); }

  ::stquant::testing::ScratchDir dir_;
};

}  // namespace stquant::safetensors::testing
