#include "util/direct_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <new>
#include <thread>
#include <unordered_map>
#include <utility>
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

uint64_t RoundUp(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

}  // namespace

struct DirectWriter::State {
  std::string path;
  int buffered_fd = -1;
  Fd direct_fd;  // invalid: complete chunks go through buffered_fd (a tapped file without direct I/O)
  uint64_t file_size = 0;
  InOrderTap tap;

  // A chunk being assembled: its bytes so far (disjoint ranges, merged when adjacent), kept so
  // that an evicted chunk can be written the plain way.
  struct Chunk {
    ChunkBuffer buffer;
    std::map<uint64_t, uint64_t> ranges;  // [begin, end) within the chunk, claimed by writes
    uint64_t copied = 0;  // bytes whose copy into `buffer` is done
    int copying = 0;      // copies in progress (outside the lock): not evictable meanwhile
    uint64_t opened = 0;  // sequence number, for evicting the oldest
  };
  // Bytes of the file to write the plain way, outside the lock.
  struct PlainWrite {
    uint64_t index = 0;
    uint64_t offset = 0;
    std::span<const uint8_t> bytes;
  };

  std::mutex mu;  // guards everything below
  std::condition_variable idle;
  std::map<uint64_t, Chunk> open;                // by chunk index
  std::map<uint64_t, ChunkBuffer> waiting;       // tap: complete chunks waiting for their turn
  std::unordered_map<uint64_t, uint64_t> plain;  // chunk index -> bytes written the plain way so far
  uint64_t sequence = 0;
  uint64_t next_tap = 0;  // the chunk whose turn it is
  bool tapping = false;   // a thread is tapping chunks now
  int in_flight = 0;
  Status failure;

  uint64_t ChunkLength(uint64_t index) const { return std::min(kChunkBytes, file_size - index * kChunkBytes); }
  uint64_t ChunkCount() const { return (file_size + kChunkBytes - 1) / kChunkBytes; }
  bool held_full() const { return open.size() + waiting.size() >= kMaxOpenChunks; }

  void Fail(const Status& status) {
    if (!status.ok() && failure.ok()) failure = status;
  }

  // Writes one complete chunk (on an I/O thread): padded to the alignment when direct.
  Status WriteChunk(const uint8_t* bytes, uint64_t index) const {
    const uint64_t offset = index * kChunkBytes, length = ChunkLength(index);
    if (!direct_fd.valid()) return PwriteFull(buffered_fd, {bytes, length}, offset, path);
    return PwriteWhole(direct_fd.get(), {bytes, RoundUp(length, kAlign)}, offset, path);
  }

  // A chunk write is done (I/O thread).
  void Written(const Status& status) {
    std::lock_guard<std::mutex> lock(mu);
    Fail(status);
    --in_flight;
    idle.notify_all();
  }

  // Chunk `index`, all of its bytes copied into `buffer`: to the disk now, or, with a tap, once its
  // turn has come. REQUIRES: lock held; may release it meanwhile.
  void Complete(uint64_t index, ChunkBuffer buffer, std::unique_lock<std::mutex>& lock);
  // Makes room for one more held chunk: one of the held chunks goes the plain way from now on
  // (with a tap, the waiting chunk furthest from its turn first, else the oldest partly written
  // one not being copied into). Returns its bytes to write; nothing when every chunk is being
  // copied into. REQUIRES: lock held.
  std::vector<PlainWrite> Evict(ChunkBuffer& evicted);
  // Taps every chunk whose turn has come (unless another thread is doing so), sending the held
  // ones to the disk after. REQUIRES: lock held; releases it meanwhile.
  void TapTurns(std::unique_lock<std::mutex>& lock);
  // Writes bytes the plain way and counts them towards their chunks. REQUIRES: lock not held.
  Status WritePlain(const std::vector<PlainWrite>& writes);
};

namespace {

struct ChunkWrite {
  DirectWriter::State* owner = nullptr;
  ChunkBuffer buffer;
  uint64_t index = 0;
};

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
      const Status status = write.owner->WriteChunk(write.buffer.get(), write.index);
      BufferPool::Get().Give(std::move(write.buffer));
      write.owner->Written(status);
    }
  }
  std::mutex mu_;
  std::condition_variable work_, space_;
  std::deque<ChunkWrite> queue_;
};

}  // namespace

