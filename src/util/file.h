// The thin file layer: every open, read, write, sync and rename of stquant goes through here, so
// that errno is turned into a Status (naming the operation and the path) in one place and so that
// tests can inject write faults (ENOSPC, EIO) without filling a real disk.
//
// Thread safety: Fd, MappedFile and AtomicFile are move-only values; one object must not be moved
// or destroyed while another thread uses it. The free functions are thread-safe (pread/pwrite on
// one descriptor from several threads is fine for disjoint ranges).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "stquant/status.h"

namespace stquant::util {

// Owns a POSIX file descriptor; closes it on destruction. -1 means "none".
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& other) noexcept : fd_(other.Release()) {}
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int Release();
  // Closes the current descriptor (errors from close are ignored: the data was either synced
  // by an explicit Fsync or is not needed) and takes `fd`.
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Opening the files stquant reads (whose names come from strangers) is util/input_file.h.

// Reads exactly dst.size() bytes at `offset`, retrying on EINTR and short reads. Hitting end of
// file first is an IoError ("unexpected end of file"): callers validate sizes before reading, so
// this means the file shrank under us.
Status PreadFull(int fd, std::span<uint8_t> dst, uint64_t offset, std::string_view path);

// Writes all of `src` at `offset`, retrying on EINTR and short writes. Subject to the fault
// injected by SetWriteFaultForTesting.
Status PwriteFull(int fd, std::span<const uint8_t> src, uint64_t offset, std::string_view path);

// One pwrite of all of `src` at `offset`, for O_DIRECT descriptors (where the rest of a short
// write may not be aligned): after a short write the rest is tried once, so that the error names
// its cause (ENOSPC); one that stays short is an IoError. An injected fault (see
// SetWriteFaultForTesting) fails it before anything is written.
Status PwriteWhole(int fd, std::span<const uint8_t> src, uint64_t offset, std::string_view path);

// fsync, retried on EINTR.
Status Fsync(int fd, std::string_view path);

// Opens the directory that contains `path` and fsyncs it, so that a rename or a new file in it is
// durable. Filesystems that cannot sync a directory (EINVAL) are tolerated.
Status SyncParentDirectory(const std::string& path);

// "dir/name" -> "dir"; "name" -> "."; "/name" -> "/".
std::string ParentDirectory(const std::string& path);

// A read-only, private memory map of a whole file. Touching a page after the file was truncated
// raises SIGBUS: map only files that this process does not expect to change.
class MappedFile {
 public:
  MappedFile() = default;
  // Maps `size` bytes of `fd` from offset 0. A size of 0 gives an empty mapping (no mmap call).
  static Result<MappedFile> Map(int fd, uint64_t size, std::string_view path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// A file that appears under its final name only when committed (LevelDB's SetCurrentFile):
// Create makes ".<final>.tmp-<pid>-<random>" beside the final path (same directory, so the rename
// is atomic on one filesystem); Commit fsyncs it, closes it, renames it onto the final path and
// fsyncs the directory. The destructor of an uncommitted AtomicFile (and a failed Commit) removes
// the temp file, so a failure never leaves a partial file under either name.
class AtomicFile {
 public:
  AtomicFile() = default;
  static Result<AtomicFile> Create(const std::string& final_path);
  ~AtomicFile() { Abandon(); }
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&& other) noexcept;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  int fd() const { return fd_.get(); }
  const std::string& final_path() const { return final_path_; }
  const std::string& temp_path() const { return temp_path_; }
  bool committed() const { return committed_; }

  // REQUIRES: not committed yet. On failure the temp file is gone and the final path untouched
  // (unless the rename itself succeeded and only the directory sync failed: then the file is in
  // place but its durability is not guaranteed, and the error says so).
  Status Commit();
  // Closes and removes the temp file now (no-op once committed or moved from).
  void Abandon();

 private:
  Fd fd_;
  std::string final_path_;
  std::string temp_path_;
  bool committed_ = false;
};

// Marks a process's temporaries in `dir` as in use, so that concurrent runs never remove each
// other's: the lock file "<prefix><tag>.lock" (tag = "<pid>-<16 hex digits>", unique) is created
// and flock()ed for the object's lifetime, and the owner names its temporaries "<prefix><tag>...".
// The destructor removes the lock file; the kernel releases the lock of a killed process, whose
// temporaries RemoveStaleTemps then removes.
class TempLock {
 public:
  TempLock() = default;
  static Result<TempLock> Create(const std::string& dir, const std::string& prefix);
  ~TempLock();
  TempLock(TempLock&& other) noexcept = default;
  TempLock& operator=(TempLock&& other) noexcept;
  TempLock(const TempLock&) = delete;
  TempLock& operator=(const TempLock&) = delete;

  // "<dir>/<prefix><tag>": the start of the owner's temporary names.
  const std::string& stem() const { return stem_; }

 private:
  void Release();
  Fd fd_;
  std::string stem_;
};

// Removes the entries of `dir` named "<prefix><tag>..." or ".<prefix><tag>..." whose owner is gone:
// their lock file is missing or nobody holds it (then it goes too). Best effort: errors are ignored.
// Returns them (the lock files too) with their sizes (0 for a directory); with `dry_run` they are
// only listed.
struct StaleTemp {
  std::string path;
  uint64_t bytes = 0;
};
std::vector<StaleTemp> RemoveStaleTemps(const std::string& dir, const std::string& prefix, bool dry_run = false);

// Fault injection for tests, process-wide: after `after_bytes` more bytes have been written by
// PwriteFull (counted over all files and threads), every further write fails with `err` (a short
// write is done first so that the failure lands mid-buffer, as a real ENOSPC does). Once the
// budget is spent, Fsync and SyncParentDirectory fail with `err` too. Not for production use.
void SetWriteFaultForTesting(uint64_t after_bytes, int err);
void ClearWriteFaultForTesting();

}  // namespace stquant::util
