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
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "stquant/dtype.h"
#include "stquant/status.h"

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

class Reader {
 public:
  // Opens and validates `path`. Errors name the file and, where one is involved, the tensor.
  static Result<std::unique_ptr<Reader>> Open(const std::string& path);
  // Validates a header held in memory (the JSON text, without the 8-byte length) against a data
  // section of `data_bytes` bytes. Used by Open and by the fuzzer.
  struct Header {
    std::vector<TensorInfo> tensors;  // in the order of their data offsets
    std::optional<std::map<std::string, std::string>> metadata;
    std::vector<std::string> warnings;  // e.g. gaps between tensors (accepted)
  };
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
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;

  // Copies bytes [offset, offset + dst.size()) of the tensor's data into dst (pread, retried on
  // EINTR and short reads). REQUIRES: offset + dst.size() <= tensor.nbytes().
  Status Read(const TensorInfo& tensor, uint64_t offset, std::span<uint8_t> dst) const;
  // A zero-copy view of the tensor's bytes through a read-only mmap of the whole file, mapped on
  // first use. The view lives as long as the Reader.
  Result<std::span<const uint8_t>> View(const TensorInfo& tensor) const;
  // Sequential-read hint for the byte range of a tensor (posix_fadvise WILLNEED).
  void Prefetch(const TensorInfo& tensor) const;

 private:
  Reader() = default;
  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint64_t data_offset_ = 0;
  Header header_;
  mutable const uint8_t* map_ = nullptr;
};

struct TensorDecl {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
};

class Writer {
 public:
  // Creates a temp file beside `path` and writes the header: compact JSON, keys sorted,
  // "__metadata__" only when `metadata` is given, padded with spaces to a multiple of 8 bytes.
  // Data offsets follow the order of `tensors` (the caller chooses it; same input -> same bytes).
  // Tensor names must be unique and non-empty, and not "__metadata__".
  static Result<std::unique_ptr<Writer>> Create(
      const std::string& path, std::vector<TensorDecl> tensors,
      std::optional<std::map<std::string, std::string>> metadata = std::nullopt);

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
  // ranges. Each byte must be written exactly once before Commit().
  Status WriteTensorData(size_t index, uint64_t offset, std::span<const uint8_t> bytes);
  // Appends to the tensor's data after what this call wrote before (sequential streaming).
  Status AppendTensorData(size_t index, std::span<const uint8_t> bytes);

  // Checks that every tensor is complete, fsyncs, renames onto `path`, fsyncs the directory.
  Status Commit();

 private:
  Writer() = default;
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t data_offset_ = 0;
  uint64_t data_bytes_ = 0;
  std::vector<TensorInfo> tensors_;
  std::vector<uint64_t> written_;   // bytes written per tensor (atomic adds under mutex)
  std::vector<uint64_t> appended_;  // append cursor per tensor
  std::unique_ptr<struct WriterSync> sync_;
};

}  // namespace stquant::safetensors
