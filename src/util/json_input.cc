#include "util/json_input.h"

#include <new>

#include <fmt/format.h>

#include "util/printable.h"

namespace stquant::util {

namespace {

// A SAX handler for nlohmann::json::sax_parse: nlohmann's own DOM builder, with the nesting and the
// values counted and the first error kept as a message instead of thrown. Returning false stops
// the parse.
template <class Json>
class LimitedDom {
 public:
  using number_integer_t = typename Json::number_integer_t;
  using number_unsigned_t = typename Json::number_unsigned_t;
  using number_float_t = typename Json::number_float_t;
  using string_t = typename Json::string_t;
  using binary_t = typename Json::binary_t;

  LimitedDom(Json& root, const InputLimit& limit) : dom_(root, /*allow_exceptions_=*/false), limit_(limit) {}

  const std::string& error() const { return error_; }

  bool null() { return Count() && dom_.null(); }
  bool boolean(bool value) { return Count() && dom_.boolean(value); }
  bool number_integer(number_integer_t value) { return Count() && dom_.number_integer(value); }
  bool number_unsigned(number_unsigned_t value) { return Count() && dom_.number_unsigned(value); }
  bool number_float(number_float_t value, const string_t& text) { return Count() && dom_.number_float(value, text); }
  bool string(string_t& value) { return Count() && dom_.string(value); }
  bool binary(binary_t& value) { return Count() && dom_.binary(value); }
  bool key(string_t& value) { return Count() && dom_.key(value); }
  bool start_object(std::size_t size) { return Count() && Enter() && dom_.start_object(size); }
  bool start_array(std::size_t size) { return Count() && Enter() && dom_.start_array(size); }
  bool end_object() {
    --depth_;
    return dom_.end_object();
  }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const nlohmann::json::exception& e) {
    // e.what() reads "[json.exception.parse_error.101] parse error at line 1, column 9: ...";
    // the bracketed id means nothing to a user.
    std::string_view what = e.what();
    if (const size_t close = what.find("] "); close != std::string_view::npos) what.remove_prefix(close + 2);
    error_ = "invalid JSON: " + Printable(what);
    return false;
  }

 private:
  bool Enter() {
    if (++depth_ <= kMaxJsonDepth) return true;
    error_ = fmt::format("invalid JSON: nested deeper than {} levels", kMaxJsonDepth);
    return false;
  }

  bool Count() {
    if (++values_ <= limit_.max_json_values) return true;
    error_ = fmt::format("JSON of more than {} values, over the limit for {}", limit_.max_json_values, limit_.what);
    return false;
  }

  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  const InputLimit& limit_;
  int depth_ = 0;
  uint64_t values_ = 0;
  std::string error_;
};

template <class Json>
Result<Json> Parse(std::string_view text, std::string_view path, const InputLimit& limit) {
  Json root;
  LimitedDom<Json> dom(root, limit);
  try {
    if (!Json::sax_parse(text.begin(), text.end(), &dom, nlohmann::json::input_format_t::json, /*strict=*/true,
                         /*ignore_comments=*/false)) {
      return Status::InvalidInput(fmt::format("{}: {}", Quoted(path), dom.error()));
    }
  } catch (const std::bad_alloc&) {
    return Status::InvalidInput(fmt::format("{}: JSON too large to parse in memory", Quoted(path)));
  } catch (const nlohmann::json::exception& e) {  // not expected from sax_parse; kept as the adapter's net
    return Status::InvalidInput(fmt::format("{}: invalid JSON: {}", Quoted(path), Printable(e.what())));
  }
  return root;
}

}  // namespace

Result<nlohmann::json> ParseJson(std::string_view text, std::string_view path, const InputLimit& limit) {
  return Parse<nlohmann::json>(text, path, limit);
}

Result<nlohmann::ordered_json> ParseOrderedJson(std::string_view text, std::string_view path,
                                                const InputLimit& limit) {
  return Parse<nlohmann::ordered_json>(text, path, limit);
}

}  // namespace stquant::util
