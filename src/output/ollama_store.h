// The ollama model store (ollama-create-spec §9): content-addressed blobs and manifests.
//
//   <root>/blobs/sha256-<64 hex>                           one file per distinct content
//   <root>/manifests/<host>/<namespace>/<model>/<tag>      JSON manifest naming the blobs
//
// A blob is written to a hidden temporary file in blobs/ (".stquant-tmp-<pid>-<random>-<n>",
// marked in use by the lock file ".stquant-tmp-<pid>-<random>.lock" the store holds), hashed as it
// is written, fsynced and renamed onto its digest name; when that name exists already (the same
// bytes from an earlier import or another model) the temporary file is dropped and the existing
// blob reused. So a file named sha256-<hex> always holds exactly the bytes of that digest, even
// after a crash. The manifest is written last, atomically, after one fsync of blobs/ has made the
// new names durable, so an interrupted import leaves no model visible; temporary files whose lock
// nobody holds (killed processes) are removed when a store is opened, never those of a concurrent
// import.
//
// Garbage collection (output/ollama_gc.h) may run while imports do. An import writes its blobs
// before the manifest that references them, so the collector must learn of them another way:
//   - every import keeps a journal, "blobs/.stquant-tmp-<tag>.blobs" beside its lock file, of the
//     blobs it has added or reused ("sha256-<hex>" lines), and records a blob there before it
//     renames it into place or decides to reuse it; the journal is removed when the store is
//     closed (after the manifest is written), just before the lock is released;
//   - "<root>/.stquant-gc.lock" is held shared by an import while it records and commits one blob,
//     and exclusively by the collector while it scans and deletes. The collector lists the blobs,
//     then reads the journals of live imports (lock held), then the manifests, and deletes what
//     none of them names: a blob committed before its scan is in a journal it reads, and an import
//     that finishes during the scan is seen either in its journal or in its manifest. Imports wait
//     only for a scan (milliseconds), never the collector for an import.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "stquant/status.h"
#include "util/file.h"

struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX

namespace stquant::output {

inline constexpr const char* kOllamaMediaTensor = "application/vnd.ollama.image.tensor";
inline constexpr const char* kOllamaMediaJson = "application/vnd.ollama.image.json";
inline constexpr const char* kOllamaMediaTemplate = "application/vnd.ollama.image.template";
inline constexpr const char* kOllamaMediaSystem = "application/vnd.ollama.image.system";
inline constexpr const char* kOllamaMediaLicense = "application/vnd.ollama.image.license";
inline constexpr const char* kOllamaMediaParams = "application/vnd.ollama.image.params";
inline constexpr const char* kOllamaMediaConfig = "application/vnd.docker.container.image.v1+json";
inline constexpr const char* kOllamaMediaManifest = "application/vnd.docker.distribution.manifest.v2+json";

// The store's own files (see above): the collector's lock in the root, the temporaries' prefix and
// the journal suffix in blobs/.
inline constexpr const char* kOllamaGcLockFile = ".stquant-gc.lock";
inline constexpr const char* kOllamaTempPrefix = ".stquant-tmp-";
inline constexpr const char* kOllamaJournalSuffix = ".blobs";

// A model name, parsed as types/model.ParseName with ollama's defaults.
struct OllamaName {
  std::string host = "registry.ollama.ai";
  std::string ns = "library";
  std::string model;
  std::string tag = "latest";
  std::string ManifestPath() const { return host + "/" + ns + "/" + model + "/" + tag; }
  std::string Display() const;  // "host/ns/model:tag"
};

// "foo" -> registry.ollama.ai/library/foo:latest; "me/foo:v1"; "host[:port]/ns/foo:tag".
// InvalidArgument "invalid model name: <name>" otherwise.
Result<OllamaName> ParseOllamaName(const std::string& name);

// `flag` if non-empty, else $OLLAMA_MODELS, else $HOME/.ollama/models.
Result<std::string> ResolveOllamaModelsDir(const std::string& flag);

// One manifest layer.
struct OllamaLayer {
  std::string media_type;
  std::string digest;  // "sha256:<hex>"
  uint64_t size = 0;
  std::string name;  // empty: omitted
  bool reused = false;  // the blob was in the store already
  nlohmann::ordered_json ToJson() const;
};

// A manifest as read back.
struct OllamaManifest {
  std::optional<OllamaLayer> config;
  std::vector<OllamaLayer> layers;
};

// Parses the text of a manifest (pure: any bytes are safe input; fuzz/config_files_fuzz.cc). The
// JSON is read with util::ParseJson; "layers" must be an array, and every layer (and "config",
// when present) an object whose "digest" is "sha256:" and 64 lowercase hex digits (so that a blob
// path never leaves blobs/), whose "mediaType" and "name" are strings and whose "size" is a
// non-negative integer, when present. InvalidInput naming `path` and the layer otherwise.
Result<OllamaManifest> ParseOllamaManifest(std::string_view text, const std::string& path);

// SHA-256 taken piece by piece as bytes are produced (OpenSSL's streaming API).
class Sha256 {
 public:
  Sha256();  // throws std::bad_alloc when OpenSSL cannot allocate its context
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::span<const uint8_t> bytes);
  // The digest of all bytes given, lowercase hex. Call once, after the last Update.
  std::string HexDigest();

