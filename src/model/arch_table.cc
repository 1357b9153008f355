#include "model/arch_table.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

#include <fmt/format.h>

namespace stquant::model {

namespace {

using nlohmann::json;

// Parsing context: the file, and where in it (for messages).
struct Where {
  const std::string& file;
  std::string at;
  Status Error(const std::string& what) const {
    return Status::InvalidInput(fmt::format("{}: {}{}", file, at.empty() ? "" : at + ": ", what));
  }
};

Status CheckKeys(const json& object, const std::set<std::string>& allowed, const Where& where) {
  for (const auto& [key, value] : object.items()) {
    if (!allowed.count(key)) return where.Error(fmt::format("unknown key '{}'", key));
  }
  return Status::Ok();
}

Result<std::string> String(const json& object, const std::string& key, const Where& where, bool required = true,
                           bool allow_empty = false) {
  auto it = object.find(key);
  if (it == object.end()) {
    if (required) return where.Error(fmt::format("'{}' is required", key));
    return std::string();
  }
  if (!it->is_string() || (it->get<std::string>().empty() && !allow_empty)) {
    return where.Error(fmt::format("'{}' must be a non-empty string", key));
  }
  return it->get<std::string>();
}

// A replacement ("to"): std::regex_replace's format ($1, $&, $$); may be empty.
Result<std::string> Replacement(const json& object, const Where& where) {
  return String(object, "to", where, /*required=*/true, /*allow_empty=*/true);
}

Result<TableRegex> Regex(const json& value, const Where& where) {
  if (!value.is_string() || value.get<std::string>().empty()) return where.Error("a regex must be a non-empty string");
  TableRegex r;
  r.text = value.get<std::string>();
  try {
    r.regex = std::regex(r.text, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    return where.Error(fmt::format("invalid regex '{}': {}", r.text, e.what()));
  }
  return r;
}

Result<std::vector<TableRegex>> RegexList(const json& object, const std::string& key, const Where& where) {
  std::vector<TableRegex> out;
  auto it = object.find(key);
  if (it == object.end()) return out;
  if (!it->is_array()) return where.Error(fmt::format("'{}' must be a list of regexes", key));
  for (const json& item : *it) {
    STQ_ASSIGN_OR_RETURN(TableRegex r, Regex(item, Where{where.file, key}));
    out.push_back(std::move(r));
  }
  return out;
}

// An expression given as a string, or as a JSON number / boolean (its literal).
Result<Expr> ExprOf(const json& value, const Where& where) {
  std::string text;
  if (value.is_string()) {
    text = value.get<std::string>();
  } else if (value.is_number() || value.is_boolean()) {
    text = value.dump();
  } else {
    return where.Error(fmt::format("expected an expression (string or number), got {}", value.dump()));
  }
  Result<Expr> e = Expr::Parse(text);
  if (!e.ok()) return where.Error(e.status().message());
  return e;
}

Result<std::optional<Expr>> OptionalExpr(const json& object, const std::string& key, const Where& where) {
  auto it = object.find(key);
  if (it == object.end()) return std::optional<Expr>();
  STQ_ASSIGN_OR_RETURN(Expr e, ExprOf(*it, where));
  return std::optional<Expr>(std::move(e));
}

struct OpSpec {
  ArchRule::Op op;
  std::set<std::string> keys;  // allowed besides the op key, "if" and "if_present"
};

const std::map<std::string, OpSpec>& OpSpecs() {
  static const std::map<std::string, OpSpec> specs = {
      {"drop", {ArchRule::Op::kDrop, {}}},
      {"rename", {ArchRule::Op::kRename, {"to"}}},
      {"stack", {ArchRule::Op::kStack, {"to", "count"}}},
      {"split", {ArchRule::Op::kSplit, {"axis", "parts"}}},
      {"reshape", {ArchRule::Op::kReshape, {"shape"}}},
      {"transpose", {ArchRule::Op::kTranspose, {"axes"}}},
      {"add", {ArchRule::Op::kAdd, {"value"}}},
      {"multiply", {ArchRule::Op::kMultiply, {"value"}}},
  };
  return specs;
}

Result<ArchRule> ParseRule(const json& j, int index, const std::string& file) {
  Where where{file, fmt::format("sanitize[{}]", index)};
  if (!j.is_object()) return where.Error("a rule must be an object");
  ArchRule rule;
  rule.index = index;
  const OpSpec* spec = nullptr;
  std::string op_name;
  for (const auto& [name, s] : OpSpecs()) {
    if (j.contains(name)) {
      if (spec) return where.Error(fmt::format("a rule has one operation, found '{}' and '{}'", op_name, name));
      spec = &s;
      op_name = name;
    }
  }
  if (!spec) return where.Error("no operation (drop, rename, stack, split, reshape, transpose, add, multiply)");
  std::set<std::string> allowed = spec->keys;
  allowed.insert({op_name, "if", "if_present", "note"});
  STQ_RETURN_IF_ERROR(CheckKeys(j, allowed, where));
  rule.op = spec->op;
  STQ_ASSIGN_OR_RETURN(rule.match, Regex(j[op_name], where));
  where.at += fmt::format(" ({} '{}')", op_name, rule.match.text);
  STQ_ASSIGN_OR_RETURN(rule.condition, OptionalExpr(j, "if", where));
  if (j.contains("if_present")) {
    STQ_ASSIGN_OR_RETURN(TableRegex present, Regex(j["if_present"], where));
    rule.if_present = std::move(present);
  }
  switch (rule.op) {
    case ArchRule::Op::kDrop:
      break;
    case ArchRule::Op::kRename:
    case ArchRule::Op::kStack: {
      STQ_ASSIGN_OR_RETURN(rule.to, Replacement(j, where));
      if (rule.op == ArchRule::Op::kStack) {
        if (rule.match.regex.mark_count() < 1) return where.Error("stack needs a regex group capturing the expert index");
        STQ_ASSIGN_OR_RETURN(rule.count, OptionalExpr(j, "count", where));
      }
      break;
    }
    case ArchRule::Op::kSplit: {
      if (!j.contains("axis") || !j["axis"].is_number_integer()) return where.Error("split needs an integer 'axis'");
      rule.axis = j["axis"].get<int>();
      if (!j.contains("parts") || !j["parts"].is_array() || j["parts"].empty()) {
        return where.Error("split needs a non-empty list 'parts' of {\"to\": ..., [\"size\": ...]}");
      }
      int sized = 0;
      for (const json& p : j["parts"]) {
        if (!p.is_object()) return where.Error("a split part must be an object");
        STQ_RETURN_IF_ERROR(CheckKeys(p, {"to", "size"}, where));
        ArchRule::Part part;
        STQ_ASSIGN_OR_RETURN(part.to, Replacement(p, where));
        STQ_ASSIGN_OR_RETURN(part.size, OptionalExpr(p, "size", where));
        sized += part.size.has_value();
        rule.parts.push_back(std::move(part));
      }
      if (sized != 0 && sized != static_cast<int>(rule.parts.size())) {
        return where.Error("give every split part a 'size', or none (equal parts)");
      }
      break;
    }
    case ArchRule::Op::kReshape: {
      if (!j.contains("shape") || !j["shape"].is_array()) {
        return where.Error("reshape needs a list 'shape' of expressions ([] for a scalar)");
      }
      for (const json& d : j["shape"]) {
        STQ_ASSIGN_OR_RETURN(Expr e, ExprOf(d, where));
        rule.shape.push_back(std::move(e));
      }
      break;
    }
    case ArchRule::Op::kTranspose: {
      if (!j.contains("axes") || !j["axes"].is_array() || j["axes"].empty()) return where.Error("transpose needs 'axes'");
      std::vector<int> sorted;
      for (const json& a : j["axes"]) {
        if (!a.is_number_integer()) return where.Error("transpose axes must be integers");
        rule.axes.push_back(a.get<int>());
      }
      sorted = rule.axes;
      std::sort(sorted.begin(), sorted.end());
      for (size_t i = 0; i < sorted.size(); ++i) {
        if (sorted[i] != static_cast<int>(i)) return where.Error("transpose axes must be a permutation of 0..rank-1");
      }
      break;
    }
    case ArchRule::Op::kAdd:
    case ArchRule::Op::kMultiply: {
      if (!j.contains("value")) return where.Error(fmt::format("{} needs a 'value'", op_name));
      STQ_ASSIGN_OR_RETURN(Expr e, ExprOf(j["value"], where));
      rule.value = std::move(e);
      break;
    }
  }
  return rule;
}

Result<QuantPredicateRule> ParsePredicate(const json& j, int index, const std::string& file) {
  Where where{file, fmt::format("quant_predicate[{}]", index)};
  if (!j.is_object()) return where.Error("an entry must be an object");
  STQ_RETURN_IF_ERROR(CheckKeys(j, {"match", "if", "quantize", "bits", "group_size", "mode", "note"}, where));
  QuantPredicateRule rule;
  if (!j.contains("match")) return where.Error("'match' is required");
  STQ_ASSIGN_OR_RETURN(rule.match, Regex(j["match"], where));
  STQ_ASSIGN_OR_RETURN(rule.condition, OptionalExpr(j, "if", where));
  if (j.contains("quantize")) {
    if (!j["quantize"].is_boolean() || j["quantize"].get<bool>()) {
      return where.Error("'quantize' can only be false (give bits and group_size for other parameters)");
    }
    if (j.contains("bits") || j.contains("group_size") || j.contains("mode")) {
      return where.Error("'quantize': false takes no bits, group_size or mode");
    }
    rule.quantize = false;
    return rule;
  }
  if (!j.contains("bits") || !j["bits"].is_number_integer() || !j.contains("group_size") ||
      !j["group_size"].is_number_integer()) {
    return where.Error("give integer 'bits' and 'group_size' (or 'quantize': false)");
  }
  rule.bits = j["bits"].get<int>();
  rule.group_size = j["group_size"].get<int>();
  QuantSpec spec{QuantMode::kAffine, rule.bits, rule.group_size, false, QuantProfile::kMlxCpu};
  if (j.contains("mode")) {
    STQ_ASSIGN_OR_RETURN(rule.mode, String(j, "mode", where));
    bool known = false;
    for (QuantMode m : {QuantMode::kAffine, QuantMode::kMxfp4, QuantMode::kMxfp8, QuantMode::kNvfp4}) {
      if (ModeInfo(m).name == rule.mode) {
        spec.mode = m;
        known = true;
      }
    }
    if (!known) return where.Error(fmt::format("unknown mode '{}'", rule.mode));
  }
  if (Status s = ValidateQuantSpec(spec); !s.ok()) return where.Error(s.message());
  return rule;
}

Result<ArchEntry> ParseEntry(const std::string& file, const std::string& text) {
  Where where{file, ""};
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return where.Error("not a JSON object");
  STQ_RETURN_IF_ERROR(CheckKeys(j, {"model_type", "aliases", "status", "reason", "mlx_lm", "notes", "args_defaults", "config",
                                    "sanitize", "not_quantizable", "quant_predicate", "keep_dtype"},
                                where));
  ArchEntry e;
  e.file = file;
  STQ_ASSIGN_OR_RETURN(e.model_type, String(j, "model_type", where));
  if (auto it = j.find("aliases"); it != j.end()) {
    if (!it->is_array()) return where.Error("'aliases' must be a list of model_types");
    for (const json& a : *it) {
      if (!a.is_string() || a.get<std::string>().empty()) return where.Error("'aliases' must be a list of model_types");
      e.aliases.push_back(a.get<std::string>());
    }
  }
  STQ_ASSIGN_OR_RETURN(std::string status, String(j, "status", where));
  if (status != "verified" && status != "refused") return where.Error("'status' must be \"verified\" or \"refused\"");
  e.verified = status == "verified";
  STQ_ASSIGN_OR_RETURN(e.reason, String(j, "reason", where, /*required=*/!e.verified));
  if (e.verified && !e.reason.empty()) return where.Error("'reason' is for refused entries (use 'notes')");
  STQ_ASSIGN_OR_RETURN(e.mlx_lm, String(j, "mlx_lm", where));
  if (auto it = j.find("notes"); it != j.end() && !it->is_string()) return where.Error("'notes' must be a string");
  if (auto it = j.find("args_defaults"); it != j.end()) {
    if (!it->is_object()) return where.Error("'args_defaults' must be an object");
    e.args_defaults = *it;
  }
  if (auto it = j.find("config"); it != j.end()) {
    if (!it->is_array()) return where.Error("'config' must be a list");
    for (size_t i = 0; i < it->size(); ++i) {
      const json& f = (*it)[i];
      Where at{file, fmt::format("config[{}]", i)};
      if (!f.is_object()) return at.Error("a config field must be an object");
      STQ_RETURN_IF_ERROR(CheckKeys(f, {"field", "from", "note"}, at));
      ConfigField field;
      STQ_ASSIGN_OR_RETURN(field.field, String(f, "field", at));
      if (!f.contains("from")) return at.Error("'from' is required");
      const json from = f["from"].is_array() ? f["from"] : json::array({f["from"]});
      if (from.empty()) return at.Error("'from' is empty");
      for (const json& candidate : from) {
        STQ_ASSIGN_OR_RETURN(Expr x, ExprOf(candidate, at));
        field.from.push_back(std::move(x));
      }
      e.config.push_back(std::move(field));
    }
  }
  if (auto it = j.find("sanitize"); it != j.end()) {
    if (!it->is_array()) return where.Error("'sanitize' must be a list of rules");
    for (size_t i = 0; i < it->size(); ++i) {
      STQ_ASSIGN_OR_RETURN(ArchRule rule, ParseRule((*it)[i], static_cast<int>(i), file));
      e.sanitize.push_back(std::move(rule));
    }
  }
  STQ_ASSIGN_OR_RETURN(e.not_quantizable, RegexList(j, "not_quantizable", where));
  STQ_ASSIGN_OR_RETURN(e.keep_dtype, RegexList(j, "keep_dtype", where));
  if (auto it = j.find("quant_predicate"); it != j.end()) {
    if (!it->is_array()) return where.Error("'quant_predicate' must be a list");
    for (size_t i = 0; i < it->size(); ++i) {
      STQ_ASSIGN_OR_RETURN(QuantPredicateRule rule, ParsePredicate((*it)[i], static_cast<int>(i), file));
      e.quant_predicate.push_back(std::move(rule));
    }
  }
  return e;
}

}  // namespace

bool TableRegex::Search(const std::string& name, std::smatch* match) const {
  std::smatch local;
  return std::regex_search(name, match ? *match : local, regex);
}

std::string_view ArchRule::OpName() const {
  for (const auto& [name, spec] : OpSpecs()) {
    if (spec.op == op) return name;
  }
  return "?";
}

std::string ArchRule::Describe() const { return fmt::format("sanitize[{}] ({} '{}')", index, OpName(), match.text); }

Result<ArchTable> ArchTable::Parse(const std::vector<std::pair<std::string, std::string>>& files) {
  ArchTable table;
  bool have_generic = false;
  std::map<std::string, std::string> owner;  // model_type or alias -> file
  for (const auto& [file, text] : files) {
    if (!file.ends_with(".json")) return Status::InvalidInput(fmt::format("{}: not a .json file", file));
    const size_t slash = file.rfind('/');
    const size_t start = slash == std::string::npos ? 0 : slash + 1;
    const std::string stem = file.substr(start, file.size() - start - 5);
    STQ_ASSIGN_OR_RETURN(ArchEntry e, ParseEntry(file, text));
    if (stem == "_generic") {
      if (e.model_type != "_generic" || !e.aliases.empty() || !e.verified) {
        return Status::InvalidInput(fmt::format("{}: the generic entry is model_type \"_generic\", verified, no aliases", file));
      }
      table.generic_ = std::move(e);
      have_generic = true;
      continue;
    }
    if (e.model_type != stem) {
      return Status::InvalidInput(fmt::format("{}: model_type '{}' differs from the file name", file, e.model_type));
    }
    std::vector<std::string> names = e.aliases;
    names.push_back(e.model_type);
    for (const std::string& n : names) {
      if (auto [it, fresh] = owner.emplace(n, file); !fresh) {
        return Status::InvalidInput(fmt::format("{}: model_type '{}' is already in {}", file, n, it->second));
      }
    }
    table.entries_.push_back(std::move(e));
  }
  if (!have_generic) return Status::InvalidInput("the architecture table has no _generic.json");
  std::sort(table.entries_.begin(), table.entries_.end(),
            [](const ArchEntry& a, const ArchEntry& b) { return a.model_type < b.model_type; });
  return table;
}

Result<const ArchTable*> ArchTable::Builtin() {
  static const Result<ArchTable>* parsed = new Result<ArchTable>(Parse(EmbeddedArchFiles()));
  if (!parsed->ok()) return Status::Internal("the embedded architecture table: " + parsed->status().message());
  return &**parsed;
}

const ArchEntry* ArchTable::Find(std::string_view model_type) const {
  for (const ArchEntry& e : entries_) {
    if (e.model_type == model_type) return &e;
    for (const std::string& a : e.aliases) {
      if (a == model_type) return &e;
    }
  }
  return nullptr;
}

std::string ArchTable::MarkdownList() const {
  std::string out = "| model_type | aliases (mlx-lm's MODEL_REMAPPING) | status |\n|---|---|---|\n";
  for (const ArchEntry& e : entries_) {
    std::string aliases;
    for (const std::string& a : e.aliases) aliases += fmt::format("{}`{}`", aliases.empty() ? "" : ", ", a);
    out += fmt::format("| `{}` | {} | {} |\n", e.model_type, aliases,
                       e.verified ? "verified" : "refused: " + e.reason);
  }
  return out;
}

}  // namespace stquant::model