void DirectWriter::State::Complete(uint64_t index, ChunkBuffer buffer, std::unique_lock<std::mutex>& lock) {
  if (tap) {
    waiting.emplace(index, std::move(buffer));
    TapTurns(lock);
    return;
  }
  const uint64_t length = ChunkLength(index);
  if (direct_fd.valid()) std::memset(buffer.get() + length, 0, RoundUp(length, kAlign) - length);
  ++in_flight;
  lock.unlock();
  IoThreads::Get().Submit(ChunkWrite{this, std::move(buffer), index});
  lock.lock();
}

std::vector<DirectWriter::State::PlainWrite> DirectWriter::State::Evict(ChunkBuffer& evicted) {
  std::vector<PlainWrite> writes;
  // A waiting chunk is complete: written whole now, read back for the tap later.
  if (!waiting.empty()) {
    auto last = std::prev(waiting.end());
    const uint64_t index = last->first;
    evicted = std::move(last->second);
    waiting.erase(last);
    plain.emplace(index, 0);
    writes.push_back({index, index * kChunkBytes, {evicted.get(), ChunkLength(index)}});
    return writes;
  }
  auto oldest = open.end();
  for (auto c = open.begin(); c != open.end(); ++c) {
    if (c->second.copying == 0 && (oldest == open.end() || c->second.opened < oldest->second.opened)) oldest = c;
  }
  if (oldest == open.end()) return writes;
  const uint64_t index = oldest->first;
  Chunk chunk = std::move(oldest->second);
  open.erase(oldest);
  plain.emplace(index, 0);
  evicted = std::move(chunk.buffer);
  for (const auto& [begin, end] : chunk.ranges) {
    writes.push_back({index, index * kChunkBytes + begin, {evicted.get() + begin, end - begin}});
  }
  return writes;
}

Status DirectWriter::State::WritePlain(const std::vector<PlainWrite>& writes) {
  Status status;
  for (const PlainWrite& w : writes) {
    status = PwriteFull(buffered_fd, w.bytes, w.offset, path);
    std::unique_lock<std::mutex> lock(mu);
    Fail(status);
    if (!status.ok()) break;
    auto it = plain.find(w.index);
    it->second += w.bytes.size();
    if (it->second < ChunkLength(w.index)) continue;
    if (!tap) {
      plain.erase(it);  // complete: no byte of it is written again
    } else {
      TapTurns(lock);
    }
  }
  return status;
}

void DirectWriter::State::TapTurns(std::unique_lock<std::mutex>& lock) {
  if (tapping) return;  // that thread will find the chunks this one made ready
  tapping = true;
  const uint64_t chunks = ChunkCount();
  while (next_tap < chunks) {
    const uint64_t index = next_tap, length = ChunkLength(index);
    ChunkBuffer buffer;
    bool read_back = false;
    if (auto w = waiting.find(index); w != waiting.end()) {
      buffer = std::move(w->second);
      waiting.erase(w);
      ++in_flight;
    } else if (auto p = plain.find(index); p != plain.end() && p->second == length) {
      plain.erase(p);
      read_back = true;
    } else {
      break;  // not complete yet: the thread that completes it taps it
    }
    lock.unlock();
    Status status;
    if (read_back) {
      // Went the plain way (evicted): its bytes are in the page cache.
      buffer = BufferPool::Get().Take();
      Result<Fd> fd = OpenForRead(path);
      status = fd.ok() ? PreadFull(fd->get(), {buffer.get(), length}, index * kChunkBytes, path) : fd.status();
      if (status.ok()) tap({buffer.get(), length});
      BufferPool::Get().Give(std::move(buffer));
    } else {
      tap({buffer.get(), length});
      if (direct_fd.valid()) std::memset(buffer.get() + length, 0, RoundUp(length, kAlign) - length);
      IoThreads::Get().Submit(ChunkWrite{this, std::move(buffer), index});
    }
    lock.lock();
    Fail(status);
    ++next_tap;
  }
  tapping = false;
}

