#include "model/sanitize.h"

#include <charconv>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/tensor_view.h"
#include "safetensors/format.h"

namespace stquant::model {

namespace {

using TensorMap = std::map<std::string, RuleTensor>;

std::string P(std::string_view name) { return safetensors::internal::Printable(name); }

std::string FormatNumber(double v) { return fmt::format("{}", v); }

// Errors of one rule on one tensor.
struct RuleContext {
  const ArchEntry& entry;
  const ArchRule& rule;
  Status Error(const std::string& tensor, const std::string& what) const {
    return Status::InvalidInput(fmt::format("architecture '{}' ({} {}): tensor '{}': {}", entry.model_type, entry.file,
                                            rule.Describe(), P(tensor), what));
  }
  Status Error(const std::string& what) const {
    return Status::InvalidInput(fmt::format("architecture '{}' ({} {}): {}", entry.model_type, entry.file, rule.Describe(), what));
  }
};

std::vector<std::string> Groups(const std::smatch& m) {
  std::vector<std::string> groups;
  for (const auto& g : m) groups.push_back(g.str());
  return groups;
}

// Whether `t` is one the rule applies to (name matches, condition holds); `groups` gets the match.
Result<bool> Applies(const RuleContext& ctx, const ArchArgs& args, const RuleTensor& t, std::vector<std::string>& groups) {
  std::smatch m;
  if (!ctx.rule.match.Search(t.name, &m)) return false;
  groups = Groups(m);
  if (!ctx.rule.condition) return true;
  Result<bool> holds = ctx.rule.condition->Test(args.Scope(&t.shape, &groups));
  if (!holds.ok()) return ctx.Error(t.name, holds.status().message());
  return *holds;
}

std::string Replace(const std::string& name, const TableRegex& regex, const std::string& to) {
  return std::regex_replace(name, regex.regex, to);
}

int NormalizeAxis(int axis, size_t rank) { return axis < 0 ? axis + static_cast<int>(rank) : axis; }

bool IsByteAligned(DType d) { return DTypeBits(d) % 8 == 0; }
bool IsFloatValued(DType d) {
  return d == DType::kBF16 || d == DType::kF16 || d == DType::kF32 || d == DType::kF8E4M3;
}

// Rewrites every piece's view with `fn` and recomputes the tensor's shape. A tensor of several
// pieces (stacked experts) keeps its first axis: `fn` then gets and returns views of [1, ...].
Status ForEachPiece(RuleTensor& t, const std::function<Result<TensorView>(const TensorView&)>& fn) {
  for (PlannedSource& p : t.pieces) {
    STQ_ASSIGN_OR_RETURN(p.view, fn(p.view));
  }
  if (t.pieces.size() == 1) {
    t.shape = t.pieces.front().view.shape;
  } else {
    t.shape = t.pieces.front().view.shape;
    t.shape[0] = static_cast<int64_t>(t.pieces.size());
  }
  return Status::Ok();
}

Status Insert(TensorMap& tensors, RuleTensor t, const RuleContext& ctx) {
  const std::string name = t.name;
  if (!tensors.emplace(name, std::move(t)).second) return ctx.Error(name, "the rule makes a tensor that already exists");
  return Status::Ok();
}

Status Stack(const RuleContext& ctx, const ArchArgs& args, TensorMap& tensors) {
  struct Group {
    std::map<int64_t, std::string> members;  // expert index -> current name
  };
  std::map<std::string, Group> groups;
  for (const auto& [name, t] : tensors) {
    std::vector<std::string> g;
    STQ_ASSIGN_OR_RETURN(bool applies, Applies(ctx, args, t, g));
    if (!applies) continue;
    int64_t index = -1;
    const std::string text = g.size() > 1 ? g[1] : std::string();
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), index);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || index < 0 || text.size() > 9) {
      return ctx.Error(name, fmt::format("group 1 '{}' is not an expert index", P(text)));
    }
    const std::string stacked = Replace(name, ctx.rule.match, ctx.rule.to);
    if (!groups[stacked].members.emplace(index, name).second) {
      return ctx.Error(name, fmt::format("expert {} of '{}' appears twice", index, P(stacked)));
    }
  }
  for (auto& [stacked, group] : groups) {
    const RuleTensor& first = tensors.at(group.members.begin()->second);
    int64_t expected = 0;
    for (const auto& [index, name] : group.members) {
      if (index != expected) {
        return ctx.Error(name, fmt::format("experts of '{}' are not numbered 0..{} (expert {} missing)",
                                           P(stacked), group.members.size() - 1, expected));
      }
      ++expected;
      const RuleTensor& t = tensors.at(name);
      if (t.dtype != first.dtype || t.shape != first.shape) {
        return ctx.Error(name, fmt::format("experts stacked into '{}' differ: '{}' is {} [{}] but '{}' is {} [{}]", P(stacked),
                                           P(first.name), DTypeName(first.dtype), fmt::join(first.shape, ", "), P(t.name),
                                           DTypeName(t.dtype), fmt::join(t.shape, ", ")));
      }
      if (t.pieces.size() != 1) return ctx.Error(name, "stacking a tensor that is already stacked");
      if (t.value_ops.size() != first.value_ops.size()) return ctx.Error(name, "experts with different value ops");
    }
    if (ctx.rule.count) {
      Result<int64_t> count = ctx.rule.count->EvaluateInt(args.Scope());
      if (!count.ok()) return ctx.Error(count.status().message());
      if (*count != static_cast<int64_t>(group.members.size())) {
        return ctx.Error(fmt::format("'{}' stacks {} experts but the config declares {} ({})", P(stacked),
                                     group.members.size(), *count, ctx.rule.count->text()));
      }
    }
    RuleTensor out;
    out.name = stacked;
    out.dtype = first.dtype;
    out.value_ops = first.value_ops;
    out.steps = first.steps;
    out.steps.push_back(fmt::format("stack {} experts ('{}', ...)", group.members.size(), first.name));
    out.shape = first.shape;
    out.shape.insert(out.shape.begin(), static_cast<int64_t>(group.members.size()));
    for (const auto& [index, name] : group.members) {
      PlannedSource piece = tensors.at(name).pieces.front();
      piece.view = UnsqueezeView(piece.view);
      out.pieces.push_back(std::move(piece));
      tensors.erase(name);
    }
    STQ_RETURN_IF_ERROR(Insert(tensors, std::move(out), ctx));
  }
  return Status::Ok();
}

