#include "util/file.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "util/file_test_util.h"
#include "util/input_file.h"

namespace stquant::util {
namespace {

using ::stquant::testing::AsBytes;
using ::stquant::testing::Exists;
using ::stquant::testing::IsOk;
using ::stquant::testing::ReadBytes;
using ::stquant::testing::ScratchDir;
using ::stquant::testing::ScopedWriteFault;
using ::stquant::testing::StatusIs;
using ::stquant::testing::WriteBytes;
using ::testing::HasSubstr;

TEST(FdTest, ClosesOnDestructionAndMoves) {
  ScratchDir dir;
  WriteBytes(dir.File("f"), "x");
  int raw;
  {
    auto file = OpenRegularFile(dir.File("f"));
    ASSERT_THAT(file, IsOk());
    raw = file->fd.get();
    Fd moved = std::move(file->fd);
    EXPECT_FALSE(file->fd.valid());
    EXPECT_EQ(moved.get(), raw);
    EXPECT_NE(::fcntl(raw, F_GETFD), -1);
  }
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
}

TEST(FileTest, PreadFullReadsAndReportsEndOfFile) {
  ScratchDir dir;
  WriteBytes(dir.File("f"), "0123456789");
  auto file = OpenRegularFile(dir.File("f"));
  ASSERT_THAT(file, IsOk());
  std::vector<uint8_t> buf(4);
  ASSERT_THAT(PreadFull(file->fd.get(), buf, 3, dir.File("f")), IsOk());
  EXPECT_EQ(std::string(buf.begin(), buf.end()), "3456");
  EXPECT_THAT(PreadFull(file->fd.get(), buf, 8, dir.File("f")),
              StatusIs(StatusCode::kIoError, HasSubstr("unexpected end of file at offset 10")));
}

TEST(FileTest, PwriteFullWritesAtOffsets) {
  ScratchDir dir;
  auto file = AtomicFile::Create(dir.File("out"));
  ASSERT_THAT(file, IsOk());
  ASSERT_THAT(PwriteFull(file->fd(), AsBytes("world"), 6, file->temp_path()), IsOk());
  ASSERT_THAT(PwriteFull(file->fd(), AsBytes("hello "), 0, file->temp_path()), IsOk());
  EXPECT_EQ(ReadBytes(file->temp_path()), "hello world");
}

TEST(FileTest, ParentDirectory) {
  EXPECT_EQ(ParentDirectory("a/b/c"), "a/b");
  EXPECT_EQ(ParentDirectory("c"), ".");
  EXPECT_EQ(ParentDirectory("/c"), "/");
}

TEST(FileTest, SyncParentDirectory) {
  ScratchDir dir;
  EXPECT_THAT(SyncParentDirectory(dir.File("anything")), IsOk());
  EXPECT_THAT(SyncParentDirectory(dir.File("missing/x")),
              StatusIs(StatusCode::kIoError, HasSubstr("open directory '" + dir.File("missing") + "'")));
}

TEST(MappedFileTest, MapsWholeFile) {
  ScratchDir dir;
  WriteBytes(dir.File("f"), "mapped bytes");
  auto file = OpenRegularFile(dir.File("f"));
  ASSERT_THAT(file, IsOk());
  auto map = MappedFile::Map(file->fd.get(), 12, dir.File("f"));
  ASSERT_THAT(map, IsOk());
  MappedFile moved = std::move(*map);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(moved.bytes().data()), moved.bytes().size()), "mapped bytes");
  EXPECT_TRUE(map->bytes().empty());
  auto empty = MappedFile::Map(file->fd.get(), 0, dir.File("f"));
  ASSERT_THAT(empty, IsOk());
  EXPECT_TRUE(empty->bytes().empty());
}

TEST(AtomicFileTest, TempNameBesideFinalAndCommitRenames) {
  ScratchDir dir;
  auto file = AtomicFile::Create(dir.File("model.safetensors"));
  ASSERT_THAT(file, IsOk());
  EXPECT_TRUE(std::regex_match(file->temp_path(), std::regex(".*/\\.model\\.safetensors\\.tmp-[0-9]+-[0-9a-f]{16}")))
      << file->temp_path();
  EXPECT_EQ(ParentDirectory(file->temp_path()), dir.path());
  ASSERT_THAT(PwriteFull(file->fd(), AsBytes("data"), 0, file->temp_path()), IsOk());
  EXPECT_FALSE(Exists(dir.File("model.safetensors")));
  ASSERT_THAT(file->Commit(), IsOk());
  EXPECT_TRUE(file->committed());
  EXPECT_EQ(ReadBytes(dir.File("model.safetensors")), "data");
  EXPECT_THAT(dir.List(), ::testing::ElementsAre("model.safetensors"));
  EXPECT_THAT(file->Commit(), StatusIs(StatusCode::kInternal, HasSubstr("already committed")));
}

