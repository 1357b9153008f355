// The architecture table: one entry per mlx-lm model_type, written as data in
// src/model/arch/<model_type>.json (format: src/model/arch/README.md) and embedded into the binary
// at build time. An entry restates what mlx_lm.convert does to a checkpoint of that type:
// its model's sanitize (tensor rules, applied in order on names and shapes), which weights its
// quantization skips or treats differently (modules without to_quantized, quant_predicate), which
// tensors keep their dtype (cast_predicate), and the config fields its ModelArgs needs.
//
// Parsing is strict: an unknown key, a regex or expression that does not parse, a rule without
// its required fields is an error naming the file and the rule (tests/model/arch_table_test.cc
// loads every entry, so a malformed one fails the build's tests, never a user's run).
#pragma once

#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/arch_expr.h"
#include "stquant/quant_spec.h"
#include "stquant/status.h"

namespace stquant::model {

// A regex of the table: its text (for messages) and the compiled ECMAScript regex. Matching is
// std::regex_search (a match anywhere; anchor with ^ and $).
struct TableRegex {
  std::string text;
  std::regex regex;
  bool Search(const std::string& name, std::smatch* match = nullptr) const;
};

// One sanitize rule. Every rule applies to the tensors whose current name matches `match` (and
// for which `condition` holds), in the order of the entry.
struct ArchRule {
  enum class Op {
    kDrop,       // remove the tensor
    kRename,     // name = regex_replace(name, match, to)
    kStack,      // tensors whose match group 1 is an expert index 0..E-1 -> one tensor [E, ...] named
                 // regex_replace(name, match, to)
    kSplit,      // along `axis` into parts (equal, or of `size` each), part i named
                 // regex_replace(name, match, parts[i].to)
    kReshape,    // to `shape` (one dimension may be -1), without reordering elements
    kTranspose,  // axes permuted: new axis i is old axis axes[i]
    kAdd,        // values + value (MLX: the scalar is rounded to the tensor's dtype first)
    kMultiply,   // values * value (idem)
  };
  Op op = Op::kDrop;
  int index = 0;  // position in the entry's sanitize list (for messages)
  TableRegex match;
  std::optional<Expr> condition;     // "if": per matching tensor (shape, ndim, $n, config)
  std::optional<TableRegex> if_present;  // only when some tensor (before this rule) matches
  std::string to;                    // kRename, kStack
  std::optional<Expr> count;         // kStack: the number of experts the config declares
  int axis = 0;                      // kSplit (negative: from the end)
  struct Part {
    std::string to;
    std::optional<Expr> size;
  };
  std::vector<Part> parts;           // kSplit
  std::vector<Expr> shape;           // kReshape
  std::vector<int> axes;             // kTranspose
  std::optional<Expr> value;         // kAdd, kMultiply

  std::string_view OpName() const;
  std::string Describe() const;  // "rule 3 (split '\.kv_b_proj\.weight$')"
};

// One entry of the model's quant_predicate (first match wins): the module path (a weight's name
// without ".weight") matched, optionally with a condition; `quantize` false keeps it in float,
// else `params` are the bits, group size and, when given, the mode recorded in the config.
struct QuantPredicateRule {
  TableRegex match;
  std::optional<Expr> condition;
  bool quantize = true;
  int bits = 0, group_size = 0;
  std::string mode;  // empty: not recorded (mlx-lm then quantizes as affine)
};

// A field the output config.json gets when it lacks it: the value of the first candidate
// expression that can be evaluated (every path it reads is present).
struct ConfigField {
  std::string field;
  std::vector<Expr> from;
};

struct ArchEntry {
  std::string model_type;
  std::vector<std::string> aliases;  // model_types mlx-lm maps to this one (MODEL_REMAPPING)
  bool verified = false;  // true: "verified"; false: "refused" (reason says why)
  std::string reason;
  std::string mlx_lm;     // the mlx-lm source the entry restates
  nlohmann::json args_defaults = nlohmann::json::object();  // ModelArgs defaults the rules read
  std::vector<ConfigField> config;
  std::vector<ArchRule> sanitize;
  std::vector<TableRegex> not_quantizable;  // weights of modules without to_quantized
  std::vector<QuantPredicateRule> quant_predicate;
  std::vector<TableRegex> keep_dtype;       // not cast to the config dtype (cast_predicate)
  std::string file;  // "src/model/arch/<model_type>.json", for messages
};

class ArchTable {
 public:
  // Parses entries given as (file name, JSON text); the file name without ".json" must be the
  // entry's model_type, "_generic.json" holds the rules for --allow-unknown-architecture.
  static Result<ArchTable> Parse(const std::vector<std::pair<std::string, std::string>>& files);
  // The table embedded at build time (parsed once). Internal error if it does not parse, which
  // tests/model/arch_table_test.cc rules out.
  static Result<const ArchTable*> Builtin();

  // The entry of a model_type or of one of its aliases; nullptr when the table lacks it.
  const ArchEntry* Find(std::string_view model_type) const;
  // The generic rules (experts stacked into switch_mlp, rotary buffers and a tied lm_head dropped).
  const ArchEntry& generic() const { return generic_; }
  const std::vector<ArchEntry>& entries() const { return entries_; }  // sorted by model_type

  // The README's list of supported architectures (Markdown), generated from the entries.
  std::string MarkdownList() const;

 private:
  std::vector<ArchEntry> entries_;
  ArchEntry generic_;
};

// The embedded files: (file name, text), generated by CMake from src/model/arch/*.json.
const std::vector<std::pair<std::string, std::string>>& EmbeddedArchFiles();

}  // namespace stquant::model