Status Split(const RuleContext& ctx, const ArchArgs& args, RuleTensor t, std::vector<std::string>& groups,
             std::vector<RuleTensor>& out) {
  const ArchRule& rule = ctx.rule;
  const int axis = NormalizeAxis(rule.axis, t.shape.size());
  if (axis < 0 || axis >= static_cast<int>(t.shape.size())) {
    return ctx.Error(t.name, fmt::format("axis {} is out of range for shape [{}]", rule.axis, fmt::join(t.shape, ", ")));
  }
  if (axis == 0 && t.pieces.size() > 1) return ctx.Error(t.name, "splitting stacked experts along the expert axis");
  const int64_t dim = t.shape[axis];
  std::vector<int64_t> sizes;
  for (const ArchRule::Part& part : rule.parts) {
    if (!part.size) {
      const int64_t n = static_cast<int64_t>(rule.parts.size());
      if (dim % n != 0) return ctx.Error(t.name, fmt::format("axis {} ({}) does not split into {} equal parts", rule.axis, dim, n));
      sizes.push_back(dim / n);
      continue;
    }
    Result<int64_t> size = part.size->EvaluateInt(args.Scope(&t.shape, &groups));
    if (!size.ok()) return ctx.Error(t.name, size.status().message());
    if (*size < 0) return ctx.Error(t.name, fmt::format("part size {} is negative", *size));
    sizes.push_back(*size);
  }
  int64_t total = 0;
  bool overflow = false;
  for (int64_t s : sizes) overflow |= __builtin_add_overflow(total, s, &total);
  if (overflow || total != dim) {
    return ctx.Error(t.name, fmt::format("the parts ({}) do not add up to axis {} of shape [{}]", fmt::join(sizes, " + "),
                                         rule.axis, fmt::join(t.shape, ", ")));
  }
  int64_t start = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    RuleTensor part = t;
    part.name = Replace(t.name, rule.match, rule.parts[i].to);
    const int piece_axis = axis;  // stacked pieces are [1, ...]: the same axis
    STQ_RETURN_IF_ERROR(ForEachPiece(part, [&](const TensorView& v) -> Result<TensorView> {
      return SliceView(v, piece_axis, start, sizes[i]);
    }));
    part.steps.push_back(fmt::format("split axis {} [{}:{}] of '{}'", axis, start, start + sizes[i], t.name));
    start += sizes[i];
    out.push_back(std::move(part));
  }
  return Status::Ok();
}

