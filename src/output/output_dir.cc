#include "output/output_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "util/file.h"
#include "util/input_file.h"

namespace stquant::output {

namespace fs = std::filesystem;

namespace {

std::string TempPrefixFor(const fs::path& target) { return "." + target.filename().string() + ".stquant-tmp-"; }

Status AlreadyExists(const std::string& target) {
  return Status::InvalidArgument(
      fmt::format("output '{}' already exists: it appeared while converting (use --force to replace it)", target));
}

Status FsyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("open", path, errno);
  util::Fd owned(fd);
  const Status status = util::Fsync(fd, path);
  // Some filesystems cannot fsync a directory; the data files were synced one by one already.
  if (!status.ok() && directory) return Status::Ok();
  return status;
}

}  // namespace

Result<OutputDir> OutputDir::Create(const std::string& target, bool replace) {
  if (target.empty()) return Status::InvalidArgument("no output directory given");
  fs::path path = fs::absolute(fs::path(target)).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);  // as mlx-lm's mkdir(parents=True)
  if (!fs::is_directory(path.parent_path(), ec)) {
    return Status::InvalidArgument(fmt::format("cannot create the output's parent directory '{}'", path.parent_path().string()));
  }
  if (fs::exists(fs::symlink_status(path, ec)) && !replace) {
    return Status::InvalidArgument(fmt::format("output '{}' already exists (use --force to replace it)", target));
  }
  // Leftovers of killed runs to this target go first; those of runs still going stay.
  const std::string parent = path.parent_path().string();
  util::RemoveStaleTemps(parent, TempPrefixFor(path));
  OutputDir dir;
  STQ_ASSIGN_OR_RETURN(dir.lock_, util::TempLock::Create(parent, TempPrefixFor(path)));
  dir.target_ = path.string();
  dir.temp_ = dir.lock_.stem();
  dir.replace_ = replace;
  if (::mkdir(dir.temp_.c_str(), 0755) != 0) return Status::FromErrno("mkdir", dir.temp_, errno);
  return dir;
}

OutputDir::OutputDir(OutputDir&& other) noexcept
    : lock_(std::move(other.lock_)), target_(std::move(other.target_)), temp_(std::move(other.temp_)),
      replace_(other.replace_), committed_(other.committed_) {
  other.committed_ = true;  // the moved-from object owns nothing
}

OutputDir::~OutputDir() {
  if (committed_ || temp_.empty()) return;
  std::error_code ec;
  fs::remove_all(temp_, ec);
}

namespace {

// renameat2 with RENAME_NOREPLACE or RENAME_EXCHANGE: 0, else errno.
int Rename2(const std::string& from, const std::string& to, unsigned int flags) {
  return ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags) == 0 ? 0 : errno;
}

}  // namespace

Status OutputDir::Commit() {
  STQ_RETURN_IF_ERROR(FsyncPath(temp_, /*directory=*/true));
  // Atomically: put the temporary directory in place only where no target exists, or (replace)
  // swap it with the target, so that a concurrent run never sees or leaves a mixed directory.
  int err = 0;
  for (int attempt = 0; attempt < 8; ++attempt) {
    err = Rename2(temp_, target_, RENAME_NOREPLACE);
    if (err != EEXIST && err != ENOTEMPTY) break;
    if (!replace_) return AlreadyExists(target_);
    err = Rename2(temp_, target_, RENAME_EXCHANGE);
    if (err != ENOENT) break;  // ENOENT: the target went away meanwhile; try again
  }
  if (err == EINVAL || err == ENOSYS) return CommitByRenames();  // a filesystem without renameat2 flags
  if (err != 0) return Status::FromErrno("rename", temp_, err);
  committed_ = true;
  // After an exchange the old target is at the temporary name.
  std::error_code ec;
  fs::remove_all(temp_, ec);
  return FsyncPath(fs::path(target_).parent_path().string(), /*directory=*/true);
}

Status OutputDir::CommitByRenames() {
  std::error_code ec;
  std::string old;
  if (fs::exists(fs::symlink_status(target_, ec))) {
    if (!replace_) return AlreadyExists(target_);
    old = temp_ + ".old";  // a temporary name of this run: removed as stale if it is killed
    if (::rename(target_.c_str(), old.c_str()) != 0) return Status::FromErrno("rename", target_, errno);
  }
  if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    if (!old.empty()) (void)::rename(old.c_str(), target_.c_str());
    return Status::FromErrno("rename", temp_, err);
  }
  committed_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
  return FsyncPath(fs::path(target_).parent_path().string(), /*directory=*/true);
}

Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  STQ_ASSIGN_OR_RETURN(util::AtomicFile file, util::AtomicFile::Create(path));
  STQ_RETURN_IF_ERROR(util::PwriteFull(
      file.fd(), {reinterpret_cast<const uint8_t*>(contents.data()), contents.size()}, 0, file.temp_path()));
  return file.Commit();
}

Status CopyFileAtomically(const std::string& from, const std::string& path,
                          const std::function<void(std::span<const uint8_t>)>& copied) {
  STQ_ASSIGN_OR_RETURN(util::RegularFile in, util::OpenRegularFile(from));
  STQ_ASSIGN_OR_RETURN(util::AtomicFile file, util::AtomicFile::Create(path));
  std::vector<uint8_t> buffer(std::min<uint64_t>(in.size, 8 << 20));
  for (uint64_t offset = 0; offset < in.size; offset += buffer.size()) {
    std::span<uint8_t> piece(buffer.data(), std::min<uint64_t>(buffer.size(), in.size - offset));
    STQ_RETURN_IF_ERROR(util::PreadFull(in.fd.get(), piece, offset, from));
    STQ_RETURN_IF_ERROR(util::PwriteFull(file.fd(), piece, offset, file.temp_path()));
    if (copied) copied(piece);
  }
  return file.Commit();
}

}  // namespace stquant::output
