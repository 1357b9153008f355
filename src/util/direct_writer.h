// Writing a file of known size around the page cache (O_DIRECT). Bytes written at any offsets,
// in any order and from several threads, are gathered into aligned chunks in memory; a chunk goes
// to the disk, on a background thread, once every byte of it has arrived. The output is then
// never copied into the page cache nor written back at fsync: on the machines we measured, the
// buffered path cost more CPU time than quantizing (fresh page-cache pages are slow to fault in
// under a hypervisor) and left fsync a long wait at the end.
//
// With an in-order tap (a content hash taken while writing), every byte is also handed to the tap
// once, in file order, as soon as the bytes before it have been: mostly the piece a thread has
// just written, while it is in its cache. A chunk completed ahead of its turn waits in memory
// until it has been tapped, then goes to the disk. A producer that writes in about file order
// (blocks handed out in order to a few threads) keeps only a few chunks waiting; one that writes a
// later region alongside (a tensor's scales beside its packed words) keeps that region's chunks.
// The tap is one thread at a time: while it is under way and half of kMaxOpenChunks are held, a
// thread about to start another chunk waits for it to catch up.
//
// Memory stays bounded whatever the write order: at most kMaxOpenChunks chunks are held, partly
// written or waiting for their turn; past that, the bytes of one of them go through plain pwrite
// (that chunk stays buffered from then on), so any order is correct and the common near-sequential
// order is fast. A tapped chunk that went the plain way is read back (from the page cache) for the
// tap when its turn comes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "stquant/status.h"

namespace stquant::util {

class DirectWriter {
 public:
  static constexpr uint64_t kChunkBytes = 2 << 20;
  static constexpr size_t kMaxOpenChunks = 32;
  // Files smaller than this are written the plain way: the page cache costs little there, and
  // direct I/O would cost one more open.
  static constexpr uint64_t kMinFileBytes = 1 << 20;

  // Gets the bytes of the file in file order, each byte once, one call at a time.
  using InOrderTap = std::function<void(std::span<const uint8_t>)>;

  // A writer for the file at `path`, already open as `buffered_fd` (which must outlive it), that
  // will hold exactly `file_size` bytes. Without a tap, returns nullptr when direct I/O does not
  // apply: the file is small, or the file system refuses O_DIRECT or its alignment (then the
  // caller writes `buffered_fd` itself). With a tap it always returns a writer, which then sends
  // its complete chunks through `buffered_fd` where direct I/O does not apply. The tap is called
  // from a writing thread (the one that completes a chunk whose turn it is, or that is tapping
  // already), outside any lock; once every Write has returned, the tap has seen all bytes written.
  static std::unique_ptr<DirectWriter> Open(const std::string& path, int buffered_fd, uint64_t file_size,
                                            InOrderTap tap = nullptr);

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
  std::unique_ptr<State> state_;
};

}  // namespace stquant::util
