// The expressions of the architecture table (src/model/arch/README.md): rule conditions, split
// sizes, reshape dimensions, value-op constants and config fields, written as a small Python-like
// language over config.json values, a tensor's shape and the groups its name matched:
//
//   expr   := or;  or := and ("or" and)*;  and := not ("and" not)*;  not := "not" not | cmp
//   cmp    := sum [("==" | "!=" | "<" | "<=" | ">" | ">=") sum]
//   sum    := prod (("+" | "-") prod)*;  prod := unary (("*" | "/" | "//" | "%") unary)*
//   unary  := "-" unary | atom
//   atom   := number | 'string' | true | false | null | "(" expr ")"
//           | ndim | shape "[" expr "]"       the tensor being matched (negative index from the end)
//           | "$" digits                      a group of the rule's regex (a decimal number or text)
//           | len "(" expr ")"                length of a list, string or object
//           | index "(" expr "," expr ")"     position of the first list element equal to a value
//           | path                            a config value: name ("." name | "[" int "]")*
//
// Semantics follow Python: integers stay integers (int64; "/" gives a float, "//" and "%" floor),
// truthiness of 0 / 0.0 / false / null / "" / [] / {} is false, `and`/`or` short-circuit. A path
// names a config.json value after the entry's defaults are applied (mlx-lm's ModelArgs); a path
// that is absent is an error naming it ("$1" beyond the groups, shape[] out of range: errors too).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "stquant/status.h"

namespace stquant::model {

// What an expression may refer to while it is evaluated.
struct ExprScope {
  // A config path ("a.b[0]") -> its value, or nullptr when absent.
  std::function<const nlohmann::json*(const std::string& path)> config;
  const std::vector<int64_t>* shape = nullptr;        // the tensor's shape, when there is one
  const std::vector<std::string>* groups = nullptr;   // groups[i] is "$i" ($0: the whole match)
};

class Expr {
 public:
  // Parses `text`; InvalidInput naming the position on a syntax error.
  static Result<Expr> Parse(const std::string& text);

  Result<nlohmann::json> Evaluate(const ExprScope& scope) const;
  // Evaluate, then Python truthiness.
  Result<bool> Test(const ExprScope& scope) const;
  // Evaluate to an integer (a float with an integral value is accepted).
  Result<int64_t> EvaluateInt(const ExprScope& scope) const;
  // Evaluate to a number (int or float) as a double.
  Result<double> EvaluateNumber(const ExprScope& scope) const;

  const std::string& text() const { return text_; }
  // The config paths the expression reads (for validation and documentation).
  std::vector<std::string> ConfigPaths() const;

  struct Node;

 private:
  std::string text_;
  std::shared_ptr<const Node> root_;
};

// Python truthiness of a JSON value.
bool Truthy(const nlohmann::json& value);

// Looks a path such as "text_config.rope_parameters.rope_theta" or "mlp_multipliers[0]" up in
// `root`; nullptr when any step is absent or of the wrong kind.
const nlohmann::json* LookupPath(const nlohmann::json& root, const std::string& path);

}  // namespace stquant::model
