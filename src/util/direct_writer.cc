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
#include "util/input_file.h"

namespace stquant::util {

namespace {

// Offsets, lengths and buffer addresses of direct writes are multiples of this: the logical
// block size of every disk we met (Open falls back to plain writes where it is not enough).
constexpr uint64_t kAlign = 4096;
// Chunk writes in flight at once: a virtio or NVMe disk needs a few to reach its bandwidth.
constexpr int kIoThreads = 4;
constexpr size_t kMaxQueued = 8;
// With a tap: a thread about to start a new chunk waits while this many are held and a tap is
// under way (the tap is one thread; the producers are many).
constexpr size_t kTapBacklogChunks = DirectWriter::kMaxOpenChunks / 2;

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

  // A chunk held in memory: its bytes so far (disjoint ranges, merged when adjacent), kept so
  // that an evicted chunk can be written the plain way. With a tap, a complete chunk stays until
  // it has been tapped.
  struct Chunk {
    ChunkBuffer buffer;
    std::map<uint64_t, uint64_t> ranges;  // [begin, end) within the chunk, copied into `buffer`
    uint64_t copied = 0;  // bytes in `ranges`
    int using_buffer = 0;  // copies into it or taps of it in progress (outside the lock): not evictable
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
  std::condition_variable tap_caught_up;  // a tapped chunk was sent, or the tapping stopped
  std::map<uint64_t, Chunk> open;                // by chunk index
  std::unordered_map<uint64_t, uint64_t> plain;  // chunk index -> bytes written the plain way so far
  uint64_t sequence = 0;
  uint64_t tapped = 0;    // tap: the bytes of the file tapped so far
  bool tapping = false;   // tap: a thread is tapping now
  int in_flight = 0;
  Status failure;

  uint64_t ChunkLength(uint64_t index) const { return std::min(kChunkBytes, file_size - index * kChunkBytes); }

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

