// Reader: opening a safetensors file, the file-level checks, and tensor access by pread or mmap.
// The header rules themselves live in header.cc.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>

#include "safetensors/format.h"
#include "stquant/safetensors.h"
#include "util/input_file.h"

namespace stquant::safetensors {

Result<std::unique_ptr<Reader>> Reader::Open(const std::string& path) {
  STQ_ASSIGN_OR_RETURN(util::RegularFile file, util::OpenRegularFile(path));
  util::Fd& fd = file.fd;
  const uint64_t size = file.size;
  if (size < 8) {
    return Status::InvalidInput(
        fmt::format("{}: file is {} bytes, shorter than the 8-byte header length (empty or truncated file?)", path,
                    size));
  }
  std::array<uint8_t, 8> length_bytes;
  STQ_RETURN_IF_ERROR(util::PreadFull(fd.get(), length_bytes, 0, path));
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = header_length << 8 | length_bytes[i];  // little-endian
  if (header_length == 0) {
    return Status::InvalidInput(fmt::format("{}: header length is 0 (not a safetensors file?)", path));
  }
  if (header_length > kMaxHeaderBytes) {
    return Status::InvalidInput(fmt::format("{}: header length {} exceeds the limit of {} bytes (not a safetensors file?)",
                                            path, header_length, kMaxHeaderBytes));
  }
  // Subtract from what the file has; never add the untrusted length to an offset.
  const uint64_t after_length = size - 8;
  if (header_length > after_length) {
    return Status::InvalidInput(
        fmt::format("{}: header length {} past end of file: only {} bytes follow the 8-byte length "
                    "(incomplete download or corrupt file?)",
                    path, header_length, after_length));
  }
  // Bounded allocation: header_length <= kMaxHeaderBytes and <= the file size.
  std::string text(static_cast<size_t>(header_length), '\0');
  STQ_RETURN_IF_ERROR(
      util::PreadFull(fd.get(), {reinterpret_cast<uint8_t*>(text.data()), text.size()}, 8, path));
  STQ_ASSIGN_OR_RETURN(Header header, ParseHeader(text, after_length - header_length, path));

  std::unique_ptr<Reader> reader(new Reader());
  reader->path_ = path;
  reader->fd_ = fd.Release();
  reader->file_size_ = size;
  reader->data_offset_ = 8 + header_length;
  reader->header_ = std::move(header);
  reader->by_name_.reserve(reader->header_.tensors.size());
  for (size_t i = 0; i < reader->header_.tensors.size(); ++i) {
    reader->by_name_.emplace(reader->header_.tensors[i].name, i);
  }
  return reader;
}

Reader::~Reader() {
  map_.reset();
  if (fd_ >= 0) ::close(fd_);
}

const TensorInfo* Reader::Find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

Status Reader::CheckRange(const TensorInfo& tensor) const {
  if (tensor.begin > tensor.end || tensor.end > file_size_ - data_offset_) {
    return Status::InvalidArgument(fmt::format("{}: tensor '{}': data_offsets [{}, {}] are not inside this file",
                                               path_, internal::Printable(tensor.name), tensor.begin, tensor.end));
  }
  return Status::Ok();
}

Status Reader::Read(const TensorInfo& tensor, uint64_t offset, std::span<uint8_t> dst) const {
  STQ_RETURN_IF_ERROR(CheckRange(tensor));
  if (offset > tensor.nbytes() || dst.size() > tensor.nbytes() - offset) {
    return Status::InvalidArgument(fmt::format("{}: tensor '{}': read of {} bytes at offset {} past its {} bytes",
                                               path_, internal::Printable(tensor.name), dst.size(), offset,
                                               tensor.nbytes()));
  }
  return util::PreadFull(fd_, dst, data_offset_ + tensor.begin + offset, path_);
}

Result<std::span<const uint8_t>> Reader::View(const TensorInfo& tensor) const {
  STQ_RETURN_IF_ERROR(CheckRange(tensor));
  if (tensor.nbytes() == 0) return std::span<const uint8_t>();
  std::call_once(map_once_, [this] {
    Result<util::MappedFile> mapped = util::MappedFile::Map(fd_, file_size_, path_);
    if (mapped.ok()) {
      map_ = std::make_unique<util::MappedFile>(std::move(mapped).value());
    } else {
      map_status_ = mapped.status();
    }
  });
  STQ_RETURN_IF_ERROR(map_status_);
  return map_->bytes().subspan(data_offset_ + tensor.begin, tensor.nbytes());
}

void Reader::Prefetch(const TensorInfo& tensor, uint64_t offset, uint64_t length) const {
  if (!CheckRange(tensor).ok() || offset >= tensor.nbytes()) return;
  length = std::min(length, tensor.nbytes() - offset);
  // Advice only: a failure changes nothing but speed.
  (void)::posix_fadvise(fd_, static_cast<off_t>(data_offset_ + tensor.begin + offset), static_cast<off_t>(length),
                        POSIX_FADV_WILLNEED);
}

}  // namespace stquant::safetensors
