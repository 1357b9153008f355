#include "util/file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <vector>
#include <utility>

#include <fmt/format.h>

namespace stquant::util {

namespace {

// The injected fault. `armed` is checked first so the normal path costs one relaxed load.
struct WriteFault {
  std::atomic<bool> armed{false};
  std::atomic<uint64_t> budget{0};  // bytes that may still be written
  std::atomic<int> err{0};
};
WriteFault& Fault() {
  static WriteFault fault;
  return fault;
}

// How many of `want` bytes the fault lets through: `want` when not armed, fewer (maybe 0) when
// the budget runs out. Claims the bytes it grants.
size_t FaultAllowance(size_t want) {
  WriteFault& fault = Fault();
  if (!fault.armed.load(std::memory_order_relaxed)) return want;
  uint64_t budget = fault.budget.load();
  while (true) {
    const uint64_t grant = budget < want ? budget : want;
    if (fault.budget.compare_exchange_weak(budget, budget - grant)) return static_cast<size_t>(grant);
  }
}

bool FaultExhausted() {
  WriteFault& fault = Fault();
  return fault.armed.load(std::memory_order_relaxed) && fault.budget.load() == 0;
}

// 64 random bits for temp names. O_EXCL makes collisions harmless, so a weak fallback will do.
uint64_t RandomBits() {
  uint64_t bits = 0;
  if (getrandom(&bits, sizeof(bits), GRND_NONBLOCK) == static_cast<ssize_t>(sizeof(bits))) return bits;
  static std::atomic<uint64_t> counter{0};
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return static_cast<uint64_t>(now) * 0x9E3779B97F4A7C15ull + counter.fetch_add(1);
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) Reset(other.Release());
  return *this;
}

int Fd::Release() { return std::exchange(fd_, -1); }

void Fd::Reset(int fd) {
  // close() is not retried on EINTR: on Linux the descriptor is released even then, and a retry
  // could close a descriptor another thread just opened.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Status PreadFull(int fd, std::span<uint8_t> dst, uint64_t offset, std::string_view path) {
  size_t done = 0;
  while (done < dst.size()) {
    const ssize_t n = ::pread(fd, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("read", path, errno);
    }
    if (n == 0) {
      std::string message = "read '";
      message.append(path).append("': unexpected end of file at offset ")
          .append(std::to_string(offset + done)).append(" (file changed while open?)");
      return Status::IoError(std::move(message));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status PwriteFull(int fd, std::span<const uint8_t> src, uint64_t offset, std::string_view path) {
  size_t done = 0;
  while (done < src.size()) {
    const size_t want = FaultAllowance(src.size() - done);
    if (want == 0) return Status::FromErrno("write", path, Fault().err.load());
    const ssize_t n = ::pwrite(fd, src.data() + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("write", path, errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status PwriteWhole(int fd, std::span<const uint8_t> src, uint64_t offset, std::string_view path) {
  if (FaultAllowance(src.size()) < src.size()) return Status::FromErrno("write", path, Fault().err.load());
  ssize_t n;
  do {
    n = ::pwrite(fd, src.data(), src.size(), static_cast<off_t>(offset));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Status::FromErrno("write", path, errno);
  if (static_cast<size_t>(n) == src.size()) return Status::Ok();
  // A short write (the disk filled up?): writing the rest says why (ENOSPC), unless the rest is
  // not aligned for direct I/O (EINVAL).
  ssize_t rest;
  do {
    rest = ::pwrite(fd, src.data() + n, src.size() - n, static_cast<off_t>(offset + n));
  } while (rest < 0 && errno == EINTR);
  if (rest < 0 && errno != EINVAL) return Status::FromErrno("write", path, errno);
  if (rest >= 0 && static_cast<size_t>(n + rest) == src.size()) return Status::Ok();
  return Status::IoError(
      fmt::format("write '{}': {} of {} bytes written at offset {} (disk full?)", path, n, src.size(), offset));
}

Status Fsync(int fd, std::string_view path) {
  if (FaultExhausted()) return Status::FromErrno("fsync", path, Fault().err.load());
  while (::fsync(fd) != 0) {
    if (errno != EINTR) return Status::FromErrno("fsync", path, errno);
  }
  return Status::Ok();
}

std::string ParentDirectory(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status SyncParentDirectory(const std::string& path) {
  const std::string dir = ParentDirectory(path);
  int raw;
  do {
    raw = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) return Status::FromErrno("open directory", dir, errno);
  Fd fd(raw);
  if (FaultExhausted()) return Status::FromErrno("fsync directory", dir, Fault().err.load());
  while (::fsync(fd.get()) != 0) {
    if (errno == EINTR) continue;
    if (errno == EINVAL) break;  // e.g. some network and FUSE filesystems; nothing more we can do
    return Status::FromErrno("fsync directory", dir, errno);
  }
  return Status::Ok();
}

Result<MappedFile> MappedFile::Map(int fd, uint64_t size, std::string_view path) {
  MappedFile mapped;
  if (size == 0) return mapped;
  if (size > SIZE_MAX) return Status::Unsupported(std::string(path) + ": file too large to map");
  void* p = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno("mmap", path, errno);
  mapped.data_ = static_cast<const uint8_t*>(p);
  mapped.size_ = static_cast<size_t>(size);
  return mapped;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Result<AtomicFile> AtomicFile::Create(const std::string& final_path) {
  const std::string base = BaseName(final_path);
  if (base.empty()) return Status::InvalidArgument("'" + final_path + "' names a directory, not a file");
  // A few tries: EEXIST only happens on a collision of 64 random bits or a leftover with our pid.
  for (int attempt = 0; attempt < 8; ++attempt) {
    char suffix[64];
    std::snprintf(suffix, sizeof(suffix), ".tmp-%ld-%016llx", static_cast<long>(::getpid()),
                  static_cast<unsigned long long>(RandomBits()));
    // Same directory prefix as the final path (none, "/", "dir/"), then the hidden name.
    std::string temp = final_path.substr(0, final_path.size() - base.size());
    temp.append(".").append(base).append(suffix);
    int fd;
    do {
      fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      return Status::FromErrno("create", temp, errno);
    }
    AtomicFile file;
    file.fd_.Reset(fd);
    file.final_path_ = final_path;
    file.temp_path_ = std::move(temp);
    return file;
  }
  return Status::IoError("create temp file beside '" + final_path + "': too many name collisions");
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : fd_(std::move(other.fd_)),
      final_path_(std::move(other.final_path_)),
      temp_path_(std::exchange(other.temp_path_, std::string())),
      committed_(other.committed_) {}

AtomicFile& AtomicFile::operator=(AtomicFile&& other) noexcept {
  if (this != &other) {
    Abandon();
    fd_ = std::move(other.fd_);
    final_path_ = std::move(other.final_path_);
    temp_path_ = std::exchange(other.temp_path_, std::string());
    committed_ = other.committed_;
  }
  return *this;
}

void AtomicFile::Abandon() {
  fd_.Reset();
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
}

Status AtomicFile::Commit() {
  if (committed_ || temp_path_.empty()) {
    return Status::Internal("commit of '" + final_path_ + "': already committed or abandoned");
  }
  Status status = Fsync(fd_.get(), temp_path_);
  if (status.ok()) {
    // close() can report a deferred write error (NFS); after a successful fsync that is rare,
    // but it must not be ignored for the last write of a file we are about to publish.
    if (::close(fd_.Release()) != 0) status = Status::FromErrno("close", temp_path_, errno);
  }
  if (status.ok() && ::rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    status = Status::FromErrno("rename to '" + final_path_ + "'", temp_path_, errno);
  }
  if (!status.ok()) {
    Abandon();
    return status;
  }
  committed_ = true;
  temp_path_.clear();
  STQ_RETURN_IF_ERROR(SyncParentDirectory(final_path_)
                          .Annotate("'" + final_path_ + "' renamed into place but not made durable"));
  return Status::Ok();
}

void SetWriteFaultForTesting(uint64_t after_bytes, int err) {
  WriteFault& fault = Fault();
  fault.err.store(err);
  fault.budget.store(after_bytes);
  fault.armed.store(true);
}

void ClearWriteFaultForTesting() { Fault().armed.store(false); }

}  // namespace stquant::util

namespace stquant::util {

namespace {

constexpr std::string_view kLockSuffix = ".lock";

// The tag of a temporary name after its prefix: "<pid>-<16 hex>" and what follows it; names of
// another form (older versions: "<pid>", "<pid>-<n>") are their own tag, which has no lock file.
std::string TagOf(std::string_view rest) {
  size_t i = 0;
  while (i < rest.size() && std::isdigit(static_cast<unsigned char>(rest[i]))) ++i;
  if (i == 0 || i + 17 > rest.size() || rest[i] != '-') return std::string(rest);
  for (size_t j = i + 1; j < i + 17; ++j) {
    if (!std::isxdigit(static_cast<unsigned char>(rest[j]))) return std::string(rest);
  }
  return std::string(rest.substr(0, i + 17));
}

}  // namespace

Result<TempLock> TempLock::Create(const std::string& dir, const std::string& prefix) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    char tag[64];
    std::snprintf(tag, sizeof(tag), "%ld-%016llx", static_cast<long>(::getpid()),
                  static_cast<unsigned long long>(RandomBits()));
    TempLock lock;
    lock.stem_ = dir + "/" + prefix + tag;
    const std::string path = lock.stem_ + std::string(kLockSuffix);
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      return Status::FromErrno("create", path, errno);
    }
    lock.fd_.Reset(fd);
    // A cleaner may take the lock file between open and flock and remove it: then the lock
    // would be on a removed file, so start again under a new name.
    struct stat held {}, named {};
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0 || ::fstat(fd, &held) != 0 || ::stat(path.c_str(), &named) != 0 ||
        held.st_ino != named.st_ino || held.st_dev != named.st_dev) {
      lock.fd_.Reset();
      lock.stem_.clear();
      continue;
    }
    return lock;
  }
  return Status::IoError("create a lock file in '" + dir + "': too many collisions");
}

void TempLock::Release() {
  if (fd_.get() >= 0) ::unlink((stem_ + std::string(kLockSuffix)).c_str());
  fd_.Reset();
}

TempLock::~TempLock() { Release(); }

TempLock& TempLock::operator=(TempLock&& other) noexcept {
  if (this != &other) {
    Release();
    fd_ = std::move(other.fd_);
    stem_ = std::move(other.stem_);
  }
  return *this;
}

std::vector<StaleTemp> RemoveStaleTemps(const std::string& dir, const std::string& prefix, bool dry_run) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::map<std::string, std::vector<fs::path>> by_tag;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    std::string_view name = file;
    if (name.starts_with('.') && !name.starts_with(prefix)) name.remove_prefix(1);
    if (!name.starts_with(prefix)) continue;
    by_tag[TagOf(name.substr(prefix.size()))].push_back(entry.path());
  }
  std::vector<StaleTemp> stale;
  for (const auto& [tag, paths] : by_tag) {
    // The lock file is created before any temporary of its tag and removed after the last one, so
    // a temporary without one is a leftover.
    const std::string lock_path = dir + "/" + prefix + tag + std::string(kLockSuffix);
    // O_NONBLOCK: a FIFO of that name would block the open forever; it is no lock of ours.
    Fd lock(::open(lock_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (lock.get() < 0 && errno != ENOENT) continue;  // unreadable (another user's): leave it
    struct stat st {};
    if (lock.get() >= 0 && (::fstat(lock.get(), &st) != 0 || !S_ISREG(st.st_mode))) continue;
    if (lock.get() >= 0 && ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) continue;  // its owner runs
    for (const fs::path& path : paths) {
      const bool file = fs::is_regular_file(fs::symlink_status(path, ec));
      const uint64_t bytes = file ? fs::file_size(path, ec) : 0;
      stale.push_back({path.string(), ec ? 0 : bytes});
      if (!dry_run && path.native() != lock_path) fs::remove_all(path, ec);
    }
    if (!dry_run && lock.get() >= 0) ::unlink(lock_path.c_str());
  }
  return stale;
}

}  // namespace stquant::util