Status Reshape(const RuleContext& ctx, const ArchArgs& args, RuleTensor& t, std::vector<std::string>& groups) {
  std::vector<int64_t> shape;
  int inferred = -1;
  int64_t known = 1;
  for (size_t i = 0; i < ctx.rule.shape.size(); ++i) {
    Result<int64_t> d = ctx.rule.shape[i].EvaluateInt(args.Scope(&t.shape, &groups));
    if (!d.ok()) return ctx.Error(t.name, d.status().message());
    if (*d == -1 && inferred < 0) {
      inferred = static_cast<int>(i);
    } else if (*d < 0) {
      return ctx.Error(t.name, fmt::format("dimension {} of the new shape is {}", i, *d));
    } else if (__builtin_mul_overflow(known, *d, &known)) {
      return ctx.Error(t.name, "the new shape overflows");
    }
    shape.push_back(*d);
  }
  const int64_t elements = ElementCount(t.shape);
  if (inferred >= 0) {
    if (known == 0 || elements % known != 0) {
      return ctx.Error(t.name, fmt::format("shape [{}] cannot be reshaped to [{}]", fmt::join(t.shape, ", "), fmt::join(shape, ", ")));
    }
    shape[inferred] = elements / known;
  }
  if (ElementCount(shape) != elements) {
    return ctx.Error(t.name, fmt::format("shape [{}] cannot be reshaped to [{}]", fmt::join(t.shape, ", "), fmt::join(shape, ", ")));
  }
  if (t.pieces.size() > 1 && (shape.empty() || shape[0] != t.shape[0])) {
    return ctx.Error(t.name, "a reshape of stacked experts must keep the expert axis");
  }
  std::vector<int64_t> piece_shape = shape;
  if (t.pieces.size() > 1) piece_shape[0] = 1;
  STQ_RETURN_IF_ERROR(ForEachPiece(t, [&](const TensorView& v) -> Result<TensorView> {
    Result<TensorView> r = ReshapeView(v, piece_shape);
    if (!r.ok()) return ctx.Error(t.name, r.status().message());
    return r;
  }));
  t.steps.push_back(fmt::format("reshape ({})", fmt::join(shape, ", ")));
  return Status::Ok();
}

Status Transpose(const RuleContext& ctx, RuleTensor& t) {
  const std::vector<int>& axes = ctx.rule.axes;
  if (axes.size() != t.shape.size()) {
    return ctx.Error(t.name, fmt::format("axes ({}) for shape [{}] of rank {}", fmt::join(axes, ", "), fmt::join(t.shape, ", "),
                                         t.shape.size()));
  }
  if (t.pieces.size() > 1 && axes[0] != 0) return ctx.Error(t.name, "a transpose of stacked experts must keep the expert axis");
  STQ_RETURN_IF_ERROR(ForEachPiece(t, [&](const TensorView& v) -> Result<TensorView> { return TransposeView(v, axes); }));
  t.steps.push_back(fmt::format("transpose ({})", fmt::join(axes, ", ")));
  return Status::Ok();
}

Status ValueOperation(const RuleContext& ctx, const ArchArgs& args, RuleTensor& t, std::vector<std::string>& groups) {
  if (!IsFloatValued(t.dtype)) return ctx.Error(t.name, fmt::format("an elementwise op on a {} tensor", DTypeName(t.dtype)));
  Result<double> value = ctx.rule.value->EvaluateNumber(args.Scope(&t.shape, &groups));
  if (!value.ok()) return ctx.Error(t.name, value.status().message());
  const bool add = ctx.rule.op == ArchRule::Op::kAdd;
  t.value_ops.push_back({add ? ValueOp::Kind::kAdd : ValueOp::Kind::kMultiply, *value});
  t.steps.push_back(fmt::format("{} {}", add ? "add" : "multiply", FormatNumber(*value)));
  return Status::Ok();
}

