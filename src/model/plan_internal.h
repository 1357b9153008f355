// The planner's result together with the inventory it read, for the executor (src/output).
#pragma once

#include <memory>

#include "model/inventory.h"
#include "stquant/convert.h"

namespace stquant::model {

struct PrequantPlan;  // model/prequant.h

struct PlanContext {
  std::unique_ptr<Inventory> inventory;  // owns the open shard readers the plan refers to
  ConversionPlan plan;
  // Set for an already-quantized source (the plan's tensors then only describe it).
  std::shared_ptr<const PrequantPlan> prequant;
};

// The source bytes a planned tensor reads: its pieces' view elements, and their share of block-FP8
// scales (a source split into several outputs counts once over them).
uint64_t PlannedInputBytes(const Inventory& inventory, const PlannedTensor& t);

// The bytes a planned tensor's outputs take: its values in t.dtype, or, quantized, the packed
// words, scales (the dtype for affine, one byte otherwise) and affine biases.
uint64_t PlannedOutputBytes(const PlannedTensor& t);

// `draft`: the ollama policy's draftPolicy (ollama-create-spec §7) for a draft model.
Result<PlanContext> BuildPlan(const ConvertOptions& options, bool draft = false);

}  // namespace stquant::model
