#include "output/output_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "util/file.h"

namespace stquant::output {

namespace fs = std::filesystem;

namespace {

std::string TempNameFor(const fs::path& target) {
  return (target.parent_path() / ("." + target.filename().string() + ".stquant-tmp-" + std::to_string(::getpid())))
      .string();
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
  // Leftovers of interrupted runs to this target (any pid) go first.
  const std::string prefix = "." + path.filename().string() + ".stquant-tmp-";
  for (const auto& entry : fs::directory_iterator(path.parent_path(), ec)) {
    if (entry.path().filename().string().rfind(prefix, 0) == 0) fs::remove_all(entry.path(), ec);
  }
  OutputDir dir;
  dir.target_ = path.string();
  dir.temp_ = TempNameFor(path);
  dir.replace_ = replace;
  if (::mkdir(dir.temp_.c_str(), 0755) != 0) return Status::FromErrno("mkdir", dir.temp_, errno);
  return dir;
}

OutputDir::OutputDir(OutputDir&& other) noexcept
    : target_(std::move(other.target_)), temp_(std::move(other.temp_)), replace_(other.replace_),
      committed_(other.committed_) {
  other.committed_ = true;  // the moved-from object owns nothing
}

OutputDir::~OutputDir() {
  if (committed_ || temp_.empty()) return;
  std::error_code ec;
  fs::remove_all(temp_, ec);
}

Status OutputDir::Commit() {
  STQ_RETURN_IF_ERROR(FsyncPath(temp_, /*directory=*/true));
  std::error_code ec;
  std::string old;
  if (fs::exists(fs::symlink_status(target_, ec))) {
    if (!replace_) return Status::InvalidArgument(fmt::format("output '{}' appeared while converting", target_));
    old = target_ + ".stquant-old-" + std::to_string(::getpid());
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

Status CopyFileAtomically(const std::string& from, const std::string& path) {
  STQ_ASSIGN_OR_RETURN(util::Fd in, util::OpenForRead(from));
  STQ_ASSIGN_OR_RETURN(uint64_t size, util::RegularFileSize(in.get(), from));
  STQ_ASSIGN_OR_RETURN(util::AtomicFile file, util::AtomicFile::Create(path));
  std::vector<uint8_t> buffer(std::min<uint64_t>(size, 8 << 20));
  for (uint64_t offset = 0; offset < size; offset += buffer.size()) {
    std::span<uint8_t> piece(buffer.data(), std::min<uint64_t>(buffer.size(), size - offset));
    STQ_RETURN_IF_ERROR(util::PreadFull(in.get(), piece, offset, from));
    STQ_RETURN_IF_ERROR(util::PwriteFull(file.fd(), piece, offset, file.temp_path()));
  }
  return file.Commit();
}

}  // namespace stquant::output
