// `models_dir` below: the store root; empty: $OLLAMA_MODELS, else ~/.ollama/models.
//
// Keeping an ollama model store tidy (`stquant ollama gc|list|rm`), on the layout ollama itself
// uses (manifests/<host>/<namespace>/<model>/<tag>, blobs/sha256-<hex>; ollama-create-spec §9), so
// that it works on models of any tool, and safely beside running imports: collection and removal
// take the collector lock and honour the journals of live stquant imports (the protocol in
// output/ollama_store.h). ollama writes blobs before its manifest too but keeps no journal; like
// ollama's own prune (server/images.go PruneLayers, layerPruneGracePeriod) the collector leaves
// unreferenced blobs and other tools' temporaries alone while they are younger than a grace
// period.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "stquant/status.h"

namespace stquant {

// One file removed (or, in a dry run, to be removed).
struct OllamaGcEntry {
  std::string path;
  uint64_t bytes = 0;
  std::string reason;  // "unreferenced blob", "stale temporary"
};

struct OllamaGcOptions {
  bool dry_run = false;
  std::chrono::seconds grace{3600};  // ollama's layerPruneGracePeriod
};

struct OllamaGcReport {
  std::vector<OllamaGcEntry> removed;
  uint64_t manifests = 0;
  uint64_t referenced = 0;  // blobs a manifest references
  uint64_t importing = 0;   // unreferenced blobs in the journal of a running import
  uint64_t recent = 0;      // unreferenced blobs and foreign temporaries younger than the grace period
};

// Removes (unless options.dry_run) every blob no manifest and no running import references and
// whose modification time is older than the grace period; stquant's temporaries whose owner is
// gone (any age: their lock says so); other files of blobs/ that are not blobs (ollama's
// "sha256-<random>" temporaries, "-partial" downloads) and stquant's manifest temporaries
// (".<tag>.tmp-<pid>-<hex>") older than the grace period. Fails, removing nothing, when a
// manifest cannot be read: the blobs of the model it names would go. InvalidArgument when the
// store has no blobs/ directory.
Result<OllamaGcReport> CollectOllamaGarbage(const std::string& models_dir, const OllamaGcOptions& options);

// One model of the store, as ollama's list shows it.
struct OllamaModelInfo {
  std::string name;          // ollama's DisplayShortest: "model:tag", "ns/model:tag", "host/ns/model:tag"
  std::string manifest_path;
  std::string digest;        // sha256 of the manifest file (hex); ollama's ID is its first 12
  uint64_t size = 0;         // config + layers, from the manifest
  int64_t modified_ns = 0;   // the manifest file's mtime, ns since the epoch
  bool remote = false;       // the config blob names a remote_model (ollama shows no size)
};

// Every model: the files manifests/*/*/*/* whose path is a valid name and whose contents a
// manifest (others are skipped with a warning, as ollama's Manifests(continueOnError)); sorted
// by modification time, newest first, then by name.
Result<std::vector<OllamaModelInfo>> ListOllamaModels(const std::string& models_dir, std::vector<std::string>* warnings);

struct OllamaRemoval {
  std::string name;  // as stored, short (ollama matches each part of a name case-insensitively)
  std::vector<OllamaGcEntry> removed_blobs;
  std::vector<std::string> warnings;
};

// ollama rm: removes the model's manifest and the empty directories above it, then its config and
// layer blobs that no other manifest and no running import references. InvalidArgument "model
// '<name>' not found". When another manifest cannot be read, the blobs are kept (a warning).
Result<OllamaRemoval> RemoveOllamaModel(const std::string& models_dir, const std::string& name);

}  // namespace stquant
