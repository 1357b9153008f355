#include "util/direct_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>

#include "util/file.h"

namespace stquant::util {

namespace {

// Offsets, lengths and buffer addresses of direct writes are multiples of this: the logical
// block size of every disk we met (Open falls back to plain writes where it is not enough).
constexpr uint64_t kAlign = 4096;
// Chunk writes in flight at once: a virtio or NVMe disk needs a few to reach its bandwidth.
constexpr int kIoThreads = 4;
constexpr size_t kMaxQueued = 8;

struct FreeAligned {
  void operator()(uint8_t* p) const { std::free(p); }
};
using ChunkBuffer = std::unique_ptr<uint8_t, FreeAligned>;

// Recycled chunk buffers: fresh ones would be faulted in (and zeroed by the kernel) for every chunk.
class BufferPool {
 public:
  static BufferPool& Get() {
    static BufferPool* const pool = new BufferPool();  // never destroyed, as the I/O threads
    return *pool;
  }
  ChunkBuffer Take() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        ChunkBuffer buffer = std::move(free_.back());
        free_.pop_back();
        return buffer;
      }
    }
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(kAlign, DirectWriter::kChunkBytes));
    if (p == nullptr) throw std::bad_alloc();
    return ChunkBuffer(p);
  }
  void Give(ChunkBuffer buffer) {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < kKeep) free_.push_back(std::move(buffer));
  }

 private:
  static constexpr size_t kKeep = 16;
  std::mutex mu_;
  std::vector<ChunkBuffer> free_;
};

struct ChunkWrite {
  DirectWriter::State* owner = nullptr;
  ChunkBuffer buffer;
  uint64_t offset = 0;
  uint64_t length = 0;  // a multiple of kAlign
};

void Completed(DirectWriter::State& state, Status status);
int DirectFd(const DirectWriter::State& state);
const std::string& PathOf(const DirectWriter::State& state);

// The process-wide threads that carry out chunk writes, fed by a bounded queue: a writer that
// produces faster than the disk takes waits in Submit, which bounds memory.
class IoThreads {
 public:
  static IoThreads& Get() {
    static IoThreads* const threads = new IoThreads();  // never destroyed: threads outlive statics
    return *threads;
  }
  void Submit(ChunkWrite write) {
    std::unique_lock<std::mutex> lock(mu_);
    space_.wait(lock, [&] { return queue_.size() < kMaxQueued; });
    queue_.push_back(std::move(write));
    work_.notify_one();
  }

 private:
  IoThreads() {
    for (int i = 0; i < kIoThreads; ++i) std::thread([this] { Loop(); }).detach();
  }
  void Loop() {
    for (;;) {
      ChunkWrite write;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_.wait(lock, [&] { return !queue_.empty(); });
        write = std::move(queue_.front());
        queue_.pop_front();
        space_.notify_one();
      }
      Status status = PwriteWhole(DirectFd(*write.owner), {write.buffer.get(), write.length}, write.offset,
                                  PathOf(*write.owner));
      BufferPool::Get().Give(std::move(write.buffer));
      Completed(*write.owner, std::move(status));
    }
  }
  std::mutex mu_;
  std::condition_variable work_, space_;
  std::deque<ChunkWrite> queue_;
};

uint64_t RoundUp(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

}  // namespace

struct DirectWriter::State {
  std::string path;
  int buffered_fd = -1;
  Fd direct_fd;
  uint64_t file_size = 0;

  // A chunk being assembled: its bytes so far (disjoint ranges, merged when adjacent), kept so
  // that an evicted chunk can be written the plain way.
  struct Chunk {
    ChunkBuffer buffer;
    std::map<uint64_t, uint64_t> ranges;  // [begin, end) within the chunk, claimed by writes
    uint64_t copied = 0;  // bytes whose copy into `buffer` is done
    int copying = 0;      // copies in progress (outside the lock): not evictable meanwhile
    uint64_t opened = 0;  // sequence number, for evicting the oldest
  };

  std::mutex mu;  // guards everything below
  std::condition_variable idle;
  std::map<uint64_t, Chunk> open;            // by chunk index
  std::unordered_set<uint64_t> plain;        // chunk indexes written the plain way from now on
  uint64_t sequence = 0;
  int in_flight = 0;
  Status failure;

  uint64_t ChunkLength(uint64_t index) const {
    return std::min(kChunkBytes, file_size - index * kChunkBytes);
  }
};

namespace {

void Completed(DirectWriter::State& state, Status status) {
  std::lock_guard<std::mutex> lock(state.mu);
  if (!status.ok() && state.failure.ok()) state.failure = std::move(status);
  --state.in_flight;
  state.idle.notify_all();
}

int DirectFd(const DirectWriter::State& state) { return state.direct_fd.get(); }
const std::string& PathOf(const DirectWriter::State& state) { return state.path; }

}  // namespace

