#include "util/input_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <span>

#include <fmt/format.h>

#include "util/printable.h"

namespace stquant::util {

namespace {

std::string_view KindOf(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "an unknown kind of file";
}

Status NotRegular(const std::string& path, mode_t mode) {
  return Status::InvalidInput(fmt::format("{}: not a regular file ({})", Quoted(path), KindOf(mode)));
}

// The status for `err` from stat or open of an input: the errors that say what is wrong with the
// input are InvalidInput; the others are failures of the OS.
Status InputError(const std::string& path, int err) {
  const std::string where = Quoted(path);
  switch (err) {
    case ENOENT: {
      struct stat st {};
      if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
        char target[4096];
        const ssize_t n = ::readlink(path.c_str(), target, sizeof(target));
        const std::string_view shown = n > 0 ? std::string_view(target, static_cast<size_t>(n)) : "?";
        return Status::InvalidInput(
            fmt::format("{}: dangling symbolic link (its target {} does not exist)", where, Quoted(shown)));
      }
      return Status::InvalidInput(where + ": no such file or directory");
    }
    case ELOOP:
      return Status::InvalidInput(where + ": symbolic link loop (too many levels of symbolic links)");
    case EACCES:
    case EPERM:
      return Status::InvalidInput(where + ": permission denied");
    case ENOTDIR:
      return Status::InvalidInput(where + ": a component of the path is not a directory");
    case ENAMETOOLONG:
      return Status::InvalidInput(where + ": file name too long");
    case ENXIO:
    case ENODEV:
      return Status::InvalidInput(where + ": not a regular file (a device or socket without a driver)");
    default:
      return Status::FromErrno("open", path, err);
  }
}

}  // namespace

Status CheckRegularFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return InputError(path, errno);
  if (!S_ISREG(st.st_mode)) return NotRegular(path, st.st_mode);
  return Status::Ok();
}

Result<RegularFile> OpenRegularFile(const std::string& path) {
  STQ_RETURN_IF_ERROR(CheckRegularFile(path));
  int raw;
  do {
    raw = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) return InputError(path, errno);
  RegularFile file{Fd(raw), 0};
  struct stat st {};
  if (::fstat(raw, &st) != 0) return Status::FromErrno("stat", path, errno);
  if (!S_ISREG(st.st_mode)) return NotRegular(path, st.st_mode);
  // Reads of a regular file never block anyway; the flag goes so that nothing downstream sees it.
  const int flags = ::fcntl(raw, F_GETFL);
  if (flags < 0 || ::fcntl(raw, F_SETFL, flags & ~O_NONBLOCK) != 0) return Status::FromErrno("fcntl", path, errno);
  file.size = static_cast<uint64_t>(st.st_size);
  return file;
}

Result<std::string> ReadRegularFile(const std::string& path, const InputLimit& limit) {
  STQ_ASSIGN_OR_RETURN(RegularFile file, OpenRegularFile(path));
  if (file.size > limit.max_bytes) {
    return Status::InvalidInput(fmt::format("{}: {} bytes, over the limit of {} MiB for {}", Quoted(path), file.size,
                                            limit.max_bytes >> 20, limit.what));
  }
  std::string text(static_cast<size_t>(file.size), '\0');
  STQ_RETURN_IF_ERROR(
      PreadFull(file.fd.get(), {reinterpret_cast<uint8_t*>(text.data()), text.size()}, 0, path));
  return text;
}

}  // namespace stquant::util
