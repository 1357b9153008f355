// The planner's result together with the inventory it read, for the executor (src/output).
#pragma once

#include <memory>

#include "model/inventory.h"
#include "stquant/convert.h"

namespace stquant::model {

struct PlanContext {
  std::unique_ptr<Inventory> inventory;  // owns the open shard readers the plan refers to
  ConversionPlan plan;
};

Result<PlanContext> BuildPlan(const ConvertOptions& options);

}  // namespace stquant::model
