#include "stquant/ollama_models.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "output/ollama_store.h"
#include "util/file.h"
#include "util/input_file.h"
#include "util/json_input.h"

namespace stquant {

using output::FlockRetrying;
using output::kOllamaGcLockFile;
using output::kOllamaJournalSuffix;
using output::kOllamaTempPrefix;
using output::OllamaName;
using output::OllamaLayer;
using output::OllamaManifest;
using output::ParseOllamaManifest;
using output::ParseOllamaName;
using output::Sha256Hex;

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kDigestPrefix = "sha256-";
constexpr std::chrono::seconds kLockWait{10};
// An import's journal names each blob it adds or reuses (~80 bytes a line): 64 MiB is ~800,000.
constexpr util::InputLimit kJournalLimit{64u << 20, 0, "an import journal"};

bool IsHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
}

// "sha256-<64 hex>", the only blob names ollama accepts (manifest/paths.go BlobsPath).
bool IsBlobName(std::string_view name) {
  return name.size() == kDigestPrefix.size() + 64 && name.starts_with(kDigestPrefix) &&
         IsHex(name.substr(kDigestPrefix.size()));
}

// A manifest digest "sha256:<hex>" (checked by ParseOllamaManifest) -> its blob's file name.
std::string BlobNameOf(const OllamaLayer& layer) {
  std::string name = layer.digest;
  name[6] = '-';
  return name;
}

// The blob names a manifest references: its config and its layers.
std::vector<std::string> ReferencedBlobs(const OllamaManifest& manifest) {
  std::vector<std::string> names;
  if (manifest.config) names.push_back(BlobNameOf(*manifest.config));
  for (const OllamaLayer& layer : manifest.layers) names.push_back(BlobNameOf(layer));
  return names;
}

int64_t NowNs() {
  struct timespec now {};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

// util::AtomicFile's temporaries: ".<final>.tmp-<pid>-<16 hex>".
bool IsAtomicFileTemp(std::string_view name) {
  const size_t at = name.rfind(".tmp-");
  if (!name.starts_with('.') || at == std::string_view::npos || at == 0) return false;
  const std::string_view tag = name.substr(at + 5);
  const size_t dash = tag.find('-');
  return dash != std::string_view::npos && dash > 0 &&
         std::all_of(tag.begin(), tag.begin() + dash, [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }) &&
         tag.size() - dash - 1 == 16 && IsHex(tag.substr(dash + 1));
}

// Held exclusively while the collector scans and deletes (ollama_store.h). A read-only store
// can still be looked at (dry run) without it.
class CollectorLock {
 public:
  static Result<CollectorLock> Take(const std::string& root, bool dry_run) {
    CollectorLock lock;
    const std::string path = root + "/" + kOllamaGcLockFile;
    lock.fd_.Reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!lock.fd_.valid()) {
      if (dry_run) return lock;
      return Status::FromErrno("create", path, errno);
    }
    // Imports hold it shared for microseconds at a time; one stopped in between (SIGSTOP) must not
    // hang the collector.
    const auto deadline = std::chrono::steady_clock::now() + kLockWait;
    while (::flock(lock.fd_.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) return Status::FromErrno("lock", path, errno);
      if (std::chrono::steady_clock::now() > deadline) {
        return Status::IoError(fmt::format("the ollama store '{}' is busy: an import has held '{}' for {} s (a stopped "
                                           "process?); nothing was removed, try again",
                                           root, path, kLockWait.count()));
      }
      ::usleep(10000);
    }
    return lock;
  }

 private:
  util::Fd fd_;  // closing it releases the lock
};

struct ManifestFile {
  std::string path;
  OllamaName name;
};