// One rule over the whole set.
Status ApplyRule(const ArchEntry& entry, const ArchRule& rule, const ArchArgs& args, TensorMap& tensors) {
  const RuleContext ctx{entry, rule};
  if (rule.if_present) {
    bool present = false;
    for (const auto& [name, t] : tensors) present = present || rule.if_present->Search(name);
    if (!present) return Status::Ok();
  }
  if (rule.op == ArchRule::Op::kStack) return Stack(ctx, args, tensors);
  std::vector<RuleTensor> changed;
  std::vector<std::string> erased;
  for (auto& [name, t] : tensors) {
    std::vector<std::string> groups;
    STQ_ASSIGN_OR_RETURN(bool applies, Applies(ctx, args, t, groups));
    if (!applies) continue;
    if (rule.op != ArchRule::Op::kDrop && rule.op != ArchRule::Op::kRename && !IsByteAligned(t.dtype)) {
      return ctx.Error(name, fmt::format("{} of a {} tensor", rule.OpName(), DTypeName(t.dtype)));
    }
    switch (rule.op) {
      case ArchRule::Op::kDrop:
        erased.push_back(name);
        break;
      case ArchRule::Op::kRename: {
        RuleTensor renamed = t;
        renamed.name = Replace(name, rule.match, rule.to);
        renamed.steps.push_back(fmt::format("rename '{}'", name));
        erased.push_back(name);
        changed.push_back(std::move(renamed));
        break;
      }
      case ArchRule::Op::kSplit:
        STQ_RETURN_IF_ERROR(Split(ctx, args, t, groups, changed));
        erased.push_back(name);
        break;
      case ArchRule::Op::kReshape:
        STQ_RETURN_IF_ERROR(Reshape(ctx, args, t, groups));
        break;
      case ArchRule::Op::kTranspose:
        STQ_RETURN_IF_ERROR(Transpose(ctx, t));
        break;
      case ArchRule::Op::kAdd:
      case ArchRule::Op::kMultiply:
        STQ_RETURN_IF_ERROR(ValueOperation(ctx, args, t, groups));
        break;
      case ArchRule::Op::kStack:
        break;  // above
    }
  }
  for (const std::string& name : erased) tensors.erase(name);
  for (RuleTensor& t : changed) STQ_RETURN_IF_ERROR(Insert(tensors, std::move(t), ctx));
  return Status::Ok();
}

}  // namespace

const nlohmann::json* ArchArgs::Lookup(const std::string& path) const {
  if (const nlohmann::json* v = LookupPath(config_, path)) return v;
  return LookupPath(entry_.args_defaults, path);
}

ExprScope ArchArgs::Scope(const std::vector<int64_t>* shape, const std::vector<std::string>* groups) const {
  ExprScope scope;
  scope.config = [this](const std::string& path) { return Lookup(path); };
  scope.shape = shape;
  scope.groups = groups;
  return scope;
}

Result<std::vector<RuleTensor>> ApplySanitize(const ArchEntry& entry, const nlohmann::json& config,
                                              const std::vector<SourceHeader>& sources) {
  const ArchArgs args(entry, config);
  TensorMap tensors;
  for (const SourceHeader& s : sources) {
    RuleTensor t;
    t.name = s.name;
    t.dtype = s.dtype;
    t.shape = s.shape;
    t.pieces.push_back({s.name, "", ContiguousView(s.shape)});
    tensors.emplace(s.name, std::move(t));
  }
  for (const ArchRule& rule : entry.sanitize) STQ_RETURN_IF_ERROR(ApplyRule(entry, rule, args, tensors));
  std::vector<RuleTensor> out;
  out.reserve(tensors.size());
  for (auto& [name, t] : tensors) out.push_back(std::move(t));
  return out;
}

void AddConfigFields(const ArchEntry& entry, nlohmann::json& config) {
  for (const ConfigField& field : entry.config) {
    if (config.contains(field.field)) continue;
    const ArchArgs args(entry, config);
    for (const Expr& candidate : field.from) {
      Result<nlohmann::json> value = candidate.Evaluate(args.Scope());
      if (value.ok()) {
        config[field.field] = *value;
        break;
      }
    }
  }
}

}  // namespace stquant::model
