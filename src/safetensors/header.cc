// Reader::ParseHeader: the strict validation of a safetensors JSON header. Every rule has its own
// message, listed with its reason in docs/safetensors.md; keep the two in step.
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "safetensors/format.h"
#include "stquant/safetensors.h"
#include "util/json_input.h"

namespace stquant::safetensors {

namespace {

using nlohmann::json;
using internal::Printable;

constexpr std::string_view kMetadataKey = "__metadata__";

// One open JSON container while parsing.
struct OpenContainer {
  json* value;       // the object or array being filled (stable: its parent gets nothing else
                     // while it is open, and std::map nodes never move)
  std::string name;  // key in the parent object; "" inside an array and for the root
  std::string key;   // objects: the key whose value comes next
};

// A SAX handler for nlohmann::json::sax_parse that builds the DOM and refuses duplicate keys at
// every nesting level. nlohmann's default parser keeps the last duplicate silently (as Python
// safetensors and MLX do in effect), but a file whose meaning depends on which duplicate wins is
// corrupt. (Not nlohmann's parser callback: in 3.11 its end_object scans the whole parent
// object, which is quadratic in the number of tensors.) Returning false stops the parse.
// clang-tidy's exception-escape flags the implicit special members; the callbacks may throw
// std::bad_alloc, which ParseHeader catches around sax_parse.
class StrictDomBuilder {  // NOLINT(bugprone-exception-escape)
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  json& root() { return root_; }
  const std::string& error() const { return error_; }

  bool null() { return Add(nullptr) != nullptr; }
  bool boolean(bool value) { return Add(value) != nullptr; }
  bool number_integer(number_integer_t value) { return Add(value) != nullptr; }
  bool number_unsigned(number_unsigned_t value) { return Add(value) != nullptr; }
  bool number_float(number_float_t value, const string_t& /*text*/) { return Add(value) != nullptr; }
  bool string(string_t& value) { return Add(std::move(value)) != nullptr; }
  bool binary(binary_t& value) { return Add(json::binary(std::move(value))) != nullptr; }

  bool start_object(std::size_t /*size*/) { return Open(json::object()); }
  bool start_array(std::size_t /*size*/) { return Open(json::array()); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }

  bool key(string_t& key) {
    OpenContainer& top = open_.back();
    // The map itself holds the keys so far: no second index of them.
    if (top.value->contains(key)) {
      error_ = DuplicateKeyMessage(key);
      return false;
    }
    top.key = std::move(key);
    return true;
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const json::exception& e) {
    // e.what() reads "[json.exception.parse_error.101] parse error at line 1, column 9: ...";
    // the bracketed id means nothing to a user.
    std::string_view what = e.what();
    if (const size_t close = what.find("] "); close != std::string_view::npos) what.remove_prefix(close + 2);
    error_ = fmt::format("header is not valid JSON: {}", what);
    return false;
  }

 private:
  // Stores `value` in the innermost open container (or as the root); returns where it went.
  json* Add(json value) {
    if (open_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    OpenContainer& top = open_.back();
    if (top.value->is_array()) {
      top.value->push_back(std::move(value));
      return &top.value->back();
    }
    return &top.value->emplace(top.key, std::move(value)).first.value();
  }

  bool Open(json container) {
    // A valid header nests 3 levels (root, entry, shape); the limit bounds what a hostile one
    // builds before its error is found (100 MB of '[' would otherwise be gigabytes of DOM).
    if (open_.size() >= static_cast<size_t>(util::kMaxJsonDepth)) {
      error_ = fmt::format("header JSON is nested deeper than {} levels", util::kMaxJsonDepth);
      return false;
    }
    std::string name = open_.empty() || open_.back().value->is_array() ? std::string() : open_.back().key;
    json* value = Add(std::move(container));
    open_.push_back({value, std::move(name), {}});
    return true;
  }

  bool Close() {
    open_.pop_back();
    return true;
  }

  std::string DuplicateKeyMessage(const std::string& key) const {
    if (open_.size() == 1) {
      return key == kMetadataKey ? "duplicate key '__metadata__'"
                                 : fmt::format("duplicate tensor name '{}'", Printable(key));
    }
    const std::string where = open_[1].name == kMetadataKey ? std::string("__metadata__")
                                                            : fmt::format("tensor '{}'", Printable(open_[1].name));
    return fmt::format("{}: duplicate key '{}'{}", where, Printable(key), open_.size() > 2 ? " in a nested object" : "");
  }

  json root_;
  std::vector<OpenContainer> open_;
  std::string error_;
};

// Parses `text` into a DOM with StrictDomBuilder. Exceptions stop here.
Result<json> ParseStrictJson(std::string_view text, const std::string& path) {
  StrictDomBuilder builder;
  try {
    if (!json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json, /*strict=*/true,
                         /*ignore_comments=*/false)) {
      return Status::InvalidInput(fmt::format("{}: {}", path, builder.error()));
    }
  } catch (const std::bad_alloc&) {
    return Status::InvalidInput(fmt::format("{}: header JSON too large to parse in memory", path));
  } catch (const json::exception& e) {  // not expected from sax_parse; kept as the adapter's net
    return Status::InvalidInput(fmt::format("{}: header is not valid JSON: {}", path, e.what()));
  }
  return std::move(builder.root());
}

// A short description of a JSON value for "found ..." in messages: scalars as written (cut at 40
// characters), containers by kind.
std::string Describe(const json& value) {
  if (value.is_object()) return "an object";
  if (value.is_array()) return fmt::format("an array of {}", value.size());
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// A JSON integer >= 0 ("-0" included), as uint64; nullopt for anything else (floats, strings,
// negatives, integers beyond uint64, which nlohmann stores as floats).
std::optional<uint64_t> NonNegativeInteger(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) return static_cast<uint64_t>(value.get<int64_t>());
  return std::nullopt;
}

// Validates one tensor entry; `fail` prefixes the file and the tensor.
class EntryParser {
 public:
  EntryParser(const std::string& path, const std::string& name) : path_(path), name_(name) {}

