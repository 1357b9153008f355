#include "util/input_file.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "util/file_test_util.h"

namespace stquant::util {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::ScratchDir;
using ::stquant::testing::StatusIs;
using ::stquant::testing::WithinLimit;
using ::stquant::testing::WriteBytes;
using ::testing::HasSubstr;

Status OpenStatus(const std::string& path) { return OpenRegularFile(path).status(); }

TEST(InputFileTest, OpensARegularFileWithItsSizeAndNoLeftoverFlags) {
  ScratchDir dir;
  WriteBytes(dir.File("f"), "12345");
  auto file = OpenRegularFile(dir.File("f"));
  ASSERT_THAT(file, IsOk());
  EXPECT_EQ(file->size, 5u);
  EXPECT_EQ(::fcntl(file->fd.get(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(file->fd.get(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_THAT(CheckRegularFile(dir.File("f")), IsOk());
}

TEST(InputFileTest, FifoIsRefusedAtOnce) {
  ScratchDir dir;
  ASSERT_EQ(::mkfifo(dir.File("fifo").c_str(), 0600), 0);
  const std::string path = dir.File("fifo");
  EXPECT_THAT(WithinLimit([&] { return OpenStatus(path); }),
              StatusIs(StatusCode::kInvalidInput, "'" + path + "': not a regular file (a FIFO)"));
  EXPECT_THAT(WithinLimit([&] { return ReadRegularFile(path, kJsonConfigLimit).status(); }),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("not a regular file (a FIFO)")));
}

TEST(InputFileTest, DirectorySocketAndDeviceAreRefused) {
  ScratchDir dir;
  EXPECT_THAT(OpenRegularFile(dir.path()),
              StatusIs(StatusCode::kInvalidInput, "'" + dir.path() + "': not a regular file (a directory)"));
  EXPECT_THAT(OpenRegularFile("/dev/null"),
              StatusIs(StatusCode::kInvalidInput, "'/dev/null': not a regular file (a character device)"));

  const std::string socket_path = dir.File("sock");
  const int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(sock, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  ASSERT_LT(socket_path.size(), sizeof(address.sun_path));
  std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
  ASSERT_EQ(::bind(sock, reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0) << std::strerror(errno);
  EXPECT_THAT(WithinLimit([&] { return OpenStatus(socket_path); }),
              StatusIs(StatusCode::kInvalidInput, "'" + socket_path + "': not a regular file (a socket)"));
  ::close(sock);
}

TEST(InputFileTest, LinkLoopAndDanglingLinkAreBadInputNamingTheReason) {
  ScratchDir dir;
  ASSERT_EQ(::symlink("self", dir.File("self").c_str()), 0);
  EXPECT_THAT(OpenRegularFile(dir.File("self")),
              StatusIs(StatusCode::kInvalidInput,
                       "'" + dir.File("self") + "': symbolic link loop (too many levels of symbolic links)"));
  ASSERT_EQ(::symlink("b", dir.File("a").c_str()), 0);
  ASSERT_EQ(::symlink("a", dir.File("b").c_str()), 0);
  EXPECT_THAT(OpenRegularFile(dir.File("a")), StatusIs(StatusCode::kInvalidInput, HasSubstr("symbolic link loop")));
  ASSERT_EQ(::symlink("../nowhere/blob", dir.File("dangling").c_str()), 0);
  EXPECT_THAT(OpenRegularFile(dir.File("dangling")),
              StatusIs(StatusCode::kInvalidInput,
                       "'" + dir.File("dangling") + "': dangling symbolic link (its target '../nowhere/blob' does not exist)"));
}

TEST(InputFileTest, SymlinkToARegularFileIsFollowed) {
  // The Hugging Face cache: snapshots/<rev>/x -> ../../blobs/<hash>, here one level.
  ScratchDir dir;
  WriteBytes(dir.File("blob"), "weights");
  ASSERT_EQ(::symlink("blob", dir.File("link1").c_str()), 0);
  ASSERT_EQ(::symlink(dir.File("link1").c_str(), dir.File("link2").c_str()), 0);
  auto file = OpenRegularFile(dir.File("link2"));
  ASSERT_THAT(file, IsOk());
  EXPECT_EQ(file->size, 7u);
}

TEST(InputFileTest, MissingAndNotADirectoryAreBadInput) {
  ScratchDir dir;
  EXPECT_THAT(OpenRegularFile(dir.File("nope")),
              StatusIs(StatusCode::kInvalidInput, "'" + dir.File("nope") + "': no such file or directory"));
  WriteBytes(dir.File("file"), "x");
  EXPECT_THAT(OpenRegularFile(dir.File("file") + "/config.json"),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("a component of the path is not a directory")));
  EXPECT_THAT(OpenRegularFile(dir.path() + "/" + std::string(5000, 'n')),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("file name too long")));
}

TEST(InputFileTest, UnreadableFileIsBadInput) {
  ScratchDir dir;
  WriteBytes(dir.File("secret"), "x");
  ASSERT_EQ(::chmod(dir.File("secret").c_str(), 0), 0);
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);  // stat succeeds: the open is refused
  const Status denied = Status::InvalidInput("'" + dir.File("secret") + "': permission denied");
  auto refused = [&] {
    const Status status = OpenRegularFile(dir.File("secret")).status();
    return status.code() == denied.code() && status.message() == denied.message();
  };
  if (::geteuid() != 0) {
    EXPECT_TRUE(refused()) << OpenRegularFile(dir.File("secret")).status().ToString();
    return;
  }
  // Root reads any file: check as nobody, in a child process.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    ::_exit(refused() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
}

TEST(InputFileTest, HostileNameIsPrintedEscaped) {
  ScratchDir dir;
  const std::string path = dir.File("a\nb'c");
  EXPECT_THAT(OpenRegularFile(path), StatusIs(StatusCode::kInvalidInput, HasSubstr("a\\x0ab\\'c': no such file")));
}

TEST(ReadRegularFileTest, ReadsUpToTheLimitAndRefusesOneByteMore) {
  ScratchDir dir;
  constexpr InputLimit kLimit{1u << 20, 0, "a test file"};
  WriteBytes(dir.File("at"), std::string(kLimit.max_bytes, 'a'));
  auto text = ReadRegularFile(dir.File("at"), kLimit);
  ASSERT_THAT(text, IsOk());
  EXPECT_EQ(text->size(), kLimit.max_bytes);
  WriteBytes(dir.File("over"), std::string(kLimit.max_bytes + 1, 'a'));
  EXPECT_THAT(ReadRegularFile(dir.File("over"), kLimit),
              StatusIs(StatusCode::kInvalidInput,
                       "'" + dir.File("over") + "': 1048577 bytes, over the limit of 1 MiB for a test file"));
}

TEST(ReadRegularFileTest, HugeFileIsRefusedBeforeAnythingIsAllocated) {
  ScratchDir dir;
  const std::string path = dir.File("sparse");
  WriteBytes(path, "");
  ASSERT_EQ(::truncate(path.c_str(), off_t{1} << 40), 0);  // 1 TiB, no blocks
  rusage before{};
  ::getrusage(RUSAGE_SELF, &before);
  EXPECT_THAT(ReadRegularFile(path, kJsonConfigLimit),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("1099511627776 bytes, over the limit of 4 MiB for a JSON "
                                                            "configuration file")));
  rusage after{};
  ::getrusage(RUSAGE_SELF, &after);
#ifndef __SANITIZE_ADDRESS__  // ASan's allocator and shadow memory grow the peak on their own
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 1024);  // KiB
#endif
}

TEST(ReadRegularFileTest, EmptyFileIsEmpty) {
  ScratchDir dir;
  WriteBytes(dir.File("empty"), "");
  auto text = ReadRegularFile(dir.File("empty"), kTextFileLimit);
  ASSERT_THAT(text, IsOk());
  EXPECT_TRUE(text->empty());
}

}  // namespace
}  // namespace stquant::util
