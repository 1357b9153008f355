#include "util/direct_writer.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "file_test_util.h"

namespace stquant::util {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::ReadBytes;
using ::stquant::testing::ScopedWriteFault;
using ::stquant::testing::ScratchDir;
using ::stquant::testing::StatusIs;
using ::testing::HasSubstr;

constexpr uint64_t kChunk = DirectWriter::kChunkBytes;

struct Piece {
  uint64_t offset = 0;
  uint64_t size = 0;
};

std::string RandomBytes(uint64_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes(size, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  return bytes;
}

// Cuts [0, size) into pieces of 1 byte to ~300 KiB.
std::vector<Piece> RandomPieces(uint64_t size, std::mt19937& rng) {
  std::vector<Piece> pieces;
  for (uint64_t at = 0; at < size;) {
    const uint64_t n = std::min<uint64_t>(size - at, 1 + rng() % (300 << 10));
    pieces.push_back({at, n});
    at += n;
  }
  return pieces;
}

// The first half (and a byte) of each of `chunks` chunks, then the second halves from the last
// chunk to the first: every chunk is partly written before any is complete.
std::vector<Piece> HalvesThenSecondHalvesBackwards(uint64_t chunks) {
  std::vector<Piece> pieces;
  for (uint64_t c = 0; c < chunks; ++c) pieces.push_back({c * kChunk, kChunk / 2 + 1});
  for (uint64_t c = chunks; c-- > 0;) pieces.push_back({c * kChunk + kChunk / 2 + 1, kChunk / 2 - 1});
  return pieces;
}

class DirectWriterTest : public ::testing::Test {
 protected:
  // Creates the file as the safetensors Writer does (an open descriptor) and a DirectWriter on it.
  void Open(uint64_t size) {
    path_ = dir_.File("out.bin");
    fd_ = Fd(::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd_.valid());
    writer_ = DirectWriter::Open(path_, fd_.get(), size);
  }
  // As Open, with a tap that collects what it is given (and checks that its calls never overlap).
  void OpenTapped(uint64_t size) {
    path_ = dir_.File("out.bin");
    fd_ = Fd(::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd_.valid());
    writer_ = DirectWriter::Open(path_, fd_.get(), size, [this](std::span<const uint8_t> bytes) {
      EXPECT_EQ(tap_calls_.fetch_add(1), 0) << "tap calls overlap";
      tapped_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      tap_calls_.fetch_sub(1);
    });
    ASSERT_NE(writer_, nullptr) << "a tapped writer is always made";
  }
  Status WriteAll(const std::string& data, const std::vector<Piece>& pieces, int threads) {
    std::vector<Status> results(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (size_t i = t; i < pieces.size(); i += threads) {
          const Piece& p = pieces[i];
          Status s = writer_->Write(p.offset, {reinterpret_cast<const uint8_t*>(data.data()) + p.offset, p.size});
          if (!s.ok()) {
            results[t] = s;
            return;
          }
        }
      });
    }
    for (std::thread& w : workers) w.join();
    for (const Status& s : results) STQ_RETURN_IF_ERROR(s);
    return Status::Ok();
  }

  ScratchDir dir_;
  std::string path_;
  Fd fd_;
  std::unique_ptr<DirectWriter> writer_;
  std::string tapped_;
  std::atomic<int> tap_calls_{0};
};

TEST_F(DirectWriterTest, SmallFilesAreLeftToPlainWrites) {
  Open(DirectWriter::kMinFileBytes - 1);
  EXPECT_EQ(writer_, nullptr);
}

TEST_F(DirectWriterTest, AnyOrderFromSeveralThreadsGivesTheExactFile) {
  // Not a multiple of the chunk nor of the 4 KiB alignment: the last chunk is padded, then cut.
  const uint64_t size = 10 * kChunk + 12345;
  Open(size);
  if (writer_ == nullptr) GTEST_SKIP() << "no O_DIRECT on the test directory's file system";
  const std::string data = RandomBytes(size, 1);
  std::mt19937 rng(2);
  std::vector<Piece> pieces = RandomPieces(size, rng);
  std::shuffle(pieces.begin(), pieces.end(), rng);
  ASSERT_THAT(WriteAll(data, pieces, 4), IsOk());
  ASSERT_THAT(writer_->Finish(), IsOk());
  EXPECT_TRUE(ReadBytes(path_) == data);
}

TEST_F(DirectWriterTest, ManyPartlyWrittenChunksGoThePlainWay) {
  // The first half of every chunk, then the second halves: more chunks are open at once than
  // DirectWriter keeps, so the oldest are evicted to plain writes.
  const uint64_t chunks = DirectWriter::kMaxOpenChunks + 8;
  const uint64_t size = chunks * kChunk;
  Open(size);
  if (writer_ == nullptr) GTEST_SKIP() << "no O_DIRECT on the test directory's file system";
  const std::string data = RandomBytes(size, 3);
  ASSERT_THAT(WriteAll(data, HalvesThenSecondHalvesBackwards(chunks), 1), IsOk());
  ASSERT_THAT(writer_->Finish(), IsOk());
  EXPECT_TRUE(ReadBytes(path_) == data);
}

