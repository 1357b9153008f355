#include "model/arch_expr.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace stquant::model {

namespace {

enum class Kind { kLiteral, kPath, kShape, kNdim, kGroup, kNeg, kNot, kAnd, kOr, kBinary, kCall };

}  // namespace

// clang-tidy's exception-escape flags the implicit special members (a json literal's destructor
// may allocate); nodes are built once, when the embedded table is parsed.
struct Expr::Node {  // NOLINT(bugprone-exception-escape)
  Kind kind = Kind::kLiteral;
  nlohmann::json literal;         // kLiteral
  std::string name;               // kPath: the path; kBinary: the operator
  int group = 0;                  // kGroup
  std::shared_ptr<const Node> a, b;
  std::vector<std::shared_ptr<const Node>> args;  // kCall (name: the function)
};

namespace {

using Node = Expr::Node;
using NodePtr = std::shared_ptr<const Node>;

class Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) {}

  Result<NodePtr> ParseAll() {
    STQ_ASSIGN_OR_RETURN(NodePtr node, Or());
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text");
    return node;
  }

 private:
  Status Error(const std::string& what) const {
    return Status::InvalidInput(fmt::format("expression '{}': {} at offset {}", text_, what, pos_));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  // Consumes `token` (a word only when not followed by an identifier character).
  bool Accept(std::string_view token) {
    SkipSpace();
    if (text_.compare(pos_, token.size(), token) != 0) return false;
    const bool word = std::isalpha(static_cast<unsigned char>(token[0]));
    const size_t end = pos_ + token.size();
    if (word && end < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[end])) || text_[end] == '_')) {
      return false;
    }
    pos_ = end;
    return true;
  }
  static NodePtr Make(Kind kind, NodePtr a = nullptr, NodePtr b = nullptr, std::string name = "") {
    auto n = std::make_shared<Node>();
    n->kind = kind;
    n->a = std::move(a);
    n->b = std::move(b);
    n->name = std::move(name);
    return n;
  }

  Result<NodePtr> Or() {
    STQ_ASSIGN_OR_RETURN(NodePtr left, And());
    while (Accept("or")) {
      STQ_ASSIGN_OR_RETURN(NodePtr right, And());
      left = Make(Kind::kOr, left, right);
    }
    return left;
  }
  Result<NodePtr> And() {
    STQ_ASSIGN_OR_RETURN(NodePtr left, Not());
    while (Accept("and")) {
      STQ_ASSIGN_OR_RETURN(NodePtr right, Not());
      left = Make(Kind::kAnd, left, right);
    }
    return left;
  }
  Result<NodePtr> Not() {
    if (Accept("not")) {
      STQ_ASSIGN_OR_RETURN(NodePtr inner, Not());
      return Make(Kind::kNot, inner);
    }
    return Compare();
  }
  Result<NodePtr> Compare() {
    STQ_ASSIGN_OR_RETURN(NodePtr left, Sum());
    for (const char* op : {"==", "!=", "<=", ">=", "<", ">"}) {
      if (Accept(op)) {
        STQ_ASSIGN_OR_RETURN(NodePtr right, Sum());
        return Make(Kind::kBinary, left, right, op);
      }
    }
    return left;
  }
  Result<NodePtr> Sum() {
    STQ_ASSIGN_OR_RETURN(NodePtr left, Product());
    while (true) {
      const char* op = Accept("+") ? "+" : Accept("-") ? "-" : nullptr;
      if (!op) return left;
      STQ_ASSIGN_OR_RETURN(NodePtr right, Product());
      left = Make(Kind::kBinary, left, right, op);
    }
  }
  Result<NodePtr> Product() {
    STQ_ASSIGN_OR_RETURN(NodePtr left, Unary());
    while (true) {
      const char* op = Accept("*") ? "*" : Accept("//") ? "//" : Accept("/") ? "/" : Accept("%") ? "%" : nullptr;
      if (!op) return left;
      STQ_ASSIGN_OR_RETURN(NodePtr right, Unary());
      left = Make(Kind::kBinary, left, right, op);
    }
  }
  Result<NodePtr> Unary() {
    if (Accept("-")) {
      STQ_ASSIGN_OR_RETURN(NodePtr inner, Unary());
      return Make(Kind::kNeg, inner);
    }
    return Atom();
  }
  Result<NodePtr> Atom() {
    SkipSpace();
    if (pos_ >= text_.size()) return Error("expected a value");
    const char c = text_[pos_];
    if (Accept("(")) {
      STQ_ASSIGN_OR_RETURN(NodePtr inner, Or());
      if (!Accept(")")) return Error("expected ')'");
      return inner;
    }
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') return Number();
    if (c == '\'') {
      const size_t end = text_.find('\'', pos_ + 1);
      if (end == std::string::npos) return Error("unterminated string");
      NodePtr n = Literal(text_.substr(pos_ + 1, end - pos_ - 1));
      pos_ = end + 1;
      return n;
    }
    if (c == '$') {
      size_t end = pos_ + 1;
      while (end < text_.size() && std::isdigit(static_cast<unsigned char>(text_[end]))) ++end;
      if (end == pos_ + 1 || end - pos_ > 3) return Error("expected a group number after '$'");
      auto n = std::make_shared<Node>();
      n->kind = Kind::kGroup;
      n->group = std::stoi(text_.substr(pos_ + 1, end - pos_ - 1));
      pos_ = end;
      return NodePtr(n);
    }
    if (Accept("true")) return Literal(true);
    if (Accept("false")) return Literal(false);
    if (Accept("null")) return Literal(nullptr);
    if (Accept("ndim")) return Make(Kind::kNdim);
    if (Accept("shape")) {
      if (!Accept("[")) return Error("expected '[' after shape");
      STQ_ASSIGN_OR_RETURN(NodePtr index, Or());
      if (!Accept("]")) return Error("expected ']'");
      return Make(Kind::kShape, index);
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      for (const char* function : {"len", "index"}) {
        const size_t save = pos_;
        if (Accept(function) && Accept("(")) return Call(function);
        pos_ = save;
      }
      return Path();
    }
    return Error("unexpected character");
  }
  // The arguments of a call whose "name(" was read.
  Result<NodePtr> Call(const char* name) {
    auto n = std::make_shared<Node>();
    n->kind = Kind::kCall;
    n->name = name;
    if (!Accept(")")) {
      do {
        STQ_ASSIGN_OR_RETURN(NodePtr arg, Or());
        n->args.push_back(std::move(arg));
      } while (Accept(","));
      if (!Accept(")")) return Error("expected ')' after the arguments");
    }
    const size_t want = n->name == "len" ? 1 : 2;
    if (n->args.size() != want) return Error(fmt::format("{}() takes {} argument(s)", n->name, want));
    return NodePtr(n);
  }

  static NodePtr Literal(nlohmann::json value) {
    auto n = std::make_shared<Node>();
    n->literal = std::move(value);
    return n;
  }
  Result<NodePtr> Number() {
    size_t end = pos_;
    bool is_float = false;
    while (end < text_.size()) {
      const char d = text_[end];
      if (std::isdigit(static_cast<unsigned char>(d))) {
        ++end;
      } else if (d == '.' || d == 'e' || d == 'E' || ((d == '-' || d == '+') && end > pos_ && (text_[end - 1] == 'e' || text_[end - 1] == 'E'))) {
        is_float = true;
        ++end;
      } else {
        break;
      }
    }
    const std::string token = text_.substr(pos_, end - pos_);
    if (is_float) {
      double value = 0;
      auto [p, ec] = std::from_chars(token.data(), token.data() + token.size(), value);
      if (ec != std::errc() || p != token.data() + token.size()) return Error("malformed number");
      pos_ = end;
      return Literal(value);
    }
    int64_t value = 0;
    auto [p, ec] = std::from_chars(token.data(), token.data() + token.size(), value);
    if (ec != std::errc() || p != token.data() + token.size()) return Error("malformed integer");
    pos_ = end;
    return Literal(value);
  }
  Result<NodePtr> Path() {
    size_t end = pos_;
    auto ident = [&] {
      const size_t start = end;
      while (end < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[end])) || text_[end] == '_')) ++end;
      return end > start;
    };
    ident();
    while (end < text_.size()) {
      if (text_[end] == '.') {
        ++end;
        if (!ident()) {
          pos_ = end;
          return Error("expected a name after '.'");
        }
      } else if (text_[end] == '[') {
        size_t close = end + 1;
        while (close < text_.size() && std::isdigit(static_cast<unsigned char>(text_[close]))) ++close;
        if (close == end + 1 || close >= text_.size() || text_[close] != ']') {
          pos_ = end;
          return Error("expected [index] in a path");
        }
        end = close + 1;
      } else {
        break;
      }
    }
    auto n = Make(Kind::kPath, nullptr, nullptr, text_.substr(pos_, end - pos_));
    pos_ = end;
    return n;
  }

  const std::string& text_;
  size_t pos_ = 0;
};

