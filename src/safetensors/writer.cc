// Writer: a streaming safetensors writer. The header (with every offset) is fixed by Create, so
// tensor data can arrive in any order, from any thread, and is never buffered here.
#include <fmt/format.h>

#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "safetensors/format.h"
#include "stquant/safetensors.h"
#include "util/direct_writer.h"
#include "util/file.h"

namespace stquant::safetensors {

struct WriterState {
  util::AtomicFile file;
  // Large files bypass the page cache, and a file with an in-order tap is tapped there (see
  // util/direct_writer.h); declared after `file` so that it is destroyed first, its writes in
  // flight done before the temp file is closed.
  std::unique_ptr<util::DirectWriter> direct;
  std::unordered_map<std::string_view, size_t> by_name;  // views into Writer::tensors_ names

  std::mutex mu;  // guards everything below
  // Per tensor, the byte ranges [begin, end) written or claimed so far, disjoint and merged when
  // adjacent, so a tensor written in order stays one range.
  std::vector<std::map<uint64_t, uint64_t>> written;
  std::vector<uint64_t> append_cursor;
  Status failure;  // the first I/O error; it fails every later write and Commit
};

namespace {

using internal::Printable;

Status CheckDecls(const std::string& path, const std::vector<TensorDecl>& tensors,
                  const std::optional<std::map<std::string, std::string>>& metadata) {
  auto fail = [&path](std::string what) { return Status::InvalidArgument(fmt::format("{}: {}", path, what)); };
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorDecl& t = tensors[i];
    if (t.name.empty()) return fail(fmt::format("tensor #{} has an empty name", i));
    if (t.name == "__metadata__") return fail("'__metadata__' is reserved and cannot name a tensor");
    if (internal::FindInvalidUtf8(t.name)) return fail(fmt::format("tensor '{}': name is not valid UTF-8", Printable(t.name)));
    for (const int64_t dim : t.shape) {
      if (dim < 0) return fail(fmt::format("tensor '{}': negative dimension in shape {}", Printable(t.name),
                                           internal::ShapeString(t.shape)));
    }
    const std::optional<int64_t> elements = internal::ElementCount(t.shape);
    if (!elements) {
      return fail(fmt::format("tensor '{}': shape {} has more than 2^63-1 elements", Printable(t.name),
                              internal::ShapeString(t.shape)));
    }
    if (!internal::ByteSize(*elements, t.dtype)) {
      return fail(fmt::format("tensor '{}': {} elements of dtype {} are not a whole number of bytes",
                              Printable(t.name), *elements, DTypeName(t.dtype)));
    }
  }
  if (metadata) {
    for (const auto& [key, value] : *metadata) {
      if (internal::FindInvalidUtf8(key) || internal::FindInvalidUtf8(value)) {
        return fail(fmt::format("__metadata__ entry '{}' is not valid UTF-8", Printable(key)));
      }
    }
  }
  return Status::Ok();
}

// The header text: compact JSON, keys sorted (nlohmann's object is a std::map, and UTF-8 byte
// order is code point order, as Python's sort_keys), padded with spaces so that the data section
// starts at a multiple of 8 (the alignment the safetensors format recommends; mmap users rely on
// it for 8-byte dtypes).
Result<std::string> HeaderText(const std::vector<TensorInfo>& tensors,
                               const std::optional<std::map<std::string, std::string>>& metadata) {
  try {
    nlohmann::json root = nlohmann::json::object();
    if (metadata) root["__metadata__"] = *metadata;
    for (const TensorInfo& t : tensors) {
      root[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
    }
    std::string text = root.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  } catch (const std::exception& e) {  // only bad_alloc or a UTF-8 error CheckDecls ruled out
    return Status::Internal(fmt::format("building safetensors header: {}", e.what()));
  }
}

}  // namespace

Result<std::unique_ptr<Writer>> Writer::Create(const std::string& path, std::vector<TensorDecl> tensors,
                                               std::optional<std::map<std::string, std::string>> metadata,
                                               InOrderTap in_order) {
  STQ_RETURN_IF_ERROR(CheckDecls(path, tensors, metadata));
  std::unique_ptr<Writer> writer(new Writer());
  writer->path_ = path;
  writer->state_ = std::make_unique<WriterState>();
  WriterState& state = *writer->state_;

  uint64_t offset = 0;
  writer->tensors_.reserve(tensors.size());
  for (TensorDecl& decl : tensors) {
    const uint64_t bytes = *internal::ByteSize(*internal::ElementCount(decl.shape), decl.dtype);
    if (bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - offset) {
      return Status::InvalidArgument(fmt::format("{}: tensors total more than 2^63-1 bytes", path));
    }
    writer->tensors_.push_back({std::move(decl.name), decl.dtype, std::move(decl.shape), offset, offset + bytes});
    offset += bytes;
  }
  writer->data_bytes_ = offset;
  // The index is built once tensors_ is final, since it holds views into the names.
  state.by_name.reserve(writer->tensors_.size());
  for (size_t i = 0; i < writer->tensors_.size(); ++i) {
    if (!state.by_name.emplace(writer->tensors_[i].name, i).second) {
      return Status::InvalidArgument(
          fmt::format("{}: duplicate tensor name '{}'", path, Printable(writer->tensors_[i].name)));
    }
  }
  state.written.resize(writer->tensors_.size());
  state.append_cursor.resize(writer->tensors_.size());

  STQ_ASSIGN_OR_RETURN(std::string text, HeaderText(writer->tensors_, metadata));
  if (text.size() > kMaxHeaderBytes) {
    return Status::InvalidArgument(
        fmt::format("{}: header of {} bytes exceeds the limit of {} bytes", path, text.size(), kMaxHeaderBytes));
  }
  writer->data_offset_ = 8 + text.size();
  if (writer->data_bytes_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - writer->data_offset_) {
    return Status::InvalidArgument(fmt::format("{}: file would exceed 2^63-1 bytes", path));
  }
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((text.size() >> (8 * i)) & 0xFF);  // little-endian
  prefix += text;

  STQ_ASSIGN_OR_RETURN(state.file, util::AtomicFile::Create(path));
  state.direct =
      util::DirectWriter::Open(state.file.temp_path(), state.file.fd(), writer->file_size(), std::move(in_order));
  STQ_RETURN_IF_ERROR(writer->WriteFileBytes(0, {reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size()}));
  return writer;
}

Writer::~Writer() = default;  // an uncommitted AtomicFile removes its temp file

std::optional<size_t> Writer::IndexOf(std::string_view name) const {
  const auto it = state_->by_name.find(name);
  if (it == state_->by_name.end()) return std::nullopt;
  return it->second;
}

Status Writer::WriteTensorData(size_t index, uint64_t offset, std::span<const uint8_t> bytes) {
  if (index >= tensors_.size()) {
    return Status::InvalidArgument(fmt::format("{}: tensor index {} out of range ({} tensors)", path_, index,
                                               tensors_.size()));
  }
  const TensorInfo& tensor = tensors_[index];
  if (offset > tensor.nbytes() || bytes.size() > tensor.nbytes() - offset) {
    return Status::InvalidArgument(fmt::format("{}: tensor '{}': write of {} bytes at offset {} past its {} bytes",
                                               path_, Printable(tensor.name), bytes.size(), offset, tensor.nbytes()));
  }
  if (bytes.empty()) return Status::Ok();
  const uint64_t begin = offset;
  const uint64_t end = offset + bytes.size();
  {
    // Claim the range before writing so that two threads can never write the same byte.
    std::lock_guard<std::mutex> lock(state_->mu);
    STQ_RETURN_IF_ERROR(state_->failure);
    if (committed_) return Status::InvalidArgument(fmt::format("{}: write after Commit", path_));
    auto& ranges = state_->written[index];
    auto next = ranges.upper_bound(begin);
    auto prev = next == ranges.begin() ? ranges.end() : std::prev(next);
    if ((prev != ranges.end() && prev->second > begin) || (next != ranges.end() && next->first < end)) {
      return Status::InvalidArgument(fmt::format("{}: tensor '{}': bytes [{}, {}) written twice", path_,
                                                 Printable(tensor.name), begin, end));
    }
    uint64_t merged_end = end;
    if (next != ranges.end() && next->first == end) {
      merged_end = next->second;
      ranges.erase(next);
    }
    if (prev != ranges.end() && prev->second == begin) {
      prev->second = merged_end;
    } else {
      ranges.emplace(begin, merged_end);
    }
  }
  Status status = WriteFileBytes(data_offset_ + tensor.begin + offset, bytes);
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->failure.ok()) state_->failure = status;
  }
  return status;
}