// The model manifests (manifests/<host>/<ns>/<model>/<tag> with a valid name, as ollama's glob
// "*/*/*/*"); the other files at that depth go to `others`.
std::vector<ManifestFile> ManifestFiles(const std::string& root, std::vector<fs::path>* others) {
  std::vector<ManifestFile> files;
  std::error_code ec;
  const fs::path top = fs::path(root) / "manifests";
  auto dirs = [&](const fs::path& dir) {
    std::vector<fs::path> out;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (entry.is_directory(ec)) out.push_back(entry.path());
    }
    std::sort(out.begin(), out.end());
    return out;
  };
  for (const fs::path& host : dirs(top)) {
    for (const fs::path& ns : dirs(host)) {
      for (const fs::path& model : dirs(ns)) {
        for (const auto& entry : fs::directory_iterator(model, ec)) {
          if (!entry.is_regular_file(ec)) continue;
          OllamaName want{host.filename().string(), ns.filename().string(), model.filename().string(),
                          entry.path().filename().string()};
          Result<OllamaName> parsed = ParseOllamaName(want.host + "/" + want.ns + "/" + want.model + ":" + want.tag);
          if (parsed.ok() && parsed->Display() == want.Display()) {
            files.push_back({entry.path().string(), want});
          } else if (others) {
            others->push_back(entry.path());
          }
        }
      }
    }
  }
  std::sort(files.begin(), files.end(), [](const ManifestFile& a, const ManifestFile& b) { return a.path < b.path; });
  return files;
}

Result<OllamaManifest> ReadManifestFile(const std::string& path) {
  STQ_ASSIGN_OR_RETURN(std::string text, util::ReadRegularFile(path, util::kJsonConfigLimit));
  return ParseOllamaManifest(text, path);
}

// The blobs named in the journals of running imports (their lock is held).
std::set<std::string> BlobsOfRunningImports(const std::string& blobs) {
  std::set<std::string> names;
  std::error_code ec;
  const std::string_view prefix = kOllamaTempPrefix, suffix = kOllamaJournalSuffix;
  for (const auto& entry : fs::directory_iterator(blobs, ec)) {
    const std::string file = entry.path().filename().string();
    if (!file.starts_with(prefix) || !file.ends_with(suffix)) continue;
    const std::string stem = blobs + "/" + file.substr(0, file.size() - suffix.size());
    util::Fd lock(::open((stem + ".lock").c_str(), O_RDONLY | O_CLOEXEC));
    // No lock file, or one nobody holds: the import is gone (its blobs are in a manifest or orphans).
    if (!lock.valid() || ::flock(lock.get(), LOCK_EX | LOCK_NB) == 0) continue;
    // A journal that vanishes meanwhile belongs to an import that has just finished: its manifest,
    // read after this, names its blobs.
    Result<std::string> text = util::ReadRegularFile(entry.path().string(), kJournalLimit);
    if (!text.ok()) continue;
    size_t start = 0;
    while (start < text->size()) {
      size_t end = text->find('\n', start);
      if (end == std::string::npos) end = text->size();
      names.insert(text->substr(start, end - start));
      start = end + 1;
    }
  }
  return names;
}

// Removes an empty directory and its empty parents up to (not including) `stop`.
void PruneEmptyParents(fs::path dir, const fs::path& stop) {
  std::error_code ec;
  while (dir != stop && dir.has_parent_path() && fs::is_empty(dir, ec) && !ec) {
    if (!fs::remove(dir, ec)) break;
    dir = dir.parent_path();
  }
}

Status RemoveFile(const OllamaGcEntry& entry) {
  if (::unlink(entry.path.c_str()) != 0 && errno != ENOENT) return Status::FromErrno("remove", entry.path, errno);
  return Status::Ok();
}

bool EqualFold(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// ollama's DisplayShortest: "model:tag", "ns/model:tag" outside the library namespace,
// "host/ns/model:tag" outside registry.ollama.ai.
std::string OllamaShortName(const OllamaName& name) {
  std::string out;
  if (!EqualFold(name.host, OllamaName().host)) {
    out = name.host + "/" + name.ns + "/";
  } else if (!EqualFold(name.ns, OllamaName().ns)) {
    out = name.ns + "/";
  }
  return out + name.model + ":" + name.tag;
}

Status CheckStore(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(fs::path(root) / "blobs", ec)) {
    return Status::InvalidArgument(fmt::format("no ollama model store at '{}' (it has no blobs/ directory)", root));
  }
  return Status::Ok();
}

}  // namespace