bool IsNumber(const nlohmann::json& v) { return v.is_number() || v.is_boolean(); }
double AsDouble(const nlohmann::json& v) { return v.is_boolean() ? (v.get<bool>() ? 1.0 : 0.0) : v.get<double>(); }
bool IsInt(const nlohmann::json& v) { return v.is_number_integer() || v.is_boolean(); }
int64_t AsInt(const nlohmann::json& v) {
  if (v.is_boolean()) return v.get<bool>() ? 1 : 0;
  return v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX)) : v.get<int64_t>();
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

class Evaluator {
 public:
  Evaluator(const std::string& text, const ExprScope& scope) : text_(text), scope_(scope) {}

  Result<nlohmann::json> Eval(const Node& n) const {
    switch (n.kind) {
      case Kind::kLiteral:
        return n.literal;
      case Kind::kPath: {
        const nlohmann::json* v = scope_.config ? scope_.config(n.name) : nullptr;
        if (!v) return Error(fmt::format("config field '{}' is missing", n.name));
        return *v;
      }
      case Kind::kNdim:
        if (!scope_.shape) return Error("'ndim' outside a tensor rule");
        return nlohmann::json(static_cast<int64_t>(scope_.shape->size()));
      case Kind::kShape: {
        if (!scope_.shape) return Error("'shape' outside a tensor rule");
        STQ_ASSIGN_OR_RETURN(nlohmann::json index, Eval(*n.a));
        if (!IsInt(index)) return Error("shape index is not an integer");
        int64_t i = AsInt(index);
        const int64_t rank = static_cast<int64_t>(scope_.shape->size());
        if (i < 0) i += rank;
        if (i < 0 || i >= rank) return Error(fmt::format("shape[{}] is out of range for rank {}", AsInt(index), rank));
        return nlohmann::json((*scope_.shape)[i]);
      }
      case Kind::kGroup: {
        if (!scope_.groups || n.group >= static_cast<int>(scope_.groups->size())) {
          return Error(fmt::format("${} is not a group of the rule's regex", n.group));
        }
        const std::string& g = (*scope_.groups)[n.group];
        int64_t value = 0;
        auto [p, ec] = std::from_chars(g.data(), g.data() + g.size(), value);
        if (!g.empty() && ec == std::errc() && p == g.data() + g.size()) return nlohmann::json(value);
        return nlohmann::json(g);
      }
      case Kind::kNeg: {
        STQ_ASSIGN_OR_RETURN(nlohmann::json v, Eval(*n.a));
        if (!IsNumber(v)) return Error("'-' of a non-number");
        if (IsInt(v)) return nlohmann::json(-AsInt(v));
        return nlohmann::json(-AsDouble(v));
      }
      case Kind::kNot: {
        STQ_ASSIGN_OR_RETURN(nlohmann::json v, Eval(*n.a));
        return nlohmann::json(!Truthy(v));
      }
      case Kind::kAnd: {
        STQ_ASSIGN_OR_RETURN(nlohmann::json left, Eval(*n.a));
        if (!Truthy(left)) return left;
        return Eval(*n.b);
      }
      case Kind::kOr: {
        STQ_ASSIGN_OR_RETURN(nlohmann::json left, Eval(*n.a));
        if (Truthy(left)) return left;
        return Eval(*n.b);
      }
      case Kind::kBinary:
        return Binary(n);
      case Kind::kCall:
        return Call(n);
    }
    return Error("internal: unknown node");
  }