TEST_F(DirectWriterTest, WriteFailureIsReportedByWriteOrFinish) {
  const uint64_t size = 12 * kChunk;
  Open(size);
  if (writer_ == nullptr) GTEST_SKIP() << "no O_DIRECT on the test directory's file system";
  const std::string data = RandomBytes(size, 4);
  std::mt19937 rng(5);
  ScopedWriteFault fault(3 * kChunk, ENOSPC);
  Status status = WriteAll(data, RandomPieces(size, rng), 2);
  if (status.ok()) status = writer_->Finish();
  EXPECT_THAT(status, StatusIs(StatusCode::kIoError, HasSubstr(path_)));
}

TEST_F(DirectWriterTest, TapGetsTheFileInOrderWhateverTheWriteOrder) {
  // Shuffled pieces from 4 threads: most chunks complete ahead of their turn and wait for it.
  const uint64_t size = 10 * kChunk + 12345;
  OpenTapped(size);
  const std::string data = RandomBytes(size, 6);
  std::mt19937 rng(7);
  std::vector<Piece> pieces = RandomPieces(size, rng);
  std::shuffle(pieces.begin(), pieces.end(), rng);
  ASSERT_THAT(WriteAll(data, pieces, 4), IsOk());
  EXPECT_TRUE(tapped_ == data) << "every Write returned: the tap has seen the whole file, in order";
  ASSERT_THAT(writer_->Finish(), IsOk());
  EXPECT_TRUE(ReadBytes(path_) == data);
}

TEST_F(DirectWriterTest, TapOfASmallFile) {
  // Below kMinFileBytes there is no direct I/O: chunks go through the buffered descriptor.
  const uint64_t size = DirectWriter::kMinFileBytes / 3 + 5;
  OpenTapped(size);
  const std::string data = RandomBytes(size, 8);
  std::mt19937 rng(9);
  std::vector<Piece> pieces = RandomPieces(size, rng);
  std::reverse(pieces.begin(), pieces.end());
  ASSERT_THAT(WriteAll(data, pieces, 1), IsOk());
  ASSERT_THAT(writer_->Finish(), IsOk());
  EXPECT_TRUE(tapped_ == data);
  EXPECT_TRUE(ReadBytes(path_) == data);
}

TEST_F(DirectWriterTest, TapOfALateRegionWrittenFirstReadsBackWhatItCouldNotHold) {
  // A tensor's scales beside its packed words, much larger than the writer holds: the last
  // kMaxOpenChunks + 8 chunks are written first and complete long before their turn, so the ones
  // furthest in the file go the plain way and are read back for the tap.
  const uint64_t late = DirectWriter::kMaxOpenChunks + 8, chunks = late + 6;
  const uint64_t size = chunks * kChunk - 777;
  OpenTapped(size);
  const std::string data = RandomBytes(size, 10);
  std::vector<Piece> pieces;
  for (uint64_t at = (chunks - late) * kChunk; at < size; at += 100000) pieces.push_back({at, std::min<uint64_t>(100000, size - at)});
  for (uint64_t at = 0; at < (chunks - late) * kChunk; at += 100000) pieces.push_back({at, 100000});
  pieces.back().size = (chunks - late) * kChunk - pieces.back().offset;
  ASSERT_THAT(WriteAll(data, pieces, 1), IsOk());
  EXPECT_TRUE(tapped_ == data);
  ASSERT_THAT(writer_->Finish(), IsOk());
  EXPECT_TRUE(ReadBytes(path_) == data);
}

TEST_F(DirectWriterTest, TapOfPartlyWrittenChunksThatWentThePlainWay) {
  // First halves of every chunk, then the second halves from the last: partly tapped and
  // untapped chunks are evicted, their rest read back when their turn comes.
  const uint64_t chunks = DirectWriter::kMaxOpenChunks + 8;
  const uint64_t size = chunks * kChunk;
  OpenTapped(size);
  const std::string data = RandomBytes(size, 11);
  ASSERT_THAT(WriteAll(data, HalvesThenSecondHalvesBackwards(chunks), 2), IsOk());
  EXPECT_TRUE(tapped_ == data);
  ASSERT_THAT(writer_->Finish(), IsOk());
  EXPECT_TRUE(ReadBytes(path_) == data);
}

TEST_F(DirectWriterTest, SlowTapHoldsBackTheWritersWithoutDeadlock) {
  // The tap is much slower than 4 writers: they wait for it to catch up (never for each other).
  const uint64_t size = (DirectWriter::kMaxOpenChunks + 20) * kChunk + 99;
  path_ = dir_.File("out.bin");
  fd_ = Fd(::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd_.valid());
  writer_ = DirectWriter::Open(path_, fd_.get(), size, [this](std::span<const uint8_t> bytes) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    tapped_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  });
  const std::string data = RandomBytes(size, 14);
  std::mt19937 rng(15);
  ASSERT_THAT(WriteAll(data, RandomPieces(size, rng), 4), IsOk());
  EXPECT_TRUE(tapped_ == data);
  ASSERT_THAT(writer_->Finish(), IsOk());
  EXPECT_TRUE(ReadBytes(path_) == data);
}

TEST_F(DirectWriterTest, TappedWriteFailureIsReported) {
  const uint64_t size = 12 * kChunk;
  OpenTapped(size);
  const std::string data = RandomBytes(size, 12);
  std::mt19937 rng(13);
  ScopedWriteFault fault(3 * kChunk, ENOSPC);
  Status status = WriteAll(data, RandomPieces(size, rng), 2);
  if (status.ok()) status = writer_->Finish();
  EXPECT_THAT(status, StatusIs(StatusCode::kIoError, HasSubstr(path_)));
}

}  // namespace
}  // namespace stquant::util
