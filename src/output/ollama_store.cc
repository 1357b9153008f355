#include "output/ollama_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <vector>

#include <fmt/format.h>
#include <openssl/evp.h>

#include "output/output_dir.h"
#include "util/file.h"
#include "util/input_file.h"
#include "util/json_input.h"
#include "util/printable.h"

namespace stquant::output {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kTempPrefix = kOllamaTempPrefix;

bool NamePartOk(std::string_view part, size_t max, bool allow_colon) {
  if (part.empty() || part.size() > max) return false;
  if (!std::isalnum(static_cast<unsigned char>(part[0])) && part[0] != '_') return false;
  for (char c : part) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
                    (allow_colon && c == ':');
    if (!ok) return false;
  }
  return true;
}

std::string Hex(const unsigned char* digest, unsigned int n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (unsigned int i = 0; i < n; ++i) {
    out.push_back(kDigits[digest[i] >> 4]);
    out.push_back(kDigits[digest[i] & 15]);
  }
  return out;
}

}  // namespace

std::string OllamaName::Display() const { return host + "/" + ns + "/" + model + ":" + tag; }

Result<OllamaName> ParseOllamaName(const std::string& text) {
  auto invalid = [&] { return Status::InvalidArgument("invalid model name: " + text); };
  OllamaName name;
  std::string rest = text;
  const size_t slash = rest.rfind('/');
  const size_t colon = rest.rfind(':');
  if (colon != std::string::npos && (slash == std::string::npos || colon > slash)) {
    name.tag = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
    if (!NamePartOk(name.tag, 80, false)) return invalid();
  }
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t at = rest.find('/', start);
    parts.push_back(rest.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) break;
    start = at + 1;
  }
  if (parts.size() > 3) return invalid();
  name.model = parts.back();
  if (parts.size() >= 2) name.ns = parts[parts.size() - 2];
  if (parts.size() == 3) name.host = parts[0];
  if (!NamePartOk(name.model, 80, false) || !NamePartOk(name.ns, 80, false) || !NamePartOk(name.host, 350, true) ||
      name.model == "." || name.model == "..") {
    return invalid();
  }
  return name;
}

Result<std::string> ResolveOllamaModelsDir(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = std::getenv("OLLAMA_MODELS"); env && *env) return std::string(env);
  const char* home = std::getenv("HOME");
  if (!home || !*home) {
    return Status::InvalidArgument("no ollama model store: give --models-dir, or set OLLAMA_MODELS or HOME");
  }
  return std::string(home) + "/.ollama/models";
}

nlohmann::ordered_json OllamaLayer::ToJson() const {
  nlohmann::ordered_json j;
  j["mediaType"] = media_type;
  j["digest"] = digest;
  j["size"] = size;
  if (!name.empty()) j["name"] = name;
  return j;
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx_);
    throw std::bad_alloc();
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Update(std::span<const uint8_t> bytes) { EVP_DigestUpdate(ctx_, bytes.data(), bytes.size()); }

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx_, digest, &n);
  return Hex(digest, n);
}