TEST(AtomicFileTest, CommitReplacesExistingFile) {
  ScratchDir dir;
  WriteBytes(dir.File("f"), "old contents");
  auto file = AtomicFile::Create(dir.File("f"));
  ASSERT_THAT(file, IsOk());
  ASSERT_THAT(PwriteFull(file->fd(), AsBytes("new"), 0, file->temp_path()), IsOk());
  ASSERT_THAT(file->Commit(), IsOk());
  EXPECT_EQ(ReadBytes(dir.File("f")), "new");
}

TEST(AtomicFileTest, RelativeNameGetsTempInCurrentDirectory) {
  ScratchDir dir;
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(::chdir(dir.path().c_str()), 0);
  {
    auto file = AtomicFile::Create("rel.bin");
    ASSERT_THAT(file, IsOk());
    EXPECT_EQ(file->temp_path().rfind(".rel.bin.tmp-", 0), 0u) << file->temp_path();
    ASSERT_THAT(file->Commit(), IsOk());
  }
  ASSERT_EQ(::chdir(cwd), 0);
  EXPECT_THAT(dir.List(), ::testing::ElementsAre("rel.bin"));
}

TEST(AtomicFileTest, DestructionWithoutCommitRemovesTemp) {
  ScratchDir dir;
  {
    auto file = AtomicFile::Create(dir.File("f"));
    ASSERT_THAT(file, IsOk());
    ASSERT_THAT(PwriteFull(file->fd(), AsBytes("partial"), 0, file->temp_path()), IsOk());
    EXPECT_EQ(dir.List().size(), 1u);
    AtomicFile moved = std::move(*file);  // the moved-from object must not remove anything
  }
  EXPECT_TRUE(dir.List().empty());
}

TEST(AtomicFileTest, CreateInMissingDirectoryFails) {
  ScratchDir dir;
  EXPECT_THAT(AtomicFile::Create(dir.File("no/such/f")),
              StatusIs(StatusCode::kIoError, HasSubstr("create '" + dir.File("no/such/.f.tmp-"))));
  EXPECT_THAT(AtomicFile::Create(dir.path() + "/"), StatusIs(StatusCode::kInvalidArgument, HasSubstr("names a directory")));
}

TEST(AtomicFileTest, RenameFailureRemovesTemp) {
  ScratchDir dir;
  ASSERT_EQ(::mkdir(dir.File("taken").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(dir.File("taken/sub").c_str(), 0755), 0);  // a non-empty directory cannot be replaced
  auto file = AtomicFile::Create(dir.File("taken"));
  ASSERT_THAT(file, IsOk());
  EXPECT_THAT(file->Commit(), StatusIs(StatusCode::kIoError, HasSubstr("rename to '" + dir.File("taken") + "'")));
  EXPECT_THAT(dir.List(), ::testing::ElementsAre("taken"));
  ::rmdir(dir.File("taken/sub").c_str());
  ::rmdir(dir.File("taken").c_str());
}

TEST(WriteFaultTest, FailsMidBufferAfterBudget) {
  ScratchDir dir;
  auto file = AtomicFile::Create(dir.File("f"));
  ASSERT_THAT(file, IsOk());
  {
    ScopedWriteFault fault(5, ENOSPC);
    EXPECT_THAT(PwriteFull(file->fd(), AsBytes("0123456789"), 0, file->temp_path()),
                StatusIs(StatusCode::kIoError, "write '" + file->temp_path() + "': No space left on device"));
    EXPECT_EQ(ReadBytes(file->temp_path()), "01234");  // the short write landed, as on a full disk
    EXPECT_THAT(Fsync(file->fd(), file->temp_path()), StatusIs(StatusCode::kIoError, HasSubstr("fsync")));
  }
  EXPECT_THAT(PwriteFull(file->fd(), AsBytes("56789"), 5, file->temp_path()), IsOk());
  EXPECT_EQ(ReadBytes(file->temp_path()), "0123456789");
}

TEST(WriteFaultTest, CommitFailsWhenFsyncFailsAndRemovesTemp) {
  ScratchDir dir;
  auto file = AtomicFile::Create(dir.File("f"));
  ASSERT_THAT(file, IsOk());
  ASSERT_THAT(PwriteFull(file->fd(), AsBytes("x"), 0, file->temp_path()), IsOk());
  ScopedWriteFault fault(0, EIO);
  EXPECT_THAT(file->Commit(), StatusIs(StatusCode::kIoError, HasSubstr("Input/output error")));
  EXPECT_TRUE(dir.List().empty());
}

TEST(WriteFaultTest, BudgetIsSharedAcrossThreads) {
  ScratchDir dir;
  auto file = AtomicFile::Create(dir.File("f"));
  ASSERT_THAT(file, IsOk());
  ScopedWriteFault fault(1000, ENOSPC);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  const std::string block(100, 'x');
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        if (!PwriteFull(file->fd(), AsBytes(block), (t * 5 + i) * 100, file->temp_path()).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 10);  // 20 blocks of 100 bytes, 1000 bytes allowed
}

}  // namespace
}  // namespace stquant::util
