// The preflight of `stquant convert`: run after planning and before anything is created, so that
// a conversion that cannot succeed fails within a second, having written nothing, instead of
// after hours of reading. Planning (model::BuildPlan, headers only) has already checked that every
// shard is present with a valid header and that every requested type applies; the preflight adds
//   - the architecture verdict for the chosen layout (ArchitectureVerdictFor, the one place an
//     architecture table plugs in);
//   - the output location: the directory the output (its temporaries first) is created in, or
//     its nearest existing ancestor, must be a writable directory on a writable file system
//     (InvalidArgument, exit 2);
//   - its free space: statvfs's f_bavail of that directory against the projected size of
//     everything the conversion writes, each file rounded up to the file system's fragment size
//     (IoError, exit 3). ConvertOptions::check_free_space (--no-preflight) skips this check alone,
//     for file systems that misreport their free space.
// Every error names what is wrong and what would have been written (where, how many bytes).
#pragma once

#include <cstdint>
#include <string>

#include "model/plan_internal.h"
#include "stquant/convert.h"
#include "stquant/status.h"

namespace stquant::output {

// What a conversion would write.
struct OutputProjection {
  std::string target;      // OUT_DIR, or "model '<name>' in the ollama store <root>"
  std::string directory;   // where its files are created (it may not exist yet)
  uint64_t data_bytes = 0; // the bytes of all files
  uint64_t files = 0;
  std::string contents;    // "2 shards, the index, config.json and 4 copied files"
};

// The mlx layout: shards (tensor data + headers), the index, config.json, the copied files.
OutputProjection ProjectMlxOutput(const ConvertOptions& options, const model::PlanContext& context);

// The ollama layout into the store `root`: one blob per planned blob, the source's *.json files,
// the draft's, the Modelfile's text layers (at most `modelfile_bytes`), the config blob and the
// manifest. Blobs already in the store are counted too: each is written to a temporary before its
// digest is known.
// `context` null: FROM a model of the store, whose tensor blobs are there already.
OutputProjection ProjectOllamaOutput(const ConvertOptions& options, const std::string& root,
                                     const model::PlanContext* context, const model::PlanContext* draft,
                                     uint64_t modelfile_bytes);

// How the chosen layout stands to the plan's architecture. Today the verdict comes from
// model::ArchRules::known (model/arch.h): an architecture the mlx layout has not checked against
// mlx-lm is planned with generic rules (BuildPlan warns), and the ollama layout takes any (its
// policy has a default family), so nothing is refused yet; an architecture table replaces this
// function's body.
enum class ArchitectureVerdict { kKnown, kGenericRules, kUnsupported };
// `context` null: nothing is converted (an ollama import FROM a model of the store).
ArchitectureVerdict ArchitectureVerdictFor(const ConvertOptions& options, const model::PlanContext* context);

// The checks above, for a projection of the plan in `context` (null: none). `extra_writable`
// (optional): more existing directories the conversion writes into (the ollama store's blobs/ and
// manifests/).
Status Preflight(const ConvertOptions& options, const model::PlanContext* context, const OutputProjection& projection,
                 const std::vector<std::string>& extra_writable = {});

}  // namespace stquant::output
