#include "util/printable.h"

#include <fmt/format.h>

namespace stquant::util {

std::string Printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02x}", c);
    } else if (c == '\'' || c == '\\') {
      out += '\\';
      out += ch;
    } else {
      out += ch;
    }
  }
  return out;
}

std::string Quoted(std::string_view text) {
  std::string quoted = "'";
  quoted += Printable(text);
  quoted += '\'';
  return quoted;
}

}  // namespace stquant::util