  // The bytes [within, within + n) of open chunk `index` are in its buffer now. Sends the chunk to
  // the disk once complete (with a tap: once tapped), and taps what became its turn.
  // REQUIRES: lock held; may release it meanwhile.
  void Copied(uint64_t index, uint64_t within, uint64_t n, std::unique_lock<std::mutex>& lock);
  // Sends a complete chunk to the disk. REQUIRES: lock held; releases it meanwhile.
  void Submit(std::map<uint64_t, Chunk>::iterator chunk, std::unique_lock<std::mutex>& lock);
  // Makes room for one more open chunk: one that is not in use goes the plain way from now on (a
  // complete one waiting for its turn, the one furthest in the file, else the oldest). Returns its
  // bytes to write; nothing when every open chunk is in use. REQUIRES: lock held.
  std::vector<PlainWrite> Evict(ChunkBuffer& evicted);
  // Taps the bytes whose turn has come, as far as they are copied (unless another thread is
  // tapping: that one goes on with them). REQUIRES: lock held; releases it meanwhile.
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

// Adds [begin, end) to disjoint ranges, merging it with adjacent ones.
void AddRange(std::map<uint64_t, uint64_t>& ranges, uint64_t begin, uint64_t end) {
  auto next = ranges.upper_bound(begin);
  if (next != ranges.end() && next->first == end) {
    end = next->second;
    next = ranges.erase(next);
  }
  if (next != ranges.begin()) {
    auto prev = std::prev(next);
    if (prev->second == begin) {
      begin = prev->first;
      ranges.erase(prev);
    }
  }
  ranges.emplace(begin, end);
}

}  // namespace

void DirectWriter::State::Copied(uint64_t index, uint64_t within, uint64_t n, std::unique_lock<std::mutex>& lock) {
  auto it = open.find(index);
  Chunk& chunk = it->second;
  --chunk.using_buffer;
  AddRange(chunk.ranges, within, within + n);
  chunk.copied += n;
  if (tap) {
    TapTurns(lock);
  } else if (chunk.copied == ChunkLength(index)) {
    Submit(it, lock);
  }
}

void DirectWriter::State::Submit(std::map<uint64_t, Chunk>::iterator chunk, std::unique_lock<std::mutex>& lock) {
  const uint64_t index = chunk->first, length = ChunkLength(index);
  ChunkBuffer buffer = std::move(chunk->second.buffer);
  open.erase(chunk);
  if (tap) tap_caught_up.notify_all();
  ++in_flight;
  lock.unlock();
  if (direct_fd.valid()) std::memset(buffer.get() + length, 0, RoundUp(length, kAlign) - length);
  IoThreads::Get().Submit(ChunkWrite{this, std::move(buffer), index});
  lock.lock();
}

std::vector<DirectWriter::State::PlainWrite> DirectWriter::State::Evict(ChunkBuffer& evicted) {
  std::vector<PlainWrite> writes;
  auto victim = open.end();
  for (auto c = open.begin(); c != open.end(); ++c) {
    if (c->second.using_buffer > 0) continue;
    const bool complete = c->second.copied == ChunkLength(c->first);
    if (victim == open.end()) {
      victim = c;
      continue;
    }
    const bool victim_complete = victim->second.copied == ChunkLength(victim->first);
    if (complete != victim_complete ? complete
                                    : complete ? c->first > victim->first : c->second.opened < victim->second.opened) {
      victim = c;
    }
  }
  if (victim == open.end()) return writes;
  const uint64_t index = victim->first;
  Chunk chunk = std::move(victim->second);
  open.erase(victim);
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
  if (tapping) return;
  tapping = true;
  while (tapped < file_size) {
    const uint64_t index = tapped / kChunkBytes, within = tapped % kChunkBytes, length = ChunkLength(index);
    if (auto it = open.find(index); it != open.end()) {
      // The copied bytes from `within` on, right after the last tapped one; usually the piece this
      // thread has just copied, still in its cache.
      Chunk& chunk = it->second;
      auto range = chunk.ranges.upper_bound(within);
      if (range == chunk.ranges.begin() || std::prev(range)->second <= within) break;
      const uint64_t n = std::prev(range)->second - within;
      ++chunk.using_buffer;  // `chunk` stays open, its buffer in place
      lock.unlock();
      tap({chunk.buffer.get() + within, n});
      lock.lock();
      --chunk.using_buffer;
      tapped += n;
      if (within + n == length) Submit(it, lock);  // tapped to its end: complete
      continue;
    }
    auto p = plain.find(index);
    if (p == plain.end() || p->second < length) break;  // not complete yet: its last write taps it
    // Went the plain way (evicted): the rest of it is read back from the page cache.
    plain.erase(p);
    lock.unlock();
    ChunkBuffer buffer = BufferPool::Get().Take();
    Result<RegularFile> file = OpenRegularFile(path);
    Status status =
        file.ok() ? PreadFull(file->fd.get(), {buffer.get(), length - within}, tapped, path) : file.status();
    if (status.ok()) tap({buffer.get(), length - within});
    BufferPool::Get().Give(std::move(buffer));
    lock.lock();
    Fail(status);
    tapped += length - within;
  }
  tapping = false;
  tap_caught_up.notify_all();
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
          // Producing faster than the tap takes the bytes: wait while it catches up, rather than
          // hold ever more chunks (it always can: it needs no byte from a thread waiting here).
          s.tap_caught_up.wait(lock, [&] { return !s.tapping || s.open.size() < kTapBacklogChunks; });
          it = s.open.find(index);
        }
        if (it == s.open.end()) {
          if (s.open.size() >= kMaxOpenChunks) plain_writes = s.Evict(evicted);
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
        ++it->second.using_buffer;
        destination = it->second.buffer.get() + within;
      }
    }
    if (destination != nullptr) {
      // Copies into one chunk run in parallel; the chunk stays open (its buffer alive) until the
      // last one is done.
      std::memcpy(destination, piece.data(), piece.size());
      std::unique_lock<std::mutex> lock(s.mu);
      s.Copied(index, within, piece.size(), lock);
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
  if (!s.open.empty() || (s.tap && s.tapped != s.file_size)) {
    return Status::Internal(fmt::format("{}: {} chunks still incomplete at the end of writing", s.path, s.open.size()));
  }
  if (!s.direct_fd.valid()) return Status::Ok();
  while (::ftruncate(s.buffered_fd, static_cast<off_t>(s.file_size)) != 0) {
    if (errno != EINTR) return Status::FromErrno("truncate", s.path, errno);
  }
  return Status::Ok();
}

}  // namespace stquant::util
