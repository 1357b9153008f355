// Writing a file of known size around the page cache (O_DIRECT). Bytes written at any offsets,
// in any order and from several threads, are gathered into aligned chunks in memory; a chunk goes
// to the disk, on a background thread, once every byte of it has arrived. The output is then
// never copied into the page cache nor written back at fsync: on the machines we measured, the
// buffered path cost more CPU time than quantizing (fresh page-cache pages are slow to fault in
// under a hypervisor) and left fsync a long wait at the end.
//
// Memory stays bounded whatever the write order: at most kMaxOpenChunks chunks are held partly
// written; past that, the oldest one's bytes go through plain pwrite (that chunk stays buffered
// from then on), so any order is correct and the common near-sequential order is fast.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "stquant/status.h"

namespace stquant::util {

class DirectWriter {
 public:
  static constexpr uint64_t kChunkBytes = 2 << 20;
  static constexpr size_t kMaxOpenChunks = 32;
  // Files smaller than this are written the plain way: direct I/O gains nothing there.
  static constexpr uint64_t kMinFileBytes = 8 << 20;

  // A writer for the file at `path`, already open as `buffered_fd` (which must outlive it), that
  // will hold exactly `file_size` bytes. Returns nullptr when direct I/O does not apply: the file
  // is small, or the file system refuses O_DIRECT or its alignment (then the caller writes
  // `buffered_fd` itself).
  static std::unique_ptr<DirectWriter> Open(const std::string& path, int buffered_fd, uint64_t file_size);

  ~DirectWriter();  // waits for the chunk writes in flight; writes nothing more
  DirectWriter(const DirectWriter&) = delete;
  DirectWriter& operator=(const DirectWriter&) = delete;

  // Writes `bytes` at `offset` (offset + size <= file_size). Each byte must be written once.
  // Thread-safe. Returns the first I/O error seen, including one of an earlier chunk write.
  Status Write(uint64_t offset, std::span<const uint8_t> bytes);

  // After every byte was written: waits for all chunk writes, then sets the file to its exact
  // size (the last chunk is written padded to the alignment). The caller then fsyncs.
  Status Finish();

  struct State;

 private:
  explicit DirectWriter(std::unique_ptr<State> state);
  Status WritePiece(uint64_t index, uint64_t within, std::span<const uint8_t> piece);  // one chunk's part
  std::unique_ptr<State> state_;
};

}  // namespace stquant::util