 private:
  Status Error(const std::string& what) const {
    return Status::InvalidInput(fmt::format("expression '{}': {}", text_, what));
  }

  // len(list | string | object); index(list, value): the position of the first element equal to
  // value (an error when there is none).
  Result<nlohmann::json> Call(const Node& n) const {
    std::vector<nlohmann::json> args;
    for (const auto& a : n.args) {
      STQ_ASSIGN_OR_RETURN(nlohmann::json v, Eval(*a));
      args.push_back(std::move(v));
    }
    if (n.name == "len") {
      if (args[0].is_string()) return nlohmann::json(static_cast<int64_t>(args[0].get<std::string>().size()));
      if (args[0].is_array() || args[0].is_object()) return nlohmann::json(static_cast<int64_t>(args[0].size()));
      return Error(fmt::format("len() of {}", args[0].dump()));
    }
    if (!args[0].is_array()) return Error(fmt::format("index() of {}, not a list", args[0].dump()));
    for (size_t i = 0; i < args[0].size(); ++i) {
      if (args[0][i] == args[1]) return nlohmann::json(static_cast<int64_t>(i));
    }
    return Error(fmt::format("{} is not in the list", args[1].dump()));
  }

  Result<nlohmann::json> Binary(const Node& n) const {
    STQ_ASSIGN_OR_RETURN(nlohmann::json a, Eval(*n.a));
    STQ_ASSIGN_OR_RETURN(nlohmann::json b, Eval(*n.b));
    const std::string& op = n.name;
    if (op == "==" || op == "!=") {
      bool equal;
      if (IsNumber(a) && IsNumber(b)) {
        equal = AsDouble(a) == AsDouble(b);
      } else {
        equal = a == b;
      }
      return nlohmann::json(op == "==" ? equal : !equal);
    }
    if (a.is_string() && b.is_string()) {
      if (op == "<") return nlohmann::json(a.get<std::string>() < b.get<std::string>());
      if (op == "<=") return nlohmann::json(a.get<std::string>() <= b.get<std::string>());
      if (op == ">") return nlohmann::json(a.get<std::string>() > b.get<std::string>());
      if (op == ">=") return nlohmann::json(a.get<std::string>() >= b.get<std::string>());
      if (op == "+") return nlohmann::json(a.get<std::string>() + b.get<std::string>());
    }
    if (!IsNumber(a) || !IsNumber(b)) {
      return Error(fmt::format("'{}' needs numbers, got {} and {}", op, a.dump(), b.dump()));
    }
    if (op == "<") return nlohmann::json(AsDouble(a) < AsDouble(b));
    if (op == "<=") return nlohmann::json(AsDouble(a) <= AsDouble(b));
    if (op == ">") return nlohmann::json(AsDouble(a) > AsDouble(b));
    if (op == ">=") return nlohmann::json(AsDouble(a) >= AsDouble(b));
    if (op == "/") {
      if (AsDouble(b) == 0) return Error("division by zero");
      return nlohmann::json(AsDouble(a) / AsDouble(b));
    }
    if (IsInt(a) && IsInt(b)) {
      const int64_t x = AsInt(a), y = AsInt(b);
      int64_t r = 0;
      if (op == "+" && !__builtin_add_overflow(x, y, &r)) return nlohmann::json(r);
      if (op == "-" && !__builtin_sub_overflow(x, y, &r)) return nlohmann::json(r);
      if (op == "*" && !__builtin_mul_overflow(x, y, &r)) return nlohmann::json(r);
      if (op == "//" || op == "%") {
        if (y == 0) return Error("division by zero");
        if (x == std::numeric_limits<int64_t>::min() && y == -1) return Error("integer overflow");
        const int64_t q = FloorDiv(x, y);
        return nlohmann::json(op == "//" ? q : x - q * y);
      }
      return Error(fmt::format("integer overflow in '{}'", op));
    }
    const double x = AsDouble(a), y = AsDouble(b);
    if (op == "+") return nlohmann::json(x + y);
    if (op == "-") return nlohmann::json(x - y);
    if (op == "*") return nlohmann::json(x * y);
    if (y == 0) return Error("division by zero");
    if (op == "//") return nlohmann::json(std::floor(x / y));
    return nlohmann::json(x - std::floor(x / y) * y);  // Python's float %
  }

