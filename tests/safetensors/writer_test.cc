// Writer: header format, round trips through the Reader, determinism, completeness tracking and
// failure cleanup (injected ENOSPC/EIO).
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <numeric>
#include <random>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "safetensors/st_test_util.h"
#include "util/file.h"

namespace stquant::safetensors {
namespace {

using ::stquant::testing::AsBytes;
using ::stquant::testing::Exists;
using ::stquant::testing::ReadBytes;
using ::stquant::testing::ScratchDir;
using ::stquant::testing::ScopedWriteFault;
using ::stquant::testing::WriteBytes;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::IsOk;
using testing::StatusIs;

using Metadata = std::map<std::string, std::string>;

// Deterministic filler: byte i of tensor `seed`.
std::vector<uint8_t> Pattern(uint64_t nbytes, uint32_t seed) {
  std::vector<uint8_t> out(nbytes);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : out) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(x >> 24);
  }
  return out;
}

// Writes every tensor of `writer` whole, with Pattern(nbytes, index).
Status FillAll(Writer& writer) {
  for (size_t i = 0; i < writer.num_tensors(); ++i) {
    STQ_RETURN_IF_ERROR(writer.WriteTensorData(i, 0, Pattern(writer.tensor(i).nbytes(), static_cast<uint32_t>(i))));
  }
  return Status::Ok();
}

