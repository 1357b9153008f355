#include "stquant/hf_cache.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

namespace stquant {

namespace {

namespace fs = std::filesystem;

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string ExpandUser(const std::string& path) {
  if (path == "~" || path.starts_with("~/")) return Env("HOME") + path.substr(1);
  return path;
}

bool IsRepoNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
         c == '.';
}

// One part of a repo id: REPO_ID_REGEX's [\w\-.]{1,96} between word boundaries.
bool IsRepoIdPart(std::string_view part) {
  if (part.empty() || part.size() > 96) return false;
  for (char c : part) {
    if (!IsRepoNameChar(c)) return false;
  }
  auto word = [](char c) { return c != '-' && c != '.'; };
  return word(part.front()) && word(part.back());
}

bool IsCommitHash(std::string_view text) {
  if (text.size() != 40) return false;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// A revision names a file under refs/ ("main", "v1.0", "refs/pr/1"): relative, no "." or ".."
// component, so that it cannot lead out of the repository's folder.
bool IsSafeRelativePath(std::string_view text) {
  if (text.empty() || text.front() == '/') return false;
  size_t start = 0;
  while (start <= text.size()) {
    size_t slash = text.find('/', start);
    if (slash == std::string_view::npos) slash = text.size();
    const std::string_view part = text.substr(start, slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = slash + 1;
  }
  return true;
}

std::string FetchHint(const std::string& repo_id, const std::string& revision) {
  return revision.empty() ? fmt::format("hf download {}", repo_id)
                          : fmt::format("hf download {} --revision {}", repo_id, revision);
}

}  // namespace

std::string HfHubCacheDir() {
  if (std::string dir = Env("HF_HUB_CACHE"); !dir.empty()) return ExpandUser(dir);
  if (std::string dir = Env("HUGGINGFACE_HUB_CACHE"); !dir.empty()) return ExpandUser(dir);
  std::string home = Env("HF_HOME");
  if (home.empty()) {
    const std::string xdg = Env("XDG_CACHE_HOME");
    home = (xdg.empty() ? Env("HOME") + "/.cache" : xdg) + "/huggingface";
  }
  return ExpandUser(home) + "/hub";
}

bool IsHfRepoId(std::string_view text) {
  const size_t slash = text.find('/');
  if (slash != std::string_view::npos) {
    if (text.find('/', slash + 1) != std::string_view::npos || !IsRepoIdPart(text.substr(0, slash))) return false;
  }
  const std::string_view name = slash == std::string_view::npos ? text : text.substr(slash + 1);
  return IsRepoIdPart(name) && text.find("--") == std::string_view::npos &&
         text.find("..") == std::string_view::npos && !text.ends_with(".git");
}

Result<std::string> ResolveHfSnapshot(const std::string& cache_dir, const std::string& repo_id,
                                      const std::string& revision) {
  if (!IsHfRepoId(repo_id)) {
    return Status::InvalidArgument(fmt::format("'{}' is not a Hugging Face repo id (org/name)", repo_id));
  }
  std::string folder_name = "models--" + repo_id;
  if (const size_t slash = folder_name.find('/'); slash != std::string::npos) folder_name.replace(slash, 1, "--");
  const std::string storage = cache_dir + "/" + folder_name;
  const std::string hint = FetchHint(repo_id, revision);
  std::error_code ec;
  if (!fs::is_directory(storage, ec)) {
    return Status::InvalidArgument(fmt::format(
        "'{}' is not a local directory, and the Hugging Face cache {} does not hold it (no {}); stquant never "
        "downloads: fetch it first with `{}`",
        repo_id, cache_dir, folder_name, hint));
  }
  const std::string rev = revision.empty() ? "main" : revision;
  std::string commit;
  if (IsCommitHash(rev)) {
    commit = rev;
  } else {
    if (!IsSafeRelativePath(rev)) {
      return Status::InvalidArgument(fmt::format("'{}': revision '{}' is not a branch, tag or commit", repo_id, rev));
    }
    const std::string ref = storage + "/refs/" + rev;
    std::ifstream in(ref, std::ios::binary);
    if (!fs::is_regular_file(ref, ec) || !in) {
      return Status::InvalidArgument(fmt::format(
          "'{}': revision '{}' is not in the Hugging Face cache (no {}); stquant never downloads: fetch it first "
          "with `{}`",
          repo_id, rev, ref, hint));
    }
    char buffer[256];
    in.read(buffer, sizeof buffer);
    commit.assign(buffer, static_cast<size_t>(in.gcount()));
    while (!commit.empty() && (commit.back() == '\n' || commit.back() == '\r' || commit.back() == ' ')) commit.pop_back();
    if (!IsRepoIdPart(commit) || commit.find("..") != std::string::npos) {
      return Status::InvalidInput(fmt::format("{}: not a commit hash", ref));
    }
  }
  const std::string snapshot = storage + "/snapshots/" + commit;
  if (!fs::is_directory(snapshot, ec)) {
    return Status::InvalidArgument(fmt::format(
        "'{}': revision '{}' (commit {}) is not in the Hugging Face cache (no {}); stquant never downloads: fetch it "
        "first with `{}`",
        repo_id, rev, commit, snapshot, hint));
  }
  return snapshot;
}

Result<std::string> ResolveModelSource(const std::string& source, const std::string& revision) {
  std::error_code ec;
  if (fs::exists(source, ec)) {
    if (!revision.empty()) {
      return Status::InvalidArgument(fmt::format(
          "--revision applies to a Hugging Face repo id, but '{}' is a local path", source));
    }
    return source;
  }
  if (!IsHfRepoId(source)) {
    return Status::InvalidArgument(fmt::format(
        "'{}' does not exist (neither a local model directory nor a Hugging Face repo id such as Qwen/Qwen3-8B)",
        source));
  }
  return ResolveHfSnapshot(HfHubCacheDir(), source, revision);
}

}  // namespace stquant