std::unique_ptr<DirectWriter> DirectWriter::Open(const std::string& path, int buffered_fd, uint64_t file_size) {
#if defined(O_DIRECT)
  if (file_size < kMinFileBytes) return nullptr;
  int fd;
  do {
    fd = ::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return nullptr;  // EINVAL: this file system has no direct I/O
  Fd direct(fd);
  // An aligned write probes the alignment the file system wants (the header chunk overwrites it).
  ChunkBuffer probe = BufferPool::Get().Take();
  std::memset(probe.get(), 0, kAlign);
  const bool aligned_ok = ::pwrite(direct.get(), probe.get(), kAlign, 0) == static_cast<ssize_t>(kAlign);
  BufferPool::Get().Give(std::move(probe));
  if (!aligned_ok) return nullptr;
  auto state = std::make_unique<State>();
  state->path = path;
  state->buffered_fd = buffered_fd;
  state->direct_fd = std::move(direct);
  state->file_size = file_size;
  return std::unique_ptr<DirectWriter>(new DirectWriter(std::move(state)));
#else
  (void)path, (void)buffered_fd, (void)file_size;
  return nullptr;
#endif
}

DirectWriter::DirectWriter(std::unique_ptr<State> state) : state_(std::move(state)) {}

DirectWriter::~DirectWriter() {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->idle.wait(lock, [&] { return state_->in_flight == 0; });
}

Status DirectWriter::Write(uint64_t offset, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    const uint64_t index = offset / kChunkBytes;
    const uint64_t within = offset % kChunkBytes;
    const uint64_t n = std::min<uint64_t>(bytes.size(), kChunkBytes - within);
    const std::span<const uint8_t> piece = bytes.first(n);
    bytes = bytes.subspan(n);
    offset += n;
    STQ_RETURN_IF_ERROR(WritePiece(index, within, piece));
  }
  return Status::Ok();
}

Status DirectWriter::WritePiece(uint64_t index, uint64_t within, std::span<const uint8_t> piece) {
  State& s = *state_;
  std::vector<std::pair<uint64_t, std::span<const uint8_t>>> plain_writes;  // (file offset, bytes)
  State::Chunk evicted;
  uint64_t evicted_index = 0;
  uint8_t* destination = nullptr;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    STQ_RETURN_IF_ERROR(s.failure);
    auto it = s.open.find(index);
    if (s.plain.count(index)) {
      plain_writes.emplace_back(index * kChunkBytes + within, piece);
    } else {
      if (it == s.open.end()) {
        if (s.open.size() >= kMaxOpenChunks) {
          // Too many chunks partly written: the oldest whose copies are done goes the plain way
          // from now on.
          auto oldest = s.open.end();
          for (auto c = s.open.begin(); c != s.open.end(); ++c) {
            if (c->second.copying == 0 && (oldest == s.open.end() || c->second.opened < oldest->second.opened)) oldest = c;
          }
          if (oldest != s.open.end()) {
            evicted_index = oldest->first;
            evicted = std::move(oldest->second);
            s.open.erase(oldest);
            s.plain.insert(evicted_index);
          }
        }
        lock.unlock();
        ChunkBuffer buffer = BufferPool::Get().Take();  // may allocate: outside the lock
        lock.lock();
        it = s.open.try_emplace(index).first;
        if (!it->second.buffer) {
          it->second.buffer = std::move(buffer);
          it->second.opened = s.sequence++;
        } else {
          BufferPool::Get().Give(std::move(buffer));  // another thread opened it meanwhile
        }
      }
      State::Chunk& chunk = it->second;
      auto next = chunk.ranges.upper_bound(within);
      uint64_t begin = within, end = within + piece.size();
      if (next != chunk.ranges.end() && next->first == end) {
        end = next->second;
        next = chunk.ranges.erase(next);
      }
      if (next != chunk.ranges.begin()) {
        auto prev = std::prev(next);
        if (prev->second == begin) {
          begin = prev->first;
          chunk.ranges.erase(prev);
        }
      }
      chunk.ranges.emplace(begin, end);
      ++chunk.copying;
      destination = chunk.buffer.get() + within;
    }
  }
  if (destination != nullptr) {
    // Copies into one chunk run in parallel; the chunk stays open (its buffer alive) until the
    // last one is done.
    std::memcpy(destination, piece.data(), piece.size());
    std::optional<ChunkWrite> full;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      auto it = s.open.find(index);
      State::Chunk& chunk = it->second;
      --chunk.copying;
      chunk.copied += piece.size();
      const uint64_t length = s.ChunkLength(index);
      if (chunk.copied == length) {
        const uint64_t padded = RoundUp(length, kAlign);
        std::memset(chunk.buffer.get() + length, 0, padded - length);
        full = ChunkWrite{&s, std::move(chunk.buffer), index * kChunkBytes, padded};
        s.open.erase(it);
        ++s.in_flight;
      }
    }
    if (full) IoThreads::Get().Submit(std::move(*full));
  }
  if (evicted.buffer) {
    for (const auto& [begin, end] : evicted.ranges) {
      plain_writes.emplace_back(evicted_index * kChunkBytes + begin,
                                std::span<const uint8_t>(evicted.buffer.get() + begin, end - begin));
    }
  }
  Status status;
  for (const auto& [at, data] : plain_writes) {
    status = PwriteFull(s.buffered_fd, data, at, s.path);
    if (!status.ok()) break;
  }
  if (evicted.buffer) BufferPool::Get().Give(std::move(evicted.buffer));
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.failure.ok()) s.failure = status;
  }
  return status;
}

Status DirectWriter::Finish() {
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  s.idle.wait(lock, [&] { return s.in_flight == 0; });
  STQ_RETURN_IF_ERROR(s.failure);
  if (!s.open.empty()) {
    return Status::Internal(fmt::format("{}: {} chunks still incomplete at the end of writing", s.path, s.open.size()));
  }
  while (::ftruncate(s.buffered_fd, static_cast<off_t>(s.file_size)) != 0) {
    if (errno != EINTR) return Status::FromErrno("truncate", s.path, errno);
  }
  return Status::Ok();
}

}  // namespace stquant::util