// Writes rows of `row_bytes` of tensor 0 from `data`, in a shuffled order (`seed`), from two
// threads; the number of writes that failed.
int WriteRowsShuffledFromTwoThreads(Writer& writer, const std::vector<uint8_t>& data, uint64_t row_bytes,
                                    uint32_t seed) {
  std::vector<uint64_t> rows(data.size() / row_bytes);
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), std::mt19937(seed));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < rows.size(); i += 2) {
        const uint64_t r = rows[i];
        if (!writer.WriteTensorData(0, r * row_bytes, std::span(data).subspan(r * row_bytes, row_bytes)).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  return failures.load();
}

class WriterTest : public ::testing::Test {
 protected:
  std::string path() const { return dir_.File("out.safetensors"); }
  ScratchDir dir_;
};

TEST_F(WriterTest, HeaderIsCompactSortedAndPadded) {
  auto writer = Writer::Create(path(), {{"b", DType::kF32, {2}}, {"a", DType::kU8, {3}}}, Metadata{{"format", "pt"}});
  ASSERT_THAT(writer, IsOk());
  ASSERT_THAT(FillAll(**writer), IsOk());
  ASSERT_THAT((*writer)->Commit(), IsOk());

  // Offsets follow the given order (b first); keys are sorted; spaces pad to a multiple of 8.
  std::string json = R"({"__metadata__":{"format":"pt"},"a":{"data_offsets":[8,11],"dtype":"U8","shape":[3]},)"
                     R"("b":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}})";
  json.append((8 - json.size() % 8) % 8, ' ');
  const std::string bytes = ReadBytes(path());
  ASSERT_EQ(bytes.size(), 8 + json.size() + 11);
  EXPECT_EQ(bytes.substr(0, 8), testing::LengthPrefix(json.size()));
  EXPECT_EQ(bytes.substr(8, json.size()), json);
  EXPECT_EQ((8 + json.size()) % 8, 0u);
  EXPECT_EQ((*writer)->file_size(), bytes.size());
}

TEST_F(WriterTest, NoMetadataKeyWithoutMetadata) {
  auto writer = Writer::Create(path(), {{"x", DType::kU8, {0}}});
  ASSERT_THAT(writer, IsOk());
  ASSERT_THAT((*writer)->Commit(), IsOk());
  const std::string bytes = ReadBytes(path());
  EXPECT_EQ(bytes.substr(8), R"({"x":{"data_offsets":[0,0],"dtype":"U8","shape":[0]}}   )");
}

TEST_F(WriterTest, RoundTripEveryDType) {
  std::vector<TensorDecl> decls;
  for (int d = 0; d <= static_cast<int>(DType::kF4); ++d) {
    const DType dtype = static_cast<DType>(d);
    const std::string name(DTypeName(dtype));
    if (DTypeBits(dtype) % 8 == 0) {
      decls.push_back({name + ".scalar", dtype, {}});  // 0-d: one element
    } else {
      decls.push_back({name + ".pair", dtype, {4}});   // the smallest whole-byte count for 4 and 6 bits
    }
    decls.push_back({name + ".matrix", dtype, {3, 8}});
    decls.push_back({name + ".empty", dtype, {0, 5}});
  }
  auto writer = Writer::Create(path(), decls, Metadata{{"k", "v"}, {"unicode", "h\xC3\xA9llo"}});
  ASSERT_THAT(writer, IsOk());
  ASSERT_THAT(FillAll(**writer), IsOk());
  ASSERT_THAT((*writer)->Commit(), IsOk());

  auto reader = Reader::Open(path());
  ASSERT_THAT(reader, IsOk());
  EXPECT_TRUE((*reader)->warnings().empty());
  EXPECT_EQ((*reader)->metadata(), (Metadata{{"k", "v"}, {"unicode", "h\xC3\xA9llo"}}));
  ASSERT_EQ((*reader)->tensors().size(), decls.size());
  for (size_t i = 0; i < decls.size(); ++i) {
    const TensorInfo* info = (*reader)->Find(decls[i].name);
    ASSERT_NE(info, nullptr) << decls[i].name;
    EXPECT_EQ(info->dtype, decls[i].dtype);
    EXPECT_EQ(info->shape, decls[i].shape);
    EXPECT_EQ(info->begin, (*writer)->tensor(i).begin);
    const std::vector<uint8_t> expected = Pattern(info->nbytes(), static_cast<uint32_t>(i));
    auto view = (*reader)->View(*info);
    ASSERT_THAT(view, IsOk());
    EXPECT_TRUE(std::equal(view->begin(), view->end(), expected.begin(), expected.end())) << decls[i].name;
    std::vector<uint8_t> read(info->nbytes());
    ASSERT_THAT((*reader)->Read(*info, 0, read), IsOk());
    EXPECT_EQ(read, expected) << decls[i].name;
  }
  EXPECT_EQ((*reader)->Find("F4.pair")->nbytes(), 2u);
  EXPECT_EQ((*reader)->Find("F6_E3M2.matrix")->nbytes(), 18u);
  EXPECT_EQ((*reader)->Find("BF16.scalar")->nbytes(), 2u);
  EXPECT_EQ((*reader)->Find("C64.empty")->nbytes(), 0u);
}

TEST_F(WriterTest, SameInputSameBytesWhateverTheWriteOrder) {
  const std::vector<TensorDecl> decls = {{"w", DType::kBF16, {64, 33}}, {"b", DType::kF32, {7}}, {"z", DType::kU8, {0}}};
  // In order, whole tensors.
  auto first = Writer::Create(dir_.File("one.safetensors"), decls, Metadata{{"a", "1"}});
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(FillAll(**first), IsOk());
  ASSERT_THAT((*first)->Commit(), IsOk());
  // Reverse tensor order, odd-sized pieces, from the back of each tensor.
  auto second = Writer::Create(dir_.File("two.safetensors"), decls, Metadata{{"a", "1"}});
  ASSERT_THAT(second, IsOk());
  for (size_t i = decls.size(); i-- > 0;) {
    const std::vector<uint8_t> data = Pattern((*second)->tensor(i).nbytes(), static_cast<uint32_t>(i));
    for (size_t end = data.size(); end > 0;) {
      const size_t begin = end >= 37 ? end - 37 : 0;
      ASSERT_THAT((*second)->WriteTensorData(i, begin, std::span(data).subspan(begin, end - begin)), IsOk());
      end = begin;
    }
  }
  ASSERT_THAT((*second)->Commit(), IsOk());
  EXPECT_EQ(ReadBytes(dir_.File("one.safetensors")), ReadBytes(dir_.File("two.safetensors")));
}

TEST_F(WriterTest, AppendStreamsInPieces) {
  auto writer = Writer::Create(path(), {{"a", DType::kU8, {10}}, {"b", DType::kU8, {3}}});
  ASSERT_THAT(writer, IsOk());
  ASSERT_THAT((*writer)->AppendTensorData(1, AsBytes("xyz")), IsOk());
  ASSERT_THAT((*writer)->AppendTensorData(0, AsBytes("0123")), IsOk());
  EXPECT_THAT((*writer)->AppendTensorData(0, AsBytes("4567890")),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor 'a': write of 7 bytes at offset 4 past its 10 bytes")));
  ASSERT_THAT((*writer)->AppendTensorData(0, AsBytes("456789")), IsOk());  // a refused append can be retried
  ASSERT_THAT((*writer)->AppendTensorData(0, {}), IsOk());
  ASSERT_THAT((*writer)->Commit(), IsOk());
  const std::string bytes = ReadBytes(path());
  EXPECT_EQ(bytes.substr(bytes.size() - 13), "0123456789xyz");
}

TEST_F(WriterTest, ParallelDisjointWrites) {
  constexpr int kThreads = 4;
  constexpr uint64_t kRows = 256, kRowBytes = 1024;
  auto writer = Writer::Create(path(), {{"big", DType::kU8, {kRows, kRowBytes}}});
  ASSERT_THAT(writer, IsOk());
  const std::vector<uint8_t> data = Pattern(kRows * kRowBytes, 7);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t row = t; row < kRows; row += kThreads) {
        if (!(*writer)->WriteTensorData(0, row * kRowBytes, std::span(data).subspan(row * kRowBytes, kRowBytes)).ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_THAT((*writer)->Commit(), IsOk());
  auto reader = Reader::Open(path());
  ASSERT_THAT(reader, IsOk());
  auto view = (*reader)->View((*reader)->tensors()[0]);
  ASSERT_THAT(view, IsOk());
  EXPECT_TRUE(std::equal(view->begin(), view->end(), data.begin(), data.end()));
}

// Files of DirectWriter::kMinFileBytes and more bypass the page cache: the same bytes must come
// out whatever the write order, and a failure must leave nothing behind.
TEST_F(WriterTest, LargeFileInShuffledPiecesFromTwoThreads) {
  constexpr uint64_t kRows = 1300, kRowBytes = 16 << 10;  // ~20 MiB, not a multiple of 4 KiB in all
  const std::vector<TensorDecl> decls = {{"big", DType::kU8, {kRows, kRowBytes}}, {"odd", DType::kU8, {1234567}}};
  auto writer = Writer::Create(path(), decls, Metadata{{"format", "mlx"}});
  ASSERT_THAT(writer, IsOk());
  const std::vector<uint8_t> big = Pattern(kRows * kRowBytes, 1), odd = Pattern(1234567, 2);
  ASSERT_EQ(WriteRowsShuffledFromTwoThreads(**writer, big, kRowBytes, 3), 0);
  ASSERT_THAT((*writer)->WriteTensorData(1, 0, odd), IsOk());
  ASSERT_THAT((*writer)->Commit(), IsOk());
  EXPECT_EQ(ReadBytes(path()).size(), (*writer)->file_size());
  auto reader = Reader::Open(path());
  ASSERT_THAT(reader, IsOk());
  for (size_t i = 0; i < 2; ++i) {
    auto view = (*reader)->View(*(*reader)->Find(i == 0 ? "big" : "odd"));
    ASSERT_THAT(view, IsOk());
    const std::vector<uint8_t>& want = i == 0 ? big : odd;
    EXPECT_TRUE(std::equal(view->begin(), view->end(), want.begin(), want.end())) << i;
  }
}

// The in-order tap (how the ollama layout hashes a blob while writing it) gets exactly the bytes
// of the committed file, header first, whatever the write order, for small and large files.
TEST_F(WriterTest, InOrderTapGetsTheFileAsCommitted) {
  for (const uint64_t rows : {uint64_t{3}, uint64_t{1300}}) {
    constexpr uint64_t kRowBytes = 16 << 10;
    std::string tapped;
    auto writer = Writer::Create(path(), {{"big", DType::kU8, {rows, kRowBytes}}, {"odd", DType::kU8, {12345}}},
                                 Metadata{{"quant_type", "int4"}}, [&](std::span<const uint8_t> bytes) {
                                   tapped.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
                                 });
    ASSERT_THAT(writer, IsOk());
    const std::vector<uint8_t> big = Pattern(rows * kRowBytes, 5), odd = Pattern(12345, 6);
    ASSERT_THAT((*writer)->WriteTensorData(1, 0, odd), IsOk());  // the end of the file first
    ASSERT_EQ(WriteRowsShuffledFromTwoThreads(**writer, big, kRowBytes, 7), 0);
    EXPECT_EQ(tapped.size(), (*writer)->file_size()) << rows;
    ASSERT_THAT((*writer)->Commit(), IsOk());
    EXPECT_TRUE(tapped == ReadBytes(path())) << rows;
  }
}

TEST_F(WriterTest, EnospcInLargeFileLeavesNothingAndKeepsTheOldFile) {
  WriteBytes(path(), "previous version");
  {
    auto writer = Writer::Create(path(), {{"big", DType::kU8, {24 << 20}}});
    ASSERT_THAT(writer, IsOk());
    ScopedWriteFault fault(10 << 20, ENOSPC);
    const std::vector<uint8_t> data = Pattern(24 << 20, 4);
    Status status;
    for (uint64_t at = 0; at < data.size() && status.ok(); at += 1 << 20) {
      status = (*writer)->WriteTensorData(0, at, std::span(data).subspan(at, 1 << 20));
    }
    if (status.ok()) status = (*writer)->Commit();
    EXPECT_THAT(status, StatusIs(StatusCode::kIoError, HasSubstr("No space left on device")));
  }
  EXPECT_THAT(dir_.List(), ElementsAre("out.safetensors"));
  EXPECT_EQ(ReadBytes(path()), "previous version");
}

TEST_F(WriterTest, ZeroByteTensorsOnly) {
  auto writer = Writer::Create(path(), {{"e", DType::kF32, {0}}, {"f", DType::kF4, {0, 2}}});
  ASSERT_THAT(writer, IsOk());
  ASSERT_THAT((*writer)->WriteTensorData(0, 0, {}), IsOk());
  ASSERT_THAT((*writer)->Commit(), IsOk());
  auto reader = Reader::Open(path());
  ASSERT_THAT(reader, IsOk());
  EXPECT_EQ((*reader)->tensors().size(), 2u);
  EXPECT_EQ((*reader)->file_size(), (*reader)->data_offset());
}

TEST_F(WriterTest, NoTensorsAtAll) {
  auto writer = Writer::Create(path(), {});
  ASSERT_THAT(writer, IsOk());
  ASSERT_THAT((*writer)->Commit(), IsOk());
  EXPECT_EQ(ReadBytes(path()), testing::LengthPrefix(8) + "{}      ");
}

// --- declarations the writer refuses ---

TEST_F(WriterTest, RefusesEmptyName) {
  EXPECT_THAT(Writer::Create(path(), {{"a", DType::kU8, {1}}, {"", DType::kU8, {1}}}),
              StatusIs(StatusCode::kInvalidArgument, path() + ": tensor #1 has an empty name"));
}

TEST_F(WriterTest, RefusesDuplicateName) {
  EXPECT_THAT(Writer::Create(path(), {{"a", DType::kU8, {1}}, {"a", DType::kU8, {2}}}),
              StatusIs(StatusCode::kInvalidArgument, path() + ": duplicate tensor name 'a'"));
  EXPECT_TRUE(dir_.List().empty());
}

TEST_F(WriterTest, RefusesReservedName) {
  EXPECT_THAT(Writer::Create(path(), {{"__metadata__", DType::kU8, {1}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("'__metadata__' is reserved")));
}

TEST_F(WriterTest, RefusesInvalidUtf8) {
  EXPECT_THAT(Writer::Create(path(), {{"a\xff", DType::kU8, {1}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("name is not valid UTF-8")));
  EXPECT_THAT(Writer::Create(path(), {}, Metadata{{"k", "\xC0\xAF"}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("__metadata__ entry 'k' is not valid UTF-8")));
}

TEST_F(WriterTest, RefusesNegativeDimension) {
  EXPECT_THAT(Writer::Create(path(), {{"a", DType::kU8, {2, -1}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor 'a': negative dimension in shape [2, -1]")));
}

TEST_F(WriterTest, RefusesShapeOverflow) {
  EXPECT_THAT(Writer::Create(path(), {{"a", DType::kU8, {int64_t{1} << 32, int64_t{1} << 32}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("has more than 2^63-1 elements")));
}

TEST_F(WriterTest, RefusesTotalSizeOverflow) {
  const int64_t big = int64_t{1} << 61;
  EXPECT_THAT(Writer::Create(path(), {{"a", DType::kF64, {big / 4}}, {"b", DType::kF64, {big / 4}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensors total more than 2^63-1 bytes")));
}

TEST_F(WriterTest, RefusesPartialBytes) {
  EXPECT_THAT(Writer::Create(path(), {{"a", DType::kF6E2M3, {3}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("3 elements of dtype F6_E2M3 are not a whole number of bytes")));
}

// --- writes the writer refuses ---

TEST_F(WriterTest, RefusesBadWrites) {
  auto writer = Writer::Create(path(), {{"a", DType::kU8, {8}}});
  ASSERT_THAT(writer, IsOk());
  Writer& w = **writer;
  EXPECT_THAT(w.WriteTensorData(1, 0, AsBytes("x")),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor index 1 out of range (1 tensors)")));
  EXPECT_THAT(w.WriteTensorData(0, 6, AsBytes("xyz")),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor 'a': write of 3 bytes at offset 6 past its 8 bytes")));
  EXPECT_THAT(w.WriteTensorData(0, ~uint64_t{0}, AsBytes("x")), StatusIs(StatusCode::kInvalidArgument, HasSubstr("past")));
  ASSERT_THAT(w.WriteTensorData(0, 2, AsBytes("cdef")), IsOk());
  EXPECT_THAT(w.WriteTensorData(0, 5, AsBytes("fg")),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor 'a': bytes [5, 7) written twice")));
  EXPECT_THAT(w.WriteTensorData(0, 0, AsBytes("abc")), StatusIs(StatusCode::kInvalidArgument, HasSubstr("written twice")));
  ASSERT_THAT(w.WriteTensorData(0, 0, AsBytes("ab")), IsOk());
  ASSERT_THAT(w.WriteTensorData(0, 6, AsBytes("gh")), IsOk());
  ASSERT_THAT(w.Commit(), IsOk());
  EXPECT_THAT(w.WriteTensorData(0, 0, {}), IsOk());  // empty writes are always no-ops
  EXPECT_THAT(w.WriteTensorData(0, 0, AsBytes("a")), StatusIs(StatusCode::kInvalidArgument, HasSubstr("write after Commit")));
  EXPECT_THAT(w.Commit(), StatusIs(StatusCode::kInvalidArgument, HasSubstr("Commit called twice")));
  const std::string bytes = ReadBytes(path());
  EXPECT_EQ(bytes.substr(bytes.size() - 8), "abcdefgh");
}

TEST_F(WriterTest, IndexOf) {
  auto writer = Writer::Create(path(), {{"x", DType::kU8, {1}}, {"y", DType::kU8, {1}}});
  ASSERT_THAT(writer, IsOk());
  EXPECT_EQ((*writer)->IndexOf("y"), 1u);
  EXPECT_EQ((*writer)->IndexOf("z"), std::nullopt);
}

// --- nothing partial is ever left behind ---

TEST_F(WriterTest, IncompleteCommitIsRefusedAndLeavesNothing) {
  {
    auto writer = Writer::Create(path(), {{"a", DType::kU8, {4}}, {"b", DType::kF32, {2}}});
    ASSERT_THAT(writer, IsOk());
    ASSERT_THAT((*writer)->WriteTensorData(0, 0, AsBytes("abcd")), IsOk());
    ASSERT_THAT((*writer)->WriteTensorData(1, 4, AsBytes("1234")), IsOk());
    EXPECT_THAT((*writer)->Commit(),
                StatusIs(StatusCode::kInvalidArgument, path() + ": tensor 'b' incomplete: 4 of 8 bytes written"));
    EXPECT_FALSE(Exists(path()));
  }
  EXPECT_TRUE(dir_.List().empty());
}

TEST_F(WriterTest, UncommittedWriterLeavesNothing) {
  {
    auto writer = Writer::Create(path(), {{"a", DType::kU8, {4}}});
    ASSERT_THAT(writer, IsOk());
    ASSERT_THAT(FillAll(**writer), IsOk());
    EXPECT_EQ(dir_.List().size(), 1u);  // the temp file
    EXPECT_FALSE(Exists(path()));
  }
  EXPECT_TRUE(dir_.List().empty());
}

TEST_F(WriterTest, EnospcWritingHeaderLeavesNothing) {
  ScopedWriteFault fault(5, ENOSPC);
  EXPECT_THAT(Writer::Create(path(), {{"a", DType::kU8, {4}}}),
              StatusIs(StatusCode::kIoError, HasSubstr("No space left on device")));
  EXPECT_TRUE(dir_.List().empty());
}

TEST_F(WriterTest, EnospcMidDataLeavesNothingAndKeepsTheOldFile) {
  WriteBytes(path(), "previous version");
  {
    auto writer = Writer::Create(path(), {{"a", DType::kU8, {100}}, {"b", DType::kU8, {100}}});
    ASSERT_THAT(writer, IsOk());
    ScopedWriteFault fault(150, ENOSPC);  // a full disk halfway through 'b'
    const std::vector<uint8_t> data(100, 7);
    ASSERT_THAT((*writer)->WriteTensorData(0, 0, data), IsOk());
    const Status failed = (*writer)->WriteTensorData(1, 0, data);
    EXPECT_THAT(failed, StatusIs(StatusCode::kIoError, HasSubstr("No space left on device")));
    EXPECT_THAT(failed, StatusIs(StatusCode::kIoError, HasSubstr(".out.safetensors.tmp-")));
    // The writer is failed for good: Commit reports the same error and removes nothing yet.
    EXPECT_THAT((*writer)->Commit(), StatusIs(StatusCode::kIoError, failed.message()));
    EXPECT_EQ(ReadBytes(path()), "previous version");
  }
  EXPECT_THAT(dir_.List(), ElementsAre("out.safetensors"));
  EXPECT_EQ(ReadBytes(path()), "previous version");
}

TEST_F(WriterTest, FsyncFailureAtCommitLeavesNothing) {
  auto writer = Writer::Create(path(), {{"a", DType::kU8, {4}}});
  ASSERT_THAT(writer, IsOk());
  ASSERT_THAT(FillAll(**writer), IsOk());
  ScopedWriteFault fault(0, EIO);
  EXPECT_THAT((*writer)->Commit(), StatusIs(StatusCode::kIoError, HasSubstr("fsync")));
  EXPECT_TRUE(dir_.List().empty());
  EXPECT_THAT((*writer)->Commit(), StatusIs(StatusCode::kIoError, HasSubstr("fsync")));
}

TEST_F(WriterTest, MissingDirectoryIsIoError) {
  EXPECT_THAT(Writer::Create(dir_.File("missing/out.safetensors"), {}),
              StatusIs(StatusCode::kIoError, HasSubstr("No such file or directory")));
}

}  // namespace
}  // namespace stquant::safetensors
