// Running an architecture entry's sanitize rules (arch_table.h) on the headers of a checkpoint:
// the plan-time half of mlx-lm's Model.sanitize. Names and shapes only; every output tensor is a
// list of strided views of source tensors plus pending elementwise ops, which the executor
// (src/output/planned_rows.h) carries out in bounded row blocks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/arch_expr.h"
#include "model/arch_table.h"
#include "stquant/convert.h"
#include "stquant/dtype.h"
#include "stquant/status.h"

namespace stquant::model {

// What the rules see of a source tensor.
struct SourceHeader {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
};

// A tensor while the rules run (and after): its current name, shape, the source pieces it is made
// of (concatenated along the first axis; each carries its view), and pending value ops.
struct RuleTensor {
  std::string name;
  DType dtype = DType::kBF16;  // the sources' dtype
  std::vector<int64_t> shape;
  std::vector<PlannedSource> pieces;
  std::vector<ValueOp> value_ops;
  std::vector<std::string> steps;  // for --dry-run (PlannedTensor::steps)
};

// The values the entry's expressions read: `config` (the config mlx-lm will read), then the
// entry's args_defaults for fields the config lacks (mlx-lm's ModelArgs defaults).
class ArchArgs {
 public:
  ArchArgs(const ArchEntry& entry, const nlohmann::json& config) : entry_(entry), config_(config) {}
  const nlohmann::json* Lookup(const std::string& path) const;
  ExprScope Scope(const std::vector<int64_t>* shape = nullptr, const std::vector<std::string>* groups = nullptr) const;

 private:
  const ArchEntry& entry_;
  const nlohmann::json& config_;
};

// Applies entry.sanitize in order to `sources` (sorted by name on return). Errors are
// InvalidInput naming the entry's file, the rule and the tensor (e.g. experts not numbered
// 0..E-1, a split whose parts do not add up, a config field the rule needs that is missing).
Result<std::vector<RuleTensor>> ApplySanitize(const ArchEntry& entry, const nlohmann::json& config,
                                              const std::vector<SourceHeader>& sources);

// Adds the entry's config fields (ArchEntry::config) to `config` where absent (a field none of
// whose candidates can be evaluated is left out: mlx-lm then reports what its ModelArgs lacks).
void AddConfigFields(const ArchEntry& entry, nlohmann::json& config);

}  // namespace stquant::model
