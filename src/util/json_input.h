// JSON from strangers (config.json, the index, generation and tokenizer configs, ollama manifests
// and config blobs): nlohmann's parser with a nesting limit. nlohmann parses iteratively, but
// copying, comparing, dumping and (for ordered_json) destroying a value recurse once per level, so
// a config of [[[[...]]]] 100,000 levels deep overflowed the stack after gigabytes of DOM; real
// configs nest 4 or 5 levels.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "stquant/status.h"
#include "util/input_file.h"

namespace stquant::util {

// Deepest nesting of arrays and objects accepted (the top-level value is level 1).
inline constexpr int kMaxJsonDepth = 64;

// Parses `text` (named `path` in messages), a file of the kind `limit` describes. InvalidInput
// "'<path>': invalid JSON: <where and why>", "'<path>': invalid JSON: nested deeper than 64
// levels" or "'<path>': JSON of more than N values, over the limit for <limit.what>". The parse
// stops at the first error, so at most kMaxJsonDepth containers are ever open and at most
// limit.max_json_values values built. Exceptions stop here.
Result<nlohmann::json> ParseJson(std::string_view text, std::string_view path, const InputLimit& limit);
// The same with the members of objects kept in file order.
Result<nlohmann::ordered_json> ParseOrderedJson(std::string_view text, std::string_view path,
                                                const InputLimit& limit);

}  // namespace stquant::util