  Status Fail(std::string_view what) const {
    return Status::InvalidInput(fmt::format("{}: tensor '{}': {}", path_, Printable(name_), what));
  }

  Result<TensorInfo> Parse(const json& entry, uint64_t data_bytes) const {
    if (!entry.is_object()) return Fail(fmt::format("entry is not an object (found {})", Describe(entry)));
    for (const auto& [key, value] : entry.items()) {
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        return Fail(fmt::format("unknown key '{}' (allowed: dtype, shape, data_offsets)", Printable(key)));
      }
    }
    TensorInfo info;
    info.name = name_;
    STQ_RETURN_IF_ERROR(ParseDTypeField(entry, info));
    STQ_RETURN_IF_ERROR(ParseShapeField(entry, info));
    STQ_RETURN_IF_ERROR(ParseOffsetsField(entry, info));
    // Formatted only on failure: this runs once per tensor of every header.
    auto offsets = [&info] { return fmt::format("data_offsets [{}, {}]", info.begin, info.end); };
    if (info.begin > info.end) return Fail(offsets() + " begin is after end");

    const std::optional<int64_t> elements = internal::ElementCount(info.shape);
    if (!elements) {
      return Fail(fmt::format("shape {} has more than 2^63-1 elements", internal::ShapeString(info.shape)));
    }
    const std::optional<uint64_t> bytes = internal::ByteSize(*elements, info.dtype);
    if (!bytes) {
      return Fail(fmt::format("{} elements of {}-bit dtype {} are not a whole number of bytes", *elements,
                              DTypeBits(info.dtype), DTypeName(info.dtype)));
    }
    if (info.nbytes() != *bytes) {
      return Fail(fmt::format("{} hold {} bytes but dtype {} shape {} needs {} bytes", offsets(), info.nbytes(),
                              DTypeName(info.dtype), internal::ShapeString(info.shape), *bytes));
    }
    // A comparison, not an addition: `end` is untrusted and data_bytes is what the file has.
    if (info.end > data_bytes) {
      return Fail(fmt::format("{} end past data section of {} bytes (incomplete download or corrupt file?)",
                              offsets(), data_bytes));
    }
    return info;
  }

 private:
  Status ParseDTypeField(const json& entry, TensorInfo& info) const {
    const auto it = entry.find("dtype");
    if (it == entry.end()) return Fail("missing 'dtype'");
    if (!it->is_string()) return Fail(fmt::format("'dtype' is not a string (found {})", Describe(*it)));
    const auto& name = it->get_ref<const std::string&>();
    const std::optional<DType> dtype = ParseDType(name);
    if (!dtype) return Fail(fmt::format("unknown dtype '{}'", Printable(name)));
    info.dtype = *dtype;
    return Status::Ok();
  }

  Status ParseShapeField(const json& entry, TensorInfo& info) const {
    const auto it = entry.find("shape");
    if (it == entry.end()) return Fail("missing 'shape'");
    if (!it->is_array()) return Fail(fmt::format("'shape' is not an array (found {})", Describe(*it)));
    info.shape.reserve(it->size());
    for (size_t i = 0; i < it->size(); ++i) {
      const json& dim = (*it)[i];
      const std::optional<uint64_t> value = NonNegativeInteger(dim);
      if (!value) return Fail(fmt::format("shape[{}] is not a non-negative integer (found {})", i, Describe(dim)));
      if (*value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Fail(fmt::format("shape[{}] = {} is larger than 2^63-1", i, *value));
      }
      info.shape.push_back(static_cast<int64_t>(*value));
    }
    return Status::Ok();
  }