std::string Sha256Hex(const std::string& bytes) {
  Sha256 sha;
  sha.Update({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
  return sha.HexDigest();
}

Result<OllamaStore> OllamaStore::Open(const std::string& root) {
  if (root.empty()) return Status::InvalidArgument("no ollama model store directory given");
  std::error_code ec;
  if (fs::exists(root, ec) && !fs::is_directory(root, ec)) {
    return Status::InvalidArgument(fmt::format("ollama model store '{}' is not a directory", root));
  }
  for (const char* sub : {"blobs", "manifests"}) {
    const fs::path dir = fs::path(root) / sub;
    fs::create_directories(dir, ec);
    if (!fs::is_directory(dir, ec)) {
      return Status::IoError(fmt::format("cannot create the ollama store directory '{}'", dir.string()));
    }
  }
  // Temporary blobs of killed imports: "<stem>-<n>" (and the safetensors writer's own
  // ".<stem>-<n>.tmp-..." beside it) whose lock file nobody holds.
  const std::string blobs = root + "/blobs";
  util::RemoveStaleTemps(blobs, std::string(kTempPrefix));
  OllamaStore store;
  STQ_ASSIGN_OR_RETURN(store.lock_, util::TempLock::Create(blobs, std::string(kTempPrefix)));
  store.root_ = root;
  const std::string gc_lock = root + "/" + kOllamaGcLockFile;
  store.gc_lock_.Reset(::open(gc_lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!store.gc_lock_.valid()) return Status::FromErrno("create", gc_lock, errno);
  const std::string journal = store.lock_.stem() + kOllamaJournalSuffix;
  store.journal_.fd.Reset(::open(journal.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644));
  if (!store.journal_.fd.valid()) return Status::FromErrno("create", journal, errno);
  store.journal_.path = journal;
  return store;
}

OllamaStore::Journal::Journal(Journal&& other) noexcept : path(std::move(other.path)), fd(std::move(other.fd)) {
  other.path.clear();
}

OllamaStore::Journal::~Journal() {
  if (!path.empty()) ::unlink(path.c_str());
}

Status OllamaStore::Record(const std::string& hex) {
  const std::string line = "sha256-" + hex + "\n";
  // O_APPEND: one write of a short line lands whole at the end.
  if (::write(journal_.fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    return Status::FromErrno("write", journal_.path, errno);
  }
  return Status::Ok();
}

std::string OllamaStore::BlobPath(const std::string& digest) const {
  std::string hex = digest.rfind("sha256:", 0) == 0 ? digest.substr(7) : digest;
  return root_ + "/blobs/sha256-" + hex;
}

std::string OllamaStore::NewTempPath() {
  std::lock_guard<std::mutex> lock(*mu_);
  return fmt::format("{}-{}", lock_.stem(), counter_++);
}

Result<OllamaLayer> OllamaStore::AddBlobFile(const std::string& temp_path, const std::string& hex,
                                             std::string media_type, std::string name) {
  std::error_code ec;
  const uint64_t size = fs::file_size(temp_path, ec);
  if (ec) return Status::IoError(fmt::format("stat '{}': {}", temp_path, ec.message()));
  OllamaLayer layer{std::move(media_type), "sha256:" + hex, size, std::move(name), false};
  const std::string final_path = BlobPath(hex);
  // Recorded before it is reused or renamed into place, and neither while a collector scans (the
  // lock is held for microseconds; the names are made durable by WriteManifest).
  if (!gc_lock_.valid() || !journal_.fd.valid()) return Status::Internal("OllamaStore::AddBlobFile: store opened for reading");
  std::lock_guard<std::mutex> lock(*mu_);  // one blob of two with the same bytes is reused; one journal line at a time
  STQ_RETURN_IF_ERROR(FlockRetrying(gc_lock_.get(), LOCK_SH, root_ + "/" + kOllamaGcLockFile));
  struct Unlock {
    int fd;
    ~Unlock() { ::flock(fd, LOCK_UN); }
  } unlock{gc_lock_.get()};
  STQ_RETURN_IF_ERROR(Record(hex));
  struct stat st {};
  if (::stat(final_path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) == size) {
    // Same digest, same bytes: reuse it (touch its mtime, as ollama does).
    layer.reused = true;
    fs::remove(temp_path, ec);
    ::utimensat(AT_FDCWD, final_path.c_str(), nullptr, 0);
    return layer;
  }
  ::chmod(temp_path.c_str(), 0644);
  if (::rename(temp_path.c_str(), final_path.c_str()) != 0) {
    const int err = errno;
    fs::remove(temp_path, ec);
    return Status::FromErrno("rename", temp_path, err);
  }
  return layer;
}

Result<OllamaLayer> OllamaStore::AddBlobBytes(const std::string& bytes, std::string media_type, std::string name) {
  const std::string temp = NewTempPath();
  {
    STQ_ASSIGN_OR_RETURN(util::AtomicFile file, util::AtomicFile::Create(temp));
    STQ_RETURN_IF_ERROR(util::PwriteFull(
        file.fd(), {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, 0, file.temp_path()));
    STQ_RETURN_IF_ERROR(file.Commit());
  }
  return AddBlobFile(temp, Sha256Hex(bytes), std::move(media_type), std::move(name));
}

Result<OllamaLayer> OllamaStore::AddBlobCopy(const std::string& source, std::string media_type, std::string name) {
  const std::string temp = NewTempPath();
  Sha256 sha;
  STQ_RETURN_IF_ERROR(CopyFileAtomically(source, temp, [&sha](std::span<const uint8_t> bytes) { sha.Update(bytes); }));
  return AddBlobFile(temp, sha.HexDigest(), std::move(media_type), std::move(name));
}

Result<std::string> OllamaStore::WriteManifest(const OllamaName& name, const OllamaLayer& config,
                                               const std::vector<OllamaLayer>& layers) {
  // One fsync of blobs/ makes every blob renamed into it durable before the manifest naming them.
  STQ_RETURN_IF_ERROR(util::SyncParentDirectory(BlobPath("")).Annotate("write manifest"));
  nlohmann::ordered_json manifest;
  manifest["schemaVersion"] = 2;
  manifest["mediaType"] = kOllamaMediaManifest;
  manifest["config"] = config.ToJson();
  manifest["layers"] = nlohmann::ordered_json::array();
  for (const OllamaLayer& layer : layers) manifest["layers"].push_back(layer.ToJson());
  const fs::path path = fs::path(root_) / "manifests" / name.ManifestPath();
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (!fs::is_directory(path.parent_path(), ec)) {
    return Status::IoError(fmt::format("write manifest: cannot create '{}'", path.parent_path().string()));
  }
  STQ_RETURN_IF_ERROR(WriteFileAtomically(path.string(), manifest.dump() + "\n").Annotate("write manifest"));
  return path.string();
}

Result<OllamaManifest> OllamaStore::ReadManifest(const OllamaName& name) const {
  const std::string path = (fs::path(root_) / "manifests" / name.ManifestPath()).string();
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) {
    return Status::InvalidArgument(fmt::format("model '{}' not found in {} (no {})", name.Display(), root_, path));
  }
  STQ_ASSIGN_OR_RETURN(std::string text, util::ReadRegularFile(path, util::kJsonConfigLimit));
  return ParseOllamaManifest(text, path);
}

namespace {

bool IsBlobDigest(std::string_view digest) {
  constexpr std::string_view kPrefix = "sha256:";
  if (digest.size() != kPrefix.size() + 64 || !digest.starts_with(kPrefix)) return false;
  return std::all_of(digest.begin() + kPrefix.size(), digest.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

Result<OllamaLayer> ParseLayer(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) return Status::InvalidInput(where + " is not an object");
  OllamaLayer layer;
  const auto digest = j.find("digest");
  if (digest == j.end() || !digest->is_string() || !IsBlobDigest(digest->get_ref<const std::string&>())) {
    return Status::InvalidInput(where + " has no digest \"sha256:<64 hex digits>\"");
  }
  layer.digest = digest->get<std::string>();
  for (auto [key, field] : {std::pair{"mediaType", &layer.media_type}, std::pair{"name", &layer.name}}) {
    const auto it = j.find(key);
    if (it == j.end()) continue;
    if (!it->is_string()) return Status::InvalidInput(fmt::format("{}: \"{}\" is not a string", where, key));
    *field = it->get<std::string>();
  }
  if (const auto size = j.find("size"); size != j.end()) {
    if (!size->is_number_unsigned()) return Status::InvalidInput(where + ": \"size\" is not a non-negative integer");
    layer.size = size->get<uint64_t>();
  }
  return layer;
}

}  // namespace

Result<OllamaManifest> ParseOllamaManifest(std::string_view text, const std::string& path) {
  STQ_ASSIGN_OR_RETURN(nlohmann::json j, util::ParseJson(text, path, util::kJsonConfigLimit));
  const std::string where = util::Quoted(path);
  const auto layers = j.is_object() ? j.find("layers") : j.end();
  if (!j.is_object() || layers == j.end() || !layers->is_array()) {
    return Status::InvalidInput(where + ": not an ollama manifest (no \"layers\" array)");
  }
  OllamaManifest manifest;
  if (const auto config = j.find("config"); config != j.end()) {
    STQ_ASSIGN_OR_RETURN(manifest.config, ParseLayer(*config, where + ": \"config\""));
  }
  for (size_t i = 0; i < layers->size(); ++i) {
    STQ_ASSIGN_OR_RETURN(OllamaLayer layer, ParseLayer((*layers)[i], fmt::format("{}: layer {}", where, i)));
    manifest.layers.push_back(std::move(layer));
  }
  return manifest;
}

Status FlockRetrying(int fd, int operation, const std::string& path) {
  while (::flock(fd, operation) != 0) {
    if (errno != EINTR) return Status::FromErrno("lock", path, errno);
  }
  return Status::Ok();
}

}  // namespace stquant::output