Result<OllamaGcReport> CollectOllamaGarbage(const std::string& models_dir, const OllamaGcOptions& options) {
  STQ_ASSIGN_OR_RETURN(const std::string root, output::ResolveOllamaModelsDir(models_dir));
  STQ_RETURN_IF_ERROR(CheckStore(root));
  STQ_ASSIGN_OR_RETURN(CollectorLock lock, CollectorLock::Take(root, options.dry_run));
  const std::string blobs = root + "/blobs";
  const int64_t now = NowNs();
  const int64_t grace = std::chrono::duration_cast<std::chrono::nanoseconds>(options.grace).count();
  OllamaGcReport report;
  // 1. The files of blobs/: blobs, other tools' temporaries (stquant's are the util layer's).
  struct Candidate {
    OllamaGcEntry entry;
    int64_t mtime = 0;
  };
  std::map<std::string, Candidate> candidates;  // blob name ->
  std::vector<Candidate> foreign;
  std::error_code ec;
  const std::string_view ours = kOllamaTempPrefix;
  for (const auto& entry : fs::directory_iterator(blobs, ec)) {
    const std::string name = entry.path().filename().string();
    struct stat st {};
    if (::lstat(entry.path().c_str(), &st) != 0 || S_ISDIR(st.st_mode)) continue;
    if (name.starts_with(ours) || (name.starts_with('.') && std::string_view(name).substr(1).starts_with(ours))) continue;
    Candidate c{{entry.path().string(), static_cast<uint64_t>(st.st_size), ""}, MtimeNs(st)};
    if (IsBlobName(name)) {
      c.entry.reason = "unreferenced blob";
      candidates.emplace(name, std::move(c));
    } else {
      c.entry.reason = "stale temporary";
      foreign.push_back(std::move(c));
    }
  }
  if (ec) return Status::IoError(fmt::format("list '{}': {}", blobs, ec.message()));
  // 2. stquant's own temporaries whose owner is gone, whatever their age (removed here).
  for (const util::StaleTemp& t : util::RemoveStaleTemps(blobs, std::string(ours), options.dry_run)) {
    report.removed.push_back({t.path, t.bytes, "stale temporary"});
  }
  const size_t removed_already = report.removed.size();
  // 3. What running imports use, then what the manifests reference (in this order: see
  // ollama_store.h).
  const std::set<std::string> importing = BlobsOfRunningImports(blobs);
  std::vector<fs::path> other_files;
  std::set<std::string> referenced;
  for (const ManifestFile& m : ManifestFiles(root, &other_files)) {
    Result<OllamaManifest> manifest = ReadManifestFile(m.path);
    if (!manifest.ok()) {
      return Status::InvalidInput(fmt::format(
          "{}; nothing was removed (the blobs of the model it names would go: repair it or remove the model)",
          manifest.status().message()));
    }
    for (std::string& name : ReferencedBlobs(*manifest)) referenced.insert(std::move(name));
    ++report.manifests;
  }
  // 4. The verdicts.
  for (auto& [name, c] : candidates) {
    if (referenced.count(name)) {
      ++report.referenced;
    } else if (importing.count(name)) {
      ++report.importing;
    } else if (now - c.mtime < grace) {
      ++report.recent;
    } else {
      report.removed.push_back(std::move(c.entry));
    }
  }
  for (const fs::path& path : other_files) {  // stquant's manifest temporaries of killed imports
    struct stat st {};
    if (!IsAtomicFileTemp(path.filename().string()) || ::lstat(path.c_str(), &st) != 0) continue;
    foreign.push_back({{path.string(), static_cast<uint64_t>(st.st_size), "stale temporary"}, MtimeNs(st)});
  }
  for (Candidate& c : foreign) {
    if (now - c.mtime < grace) {
      ++report.recent;
    } else {
      report.removed.push_back(std::move(c.entry));
    }
  }
  if (!options.dry_run) {
    for (size_t i = removed_already; i < report.removed.size(); ++i) STQ_RETURN_IF_ERROR(RemoveFile(report.removed[i]));
  }
  return report;
}