Status Writer::AppendTensorData(size_t index, std::span<const uint8_t> bytes) {
  uint64_t offset;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (index >= tensors_.size()) {
      return Status::InvalidArgument(fmt::format("{}: tensor index {} out of range ({} tensors)", path_, index,
                                                 tensors_.size()));
    }
    offset = state_->append_cursor[index];
    // Advance only for a write that fits, so a refused append can be retried with less.
    if (bytes.size() <= tensors_[index].nbytes() - offset) state_->append_cursor[index] += bytes.size();
  }
  return WriteTensorData(index, offset, bytes);
}

Status Writer::WriteFileBytes(uint64_t offset, std::span<const uint8_t> bytes) {
  if (state_->direct) return state_->direct->Write(offset, bytes);
  return util::PwriteFull(state_->file.fd(), bytes, offset, state_->file.temp_path());
}

Status Writer::Commit() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    STQ_RETURN_IF_ERROR(state_->failure);
    if (committed_) return Status::InvalidArgument(fmt::format("{}: Commit called twice", path_));
    for (size_t i = 0; i < tensors_.size(); ++i) {
      uint64_t written = 0;
      for (const auto& [begin, end] : state_->written[i]) written += end - begin;
      if (written != tensors_[i].nbytes()) {
        return Status::InvalidArgument(fmt::format("{}: tensor '{}' incomplete: {} of {} bytes written", path_,
                                                   Printable(tensors_[i].name), written, tensors_[i].nbytes()));
      }
    }
    committed_ = true;  // no write may start now, whatever Commit's outcome
  }
  Status status = state_->direct ? state_->direct->Finish() : Status::Ok();
  if (status.ok()) status = state_->file.Commit();
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->failure = status;
  }
  return status;
}

}  // namespace stquant::safetensors