  const std::string& text_;
  const ExprScope& scope_;
};

void CollectPaths(const Node& n, std::vector<std::string>& out) {
  if (n.kind == Kind::kPath) out.push_back(n.name);
  if (n.a) CollectPaths(*n.a, out);
  if (n.b) CollectPaths(*n.b, out);
  for (const auto& arg : n.args) CollectPaths(*arg, out);
}

}  // namespace

bool Truthy(const nlohmann::json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer() || v.is_number_unsigned()) return v.get<int64_t>() != 0;
  if (v.is_number_float()) return v.get<double>() != 0.0;
  if (v.is_string()) return !v.get<std::string>().empty();
  return !v.empty();
}

const nlohmann::json* LookupPath(const nlohmann::json& root, const std::string& path) {
  const nlohmann::json* at = &root;
  size_t pos = 0;
  while (pos < path.size()) {
    if (path[pos] == '[') {
      const size_t close = path.find(']', pos);
      if (close == std::string::npos || !at->is_array()) return nullptr;
      size_t index = 0;
      const auto [p, ec] = std::from_chars(path.data() + pos + 1, path.data() + close, index);
      if (ec != std::errc() || p != path.data() + close || index >= at->size()) return nullptr;
      at = &(*at)[index];
      pos = close + 1;
      continue;
    }
    if (path[pos] == '.') ++pos;
    size_t end = pos;
    while (end < path.size() && path[end] != '.' && path[end] != '[') ++end;
    if (!at->is_object()) return nullptr;
    auto it = at->find(path.substr(pos, end - pos));
    if (it == at->end()) return nullptr;
    at = &*it;
    pos = end;
  }
  return at;
}