  Status ParseOffsetsField(const json& entry, TensorInfo& info) const {
    const auto it = entry.find("data_offsets");
    if (it == entry.end()) return Fail("missing 'data_offsets'");
    if (!it->is_array() || it->size() != 2) {
      return Fail(fmt::format("'data_offsets' is not an array of 2 integers (found {})", Describe(*it)));
    }
    uint64_t values[2];
    for (size_t i = 0; i < 2; ++i) {
      const std::optional<uint64_t> value = NonNegativeInteger((*it)[i]);
      if (!value) {
        return Fail(fmt::format("data_offsets[{}] is not a non-negative integer (found {})", i, Describe((*it)[i])));
      }
      values[i] = *value;
    }
    info.begin = values[0];
    info.end = values[1];
    return Status::Ok();
  }

  const std::string& path_;
  const std::string& name_;
};

Result<std::optional<std::map<std::string, std::string>>> ParseMetadata(const json& value, const std::string& path) {
  if (value.is_null()) return std::optional<std::map<std::string, std::string>>();
  if (!value.is_object()) {
    return Status::InvalidInput(
        fmt::format("{}: __metadata__ is not an object of strings (found {})", path, Describe(value)));
  }
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return Status::InvalidInput(fmt::format("{}: __metadata__: value of key '{}' is not a string (found {})", path,
                                              Printable(key), Describe(item)));
    }
    metadata.emplace(key, item.get<std::string>());
  }
  return std::optional<std::map<std::string, std::string>>(std::move(metadata));
}

// Sorts the tensors into data order, rejects overlaps, and notes gaps and trailing bytes.
Status CheckLayout(std::vector<TensorInfo>& tensors, uint64_t data_bytes, const std::string& path,
                   std::vector<std::string>& warnings) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  // `covered` is the end of the data seen so far and `last` the tensor that reaches it. Zero-size
  // tensors own no bytes: they can neither overlap nor close a gap.
  uint64_t covered = 0;
  const TensorInfo* last = nullptr;
  size_t gaps = 0;
  uint64_t gap_bytes = 0;
  for (const TensorInfo& t : tensors) {
    if (t.begin == t.end) continue;
    if (t.begin < covered) {
      return Status::InvalidInput(fmt::format("{}: tensor '{}': data_offsets [{}, {}] overlap tensor '{}' at [{}, {}]",
                                              path, Printable(t.name), t.begin, t.end, Printable(last->name),
                                              last->begin, last->end));
    }
    if (t.begin > covered) {
      ++gaps;
      gap_bytes += t.begin - covered;
      if (gaps <= Reader::kMaxGapWarnings) {
        warnings.push_back(fmt::format(
            "{}: tensor '{}': data_offsets [{}, {}] start {} bytes after the previous tensor data ends at {} "
            "(gap accepted)",
            path, Printable(t.name), t.begin, t.end, t.begin - covered, covered));
      }
    }
    covered = t.end;
    last = &t;
  }
  if (gaps > Reader::kMaxGapWarnings) {
    warnings.push_back(fmt::format("{}: {} gaps between tensors in all, {} unused bytes (accepted)", path, gaps,
                                   gap_bytes));
  }
  if (covered < data_bytes) {
    warnings.push_back(fmt::format(
        "{}: {} trailing bytes after the last tensor data (data section of {} bytes, tensors end at {}; accepted)",
        path, data_bytes - covered, data_bytes, covered));
  }
  return Status::Ok();
}

}  // namespace

Result<Reader::Header> Reader::ParseHeader(std::string_view text, uint64_t data_bytes,
                                           const std::string& path_for_messages) {
  const std::string& path = path_for_messages;
  // nlohmann would reject bad UTF-8 too, but with a message about JSON syntax; say what it is.
  if (const std::optional<size_t> bad = internal::FindInvalidUtf8(text)) {
    return Status::InvalidInput(fmt::format("{}: header is not valid UTF-8 (byte 0x{:02x} at offset {})", path,
                                            static_cast<unsigned char>(text[*bad]), *bad));
  }
  STQ_ASSIGN_OR_RETURN(const json root, ParseStrictJson(text, path));
  if (!root.is_object()) {
    return Status::InvalidInput(fmt::format("{}: header JSON is not an object (found {})", path, Describe(root)));
  }
  Header header;
  header.tensors.reserve(root.size());
  for (const auto& [name, entry] : root.items()) {
    if (name == kMetadataKey) {
      STQ_ASSIGN_OR_RETURN(header.metadata, ParseMetadata(entry, path));
      continue;
    }
    if (name.empty()) return Status::InvalidInput(fmt::format("{}: tensor '': empty tensor name", path));
    STQ_ASSIGN_OR_RETURN(TensorInfo info, EntryParser(path, name).Parse(entry, data_bytes));
    header.tensors.push_back(std::move(info));
  }
  STQ_RETURN_IF_ERROR(CheckLayout(header.tensors, data_bytes, path, header.warnings));
  return header;
}

}  // namespace stquant::safetensors