Result<std::vector<OllamaModelInfo>> ListOllamaModels(const std::string& models_dir, std::vector<std::string>* warnings) {
  STQ_ASSIGN_OR_RETURN(const std::string root, output::ResolveOllamaModelsDir(models_dir));
  STQ_RETURN_IF_ERROR(CheckStore(root));
  std::vector<OllamaModelInfo> models;
  for (const ManifestFile& m : ManifestFiles(root, nullptr)) {
    Result<std::string> text = util::ReadRegularFile(m.path, util::kJsonConfigLimit);
    Result<OllamaManifest> manifest = text.ok() ? ParseOllamaManifest(*text, m.path) : Result<OllamaManifest>(text.status());
    struct stat st {};
    if (!manifest.ok() || ::stat(m.path.c_str(), &st) != 0) {
      if (warnings) warnings->push_back(fmt::format("skipped {}", manifest.ok() ? m.path : manifest.status().message()));
      continue;
    }
    OllamaModelInfo info;
    info.name = OllamaShortName(m.name);
    info.manifest_path = m.path;
    info.digest = Sha256Hex(*text);
    info.modified_ns = MtimeNs(st);
    info.size = manifest->config ? manifest->config->size : 0;
    for (const OllamaLayer& layer : manifest->layers) info.size += layer.size;
    // A remote model's config blob names it (ollama shows no size for one).
    if (manifest->config) {
      const std::string path = root + "/blobs/" + BlobNameOf(*manifest->config);
      Result<std::string> blob = util::ReadRegularFile(path, util::kJsonConfigLimit);
      Result<nlohmann::json> parsed = blob.ok() ? util::ParseJson(*blob, path, util::kJsonConfigLimit)
                                                : Result<nlohmann::json>(blob.status());
      const nlohmann::json j = parsed.ok() ? *parsed : nlohmann::json();
      info.remote = j.is_object() && j.contains("remote_model") && j["remote_model"].is_string() &&
                    !j["remote_model"].get<std::string>().empty();
    }
    models.push_back(std::move(info));
  }
  std::stable_sort(models.begin(), models.end(), [](const OllamaModelInfo& a, const OllamaModelInfo& b) {
    if (a.modified_ns / 1000000000 != b.modified_ns / 1000000000) return a.modified_ns > b.modified_ns;
    return a.name < b.name;
  });
  return models;
}

Result<OllamaRemoval> RemoveOllamaModel(const std::string& models_dir, const std::string& text) {
  STQ_ASSIGN_OR_RETURN(const std::string root, output::ResolveOllamaModelsDir(models_dir));
  STQ_ASSIGN_OR_RETURN(OllamaName want, ParseOllamaName(text));
  STQ_RETURN_IF_ERROR(CheckStore(root));
  STQ_ASSIGN_OR_RETURN(CollectorLock lock, CollectorLock::Take(root, /*dry_run=*/false));
  const std::vector<ManifestFile> files = ManifestFiles(root, nullptr);
  // ollama's getExistingName: each part of the name matches an existing one case-insensitively.
  const auto match = std::find_if(files.begin(), files.end(), [&](const ManifestFile& m) {
    return EqualFold(m.name.host, want.host) && EqualFold(m.name.ns, want.ns) && EqualFold(m.name.model, want.model) &&
           EqualFold(m.name.tag, want.tag);
  });
  if (match == files.end()) return Status::InvalidArgument(fmt::format("model '{}' not found", text));
  STQ_ASSIGN_OR_RETURN(OllamaManifest manifest, ReadManifestFile(match->path));
  OllamaRemoval removal;
  removal.name = OllamaShortName(match->name);
  if (::unlink(match->path.c_str()) != 0) return Status::FromErrno("remove", match->path, errno);
  PruneEmptyParents(fs::path(match->path).parent_path(), fs::path(root) / "manifests");
  // Its blobs that nothing else uses (ollama's RemoveLayers), nor a running import.
  std::set<std::string> in_use = BlobsOfRunningImports(root + "/blobs");
  for (const ManifestFile& m : files) {
    if (m.path == match->path) continue;
    Result<OllamaManifest> other = ReadManifestFile(m.path);
    if (!other.ok()) {
      removal.warnings.push_back(fmt::format("{}; the blobs of '{}' were kept", other.status().message(),
                                             removal.name));
      return removal;
    }
    for (std::string& name : ReferencedBlobs(*other)) in_use.insert(std::move(name));
  }
  std::set<std::string> done;
  for (const std::string& name : ReferencedBlobs(manifest)) {
    if (in_use.count(name) || !done.insert(name).second) continue;
    const std::string path = root + "/blobs/" + name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) continue;  // ollama: "layer does not exist"
    OllamaGcEntry entry{path, static_cast<uint64_t>(st.st_size), "blob of the removed model"};
    STQ_RETURN_IF_ERROR(RemoveFile(entry));
    removal.removed_blobs.push_back(std::move(entry));
  }
  return removal;
}

}  // namespace stquant
