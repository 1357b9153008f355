// Reading and writing safetensors files.
//
// File layout (https://github.com/huggingface/safetensors, "format"):
//   [8 bytes]  N, little-endian uint64: length of the JSON header
//   [N bytes]  UTF-8 JSON object: tensor name -> {"dtype", "shape", "data_offsets": [begin, end]},
//              plus an optional "__metadata__" string->string map; may be padded with spaces
//   [rest]     the data section; data_offsets are relative to its start
//
// Reader: validates the whole header strictly before any tensor is handed out (see
// docs/safetensors.md for every rule and its message). Tensor bytes are read with pread or viewed
// through a read-only memory map; nothing is read until asked for.
// Writer: streams; the header (with all offsets) is written first, then tensor data, which the
// caller supplies in any order and in any number of pieces. The file appears under its final name
// only after Commit() (temp file in the same directory, fsync, rename, directory fsync).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "stquant/dtype.h"
#include "stquant/status.h"

namespace stquant::util {
class MappedFile;
}  // namespace stquant::util

namespace stquant::safetensors {

// Headers longer than this are refused (the Rust and MLX loaders use the same limit).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets relative to the start of the data section
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  int64_t num_elements() const;  // product of shape (validated not to overflow)
};

// Thread safety: after Open, every const method may be called from any number of threads.
class Reader {
 public:
  // Opens and validates `path`: reads the 8-byte length and the header only (no tensor data).
  // Errors: IoError when the OS fails (open, read); InvalidInput, one line "<path>: <rule>", for a
  // malformed file, naming the tensor where one is involved (docs/safetensors.md lists them all).
  static Result<std::unique_ptr<Reader>> Open(const std::string& path);
  // Validates a header held in memory (the JSON text, without the 8-byte length) against a data
  // section of `data_bytes` bytes. Used by Open and by the fuzzer. Any byte string is safe input.
  // Errors are InvalidInput. When several rules are broken the first one found is reported:
  // UTF-8, then JSON syntax and duplicate keys (in text order), then the entries in name order
  // (byte order, "__metadata__" in its place), then overlaps in offset order.
  struct Header {
    std::vector<TensorInfo> tensors;  // sorted by (begin, end, name): the order of the data
    // nullopt when "__metadata__" is absent or null (MLX writes null); else its string map.
    std::optional<std::map<std::string, std::string>> metadata;
    // Accepted oddities, one line each, naming the file: gaps between tensors and trailing bytes
    // after the last one (at most kMaxGapWarnings gap lines, then one summary line).
    std::vector<std::string> warnings;
  };
  static constexpr size_t kMaxGapWarnings = 8;
  static Result<Header> ParseHeader(std::string_view json, uint64_t data_bytes,
                                    const std::string& path_for_messages);

  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  uint64_t data_offset() const { return data_offset_; }  // 8 + N
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::optional<std::map<std::string, std::string>>& metadata() const { return header_.metadata; }
  const std::vector<std::string>& warnings() const { return header_.warnings; }
  // nullptr when absent. O(1).
  const TensorInfo* Find(std::string_view name) const;

  // Copies bytes [offset, offset + dst.size()) of the tensor's data into dst (pread, retried on
  // EINTR and short reads). REQUIRES: offset + dst.size() <= tensor.nbytes(), else
  // InvalidArgument; `tensor` comes from this Reader (a range outside the data section is
  // refused). IoError when the file shrank since Open.
  Status Read(const TensorInfo& tensor, uint64_t offset, std::span<uint8_t> dst) const;
  // A zero-copy view of the tensor's bytes through a read-only mmap of the whole file, mapped on
  // first use (once, thread-safe). The view lives as long as the Reader. A file truncated by
  // someone else after mapping raises SIGBUS on access: map only files that are not being written.
  // A 0-byte tensor gives an empty span without mapping anything.
  Result<std::span<const uint8_t>> View(const TensorInfo& tensor) const;
  // Asks the kernel to read bytes [offset, offset + length) of a tensor into the page cache
  // (posix_fadvise WILLNEED; clipped to the tensor); best effort, does not wait for the disk.
  void Prefetch(const TensorInfo& tensor, uint64_t offset, uint64_t length) const;

