// Text from strangers (tensor names, file names, JSON parser messages) inside one-line messages.
#pragma once

#include <string>
#include <string_view>

namespace stquant::util {

// `text` for a one-line message: control characters and DEL become \xNN, and `'` and `\` are
// escaped, so that a hostile name cannot break the line or the quoting.
std::string Printable(std::string_view text);

// "'<Printable(text)>'".
std::string Quoted(std::string_view text);

}  // namespace stquant::util
