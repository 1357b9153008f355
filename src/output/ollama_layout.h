// The ollama layout of `stquant convert`: a ConversionPlan carried out into an ollama model store
// (ollama-create-spec §6, §9): one safetensors blob per planned blob, the source's *.json files,
// an optional draft model, Modelfile text and parameter layers, the ConfigV2 config blob and,
// last, the manifest.
#pragma once

#include <functional>

#include "stquant/convert.h"

namespace stquant::output {

// The plan of an import without writing anything (--dry-run): the tensors with their blobs, and the
// manifest's layers and path; the Modelfile's FROM / DRAFT resolved as the import resolves them.
Result<ConversionPlan> PlanOllamaImport(const ConvertOptions& options);

Result<ConvertSummary> ConvertToOllamaStore(const ConvertOptions& options,
                                            const std::function<void(const ConvertProgress&)>& progress);

}  // namespace stquant::output