Result<Expr> Expr::Parse(const std::string& text) {
  Parser parser(text);
  STQ_ASSIGN_OR_RETURN(NodePtr root, parser.ParseAll());
  Expr e;
  e.text_ = text;
  e.root_ = std::move(root);
  return e;
}

Result<nlohmann::json> Expr::Evaluate(const ExprScope& scope) const { return Evaluator(text_, scope).Eval(*root_); }

Result<bool> Expr::Test(const ExprScope& scope) const {
  STQ_ASSIGN_OR_RETURN(nlohmann::json v, Evaluate(scope));
  return Truthy(v);
}

Result<int64_t> Expr::EvaluateInt(const ExprScope& scope) const {
  STQ_ASSIGN_OR_RETURN(nlohmann::json v, Evaluate(scope));
  if (IsInt(v)) return AsInt(v);
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18) return static_cast<int64_t>(d);
  }
  return Status::InvalidInput(fmt::format("expression '{}': {} is not an integer", text_, v.dump()));
}

Result<double> Expr::EvaluateNumber(const ExprScope& scope) const {
  STQ_ASSIGN_OR_RETURN(nlohmann::json v, Evaluate(scope));
  if (IsNumber(v)) return AsDouble(v);
  return Status::InvalidInput(fmt::format("expression '{}': {} is not a number", text_, v.dump()));
}

std::vector<std::string> Expr::ConfigPaths() const {
  std::vector<std::string> out;
  CollectPaths(*root_, out);
  return out;
}

}  // namespace stquant::model