 private:
  evp_md_ctx_st* ctx_;
};

// SHA-256 of `bytes`, lowercase hex.
std::string Sha256Hex(const std::string& bytes);

// flock(2), retried on EINTR.
Status FlockRetrying(int fd, int operation, const std::string& path);

class OllamaStore {
 public:
  // Creates <root>/blobs and <root>/manifests when missing; removes temporary blob files left by
  // killed processes; starts this import's journal.
  static Result<OllamaStore> Open(const std::string& root);
  // For reading only (ReadManifest, BlobPath): creates and removes nothing.
  static OllamaStore OpenForReading(const std::string& root) {
    OllamaStore store;
    store.root_ = root;
    return store;
  }

  const std::string& root() const { return root_; }
  std::string BlobPath(const std::string& digest) const;  // "sha256:<hex>" or "<hex>"
  // A fresh temporary path in blobs/ for a blob being written (e.g. by safetensors::Writer).
  // Thread-safe, as AddBlobFile and AddBlobBytes.
  std::string NewTempPath();
  // Moves a complete, synced file at `temp_path` (from NewTempPath) whose SHA-256 is `hex` (taken
  // while it was written) to its digest name, or drops it when that blob exists; records it in the journal first (under
  // the shared collector lock). The new name is made durable by WriteManifest.
  Result<OllamaLayer> AddBlobFile(const std::string& temp_path, const std::string& hex, std::string media_type,
                                  std::string name);
  Result<OllamaLayer> AddBlobBytes(const std::string& bytes, std::string media_type, std::string name);
  // A blob of the bytes of the regular file at `source` (copied in pieces, see CopyFileAtomically,
  // and hashed as they are copied).
  Result<OllamaLayer> AddBlobCopy(const std::string& source, std::string media_type, std::string name);
  // fsyncs blobs/ (the names of the blobs added so far), then writes the manifest atomically
  // (temp file, fsync, rename); the last step of an import. Returns its path.
  Result<std::string> WriteManifest(const OllamaName& name, const OllamaLayer& config,
                                    const std::vector<OllamaLayer>& layers);
  // Reads a manifest (within util::kJsonConfigLimit; ParseOllamaManifest): InvalidArgument "model
  // '<name>' not found in <root>" when there is no file of that name.
  Result<OllamaManifest> ReadManifest(const OllamaName& name) const;

 private:
  // The blobs this import uses, for the collector (see above); removed when the store is closed.
  struct Journal {
    std::string path;
    util::Fd fd;
    Journal() = default;
    Journal(Journal&& other) noexcept;
    Journal& operator=(Journal&&) = delete;
    ~Journal();
  };

  Status Record(const std::string& hex);

  std::string root_;
  util::TempLock lock_;  // Open only: marks this store's temporary blobs as in use
  util::Fd gc_lock_;     // Open only: <root>/.stquant-gc.lock, held shared while committing a blob
  Journal journal_;      // declared after lock_: removed before the lock is released
  std::unique_ptr<std::mutex> mu_ = std::make_unique<std::mutex>();  // guards counter_, the digest names and the journal
  uint64_t counter_ = 0;
};

}  // namespace stquant::output