namespace {

// Whether the file system of `fd`, open for direct I/O, takes direct writes aligned to kAlign:
// probed once per device, by an aligned write at offset 0 of the first file opened there for
// direct I/O (its header chunk overwrites it later).
bool DirectWritesWork(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return false;
  static std::mutex mu;
  static std::map<dev_t, bool>* const probed = new std::map<dev_t, bool>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = probed->find(st.st_dev); it != probed->end()) return it->second;
  ChunkBuffer probe = BufferPool::Get().Take();
  std::memset(probe.get(), 0, kAlign);
  const bool works = ::pwrite(fd, probe.get(), kAlign, 0) == static_cast<ssize_t>(kAlign);
  BufferPool::Get().Give(std::move(probe));
  probed->emplace(st.st_dev, works);
  return works;
}

}  // namespace

std::unique_ptr<DirectWriter> DirectWriter::Open(const std::string& path, int buffered_fd, uint64_t file_size,
                                                 InOrderTap tap) {
  Fd direct;
#if defined(O_DIRECT)
  if (file_size >= kMinFileBytes) {
    int fd;
    do {
      fd = ::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    direct.Reset(fd);  // EINVAL: this file system has no direct I/O
  }
  if (direct.valid() && !DirectWritesWork(direct.get())) direct.Reset();
#endif
  if (!direct.valid() && !tap) return nullptr;
  auto state = std::make_unique<State>();
  state->path = path;
  state->buffered_fd = buffered_fd;
  state->direct_fd = std::move(direct);
  state->file_size = file_size;
  state->tap = std::move(tap);
  return std::unique_ptr<DirectWriter>(new DirectWriter(std::move(state)));
}

DirectWriter::DirectWriter(std::unique_ptr<State> state) : state_(std::move(state)) {}

DirectWriter::~DirectWriter() {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->idle.wait(lock, [&] { return state_->in_flight == 0; });
}

Status DirectWriter::Write(uint64_t offset, std::span<const uint8_t> bytes) {
  State& s = *state_;
  while (!bytes.empty()) {
    const uint64_t index = offset / kChunkBytes;
    const uint64_t within = offset % kChunkBytes;
    const std::span<const uint8_t> piece = bytes.first(std::min<uint64_t>(bytes.size(), kChunkBytes - within));
    bytes = bytes.subspan(piece.size());
    offset += piece.size();

    std::vector<State::PlainWrite> plain_writes;
    ChunkBuffer evicted;
    uint8_t* destination = nullptr;
    {
      std::unique_lock<std::mutex> lock(s.mu);
      STQ_RETURN_IF_ERROR(s.failure);
      auto it = s.open.find(index);
      if (s.plain.count(index)) {
        plain_writes.push_back({index, index * kChunkBytes + within, piece});
      } else {
        if (it == s.open.end()) {
          if (s.held_full()) plain_writes = s.Evict(evicted);
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
      std::unique_lock<std::mutex> lock(s.mu);
      auto it = s.open.find(index);
      State::Chunk& chunk = it->second;
      --chunk.copying;
      chunk.copied += piece.size();
      if (chunk.copied == s.ChunkLength(index)) {
        ChunkBuffer buffer = std::move(chunk.buffer);
        s.open.erase(it);
        s.Complete(index, std::move(buffer), lock);
      }
    }
    const Status status = s.WritePlain(plain_writes);
    if (evicted) BufferPool::Get().Give(std::move(evicted));
    STQ_RETURN_IF_ERROR(status);
  }
  return Status::Ok();
}

Status DirectWriter::Finish() {
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  s.idle.wait(lock, [&] { return s.in_flight == 0; });
  STQ_RETURN_IF_ERROR(s.failure);
  if (!s.open.empty() || !s.waiting.empty() || (s.tap && s.next_tap != s.ChunkCount())) {
    return Status::Internal(fmt::format("{}: {} chunks still incomplete at the end of writing", s.path,
                                        s.open.size() + s.waiting.size()));
  }
  if (!s.direct_fd.valid()) return Status::Ok();
  while (::ftruncate(s.buffered_fd, static_cast<off_t>(s.file_size)) != 0) {
    if (errno != EINTR) return Status::FromErrno("truncate", s.path, errno);
  }
  return Status::Ok();
}

}  // namespace stquant::util
