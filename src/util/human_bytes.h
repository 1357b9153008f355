// Byte counts for people: "812 B", "2.75 MiB" (binary units, two decimals).
#pragma once

#include <cstdint>
#include <string>

#include <fmt/format.h>

namespace stquant::util {

inline std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", value, kUnits[unit]);
}

}  // namespace stquant::util