 private:
  Reader() = default;
  // InvalidArgument unless [begin, end) of `tensor` lies inside this file's data section.
  Status CheckRange(const TensorInfo& tensor) const;

  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint64_t data_offset_ = 0;
  Header header_;
  std::unordered_map<std::string_view, size_t> by_name_;  // views into header_.tensors names
  mutable std::once_flag map_once_;
  mutable std::unique_ptr<util::MappedFile> map_;  // set by the first View
  mutable Status map_status_;                      // why mapping failed, if it did
};

struct TensorDecl {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
};

struct WriterState;

// Thread safety: WriteTensorData and AppendTensorData may be called from several threads at once
// (for disjoint ranges; AppendTensorData on one tensor from one thread at a time, else the order
// of the pieces is undefined). Create, Commit and the destructor must not overlap other calls.
class Writer {
 public:
  // Creates a temp file beside `path` and writes the header: compact JSON, keys sorted,
  // "__metadata__" only when `metadata` is given, padded with spaces to a multiple of 8 bytes.
  // Data offsets follow the order of `tensors` (the caller chooses it; same input -> same bytes).
  // Tensor names must be unique and non-empty, and not "__metadata__".
  //
  // A large file is written around the page cache (O_DIRECT, where the file system allows it):
  // faster, and it leaves fsync nothing to wait for.
  //
  // `in_order`, when given, gets the bytes of the file in file order, header first, each byte once,
  // one call at a time, whatever order and threads the data is written in (a content hash taken
  // while writing, never by reading the file back; see util/direct_writer.h). Once every write
  // call has returned, it has seen all bytes written so far.
  using InOrderTap = std::function<void(std::span<const uint8_t>)>;
  static Result<std::unique_ptr<Writer>> Create(
      const std::string& path, std::vector<TensorDecl> tensors,
      std::optional<std::map<std::string, std::string>> metadata = std::nullopt, InOrderTap in_order = nullptr);

  ~Writer();  // removes the temp file unless Commit() succeeded
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  size_t num_tensors() const { return tensors_.size(); }
  const TensorInfo& tensor(size_t index) const { return tensors_[index]; }
  // Index of a tensor by name; nullopt when absent.
  std::optional<size_t> IndexOf(std::string_view name) const;
  // Total file size once complete.
  uint64_t file_size() const { return data_offset_ + data_bytes_; }

  // Writes bytes at `offset` inside tensor `index`'s data (pwrite). Thread-safe for disjoint
  // ranges. Each byte must be written exactly once before Commit(): a range that overlaps one
  // already written, or that runs past the tensor, is refused with InvalidArgument before
  // anything is written. An empty `bytes` is a no-op. After an I/O error the writer is failed:
  // later writes and Commit return that first error.
  Status WriteTensorData(size_t index, uint64_t offset, std::span<const uint8_t> bytes);
  // Appends to the tensor's data after what this call wrote before (sequential streaming); the
  // append cursor starts at 0 and is independent of WriteTensorData.
  Status AppendTensorData(size_t index, std::span<const uint8_t> bytes);

  // Checks that every byte of every tensor was written (InvalidArgument naming the first
  // incomplete tensor otherwise; the temp file stays until destruction), then fsyncs, renames onto
  // `path` and fsyncs the directory. Any failure after the completeness check removes the temp
  // file. May succeed once; later calls fail.
  Status Commit();

 private:
  Writer() = default;
  std::string path_;
  bool committed_ = false;
  uint64_t data_offset_ = 0;  // 8 + padded header length
  uint64_t data_bytes_ = 0;
  std::vector<TensorInfo> tensors_;
  Status WriteFileBytes(uint64_t offset, std::span<const uint8_t> bytes);

  std::unique_ptr<WriterState> state_;  // the temp file, written ranges, name index (writer.cc)
};

}  // namespace stquant::safetensors
