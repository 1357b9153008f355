// Hugging Face repo ids resolved in a cache tree built by hand, laid out as huggingface_hub
// writes it: models--org--name/{refs/<rev>, snapshots/<commit>/<file> -> ../../blobs/<hash>}.
#include "stquant/hf_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "util/file_test_util.h"

namespace stquant {
namespace {

namespace fs = std::filesystem;
using ::stquant::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

const std::string kMain = "0123456789abcdef0123456789abcdef01234567";
const std::string kOld = "89abcdef0123456789abcdef0123456789abcdef";

class HfCacheTest : public ::testing::Test {
 protected:
  HfCacheTest() {
    cache_ = dir_.path() + "/hub";
    const std::string repo = cache_ + "/models--Qwen--Qwen3-8B";
    for (const std::string& commit : {kMain, kOld}) {
      fs::create_directories(repo + "/snapshots/" + commit);
      fs::create_directories(repo + "/blobs");
      ::stquant::testing::WriteBytes(repo + "/blobs/" + commit + "-config", "{}");
      fs::create_symlink("../../blobs/" + commit + "-config", repo + "/snapshots/" + commit + "/config.json");
    }
    fs::create_directories(repo + "/refs/refs/pr");  // revision "refs/pr/1" is the file refs/refs/pr/1
    ::stquant::testing::WriteBytes(repo + "/refs/main", kMain);
    ::stquant::testing::WriteBytes(repo + "/refs/v1", kOld + "\n");
    ::stquant::testing::WriteBytes(repo + "/refs/refs/pr/1", kOld);
    ::stquant::testing::WriteBytes(repo + "/refs/escape", "../../../etc");
    ::stquant::testing::WriteBytes(repo + "/refs/gone", "ffffffffffffffffffffffffffffffffffffffff");
  }
  ~HfCacheTest() override {
    std::error_code ec;
    fs::remove_all(dir_.path() + "/hub", ec);
  }
  std::string Snapshot(const std::string& commit) const {
    return cache_ + "/models--Qwen--Qwen3-8B/snapshots/" + commit;
  }

  ::stquant::testing::ScratchDir dir_;
  std::string cache_;
};

TEST(HfRepoIdTest, FollowsHuggingfaceHubValidation) {
  for (const char* id : {"Qwen/Qwen3-8B", "gpt2", "org_1/name.v2", "a/b"}) EXPECT_TRUE(IsHfRepoId(id)) << id;
  for (const char* id : {"", "/abs/path", "a/b/c", "org--x/name", "a..b", "-lead", "trail-", "x.git", "a/",
                         "has space/x", "./model"}) {
    EXPECT_FALSE(IsHfRepoId(id)) << id;
  }
  EXPECT_FALSE(IsHfRepoId(std::string(97, 'a')));
}

TEST_F(HfCacheTest, MainAndRefsAndCommits) {
  auto resolve = [&](const std::string& revision) {
    Result<std::string> r = ResolveHfSnapshot(cache_, "Qwen/Qwen3-8B", revision);
    return r.ok() ? *r : r.status().ToString();
  };
  EXPECT_EQ(resolve(""), Snapshot(kMain));
  EXPECT_EQ(resolve("main"), Snapshot(kMain));
  EXPECT_EQ(resolve("v1"), Snapshot(kOld));  // a trailing newline
  EXPECT_EQ(resolve("refs/pr/1"), Snapshot(kOld));
  EXPECT_EQ(resolve(kOld), Snapshot(kOld));  // a commit, no ref needed
  // The snapshot's files are the cache's symlinks into blobs/.
  EXPECT_TRUE(fs::is_symlink(Snapshot(kMain) + "/config.json"));
}

TEST_F(HfCacheTest, MissingRepoRevisionOrSnapshotSaysHowToFetch) {
  EXPECT_THAT(ResolveHfSnapshot(cache_, "Qwen/Qwen3-4B", "").status(),
              StatusIs(StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("models--Qwen--Qwen3-4B"), HasSubstr("`hf download Qwen/Qwen3-4B`"))));
  EXPECT_THAT(ResolveHfSnapshot(cache_, "Qwen/Qwen3-8B", "v9").status(),
              StatusIs(StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("revision 'v9'"), HasSubstr("`hf download Qwen/Qwen3-8B --revision v9`"))));
  EXPECT_THAT(ResolveHfSnapshot(cache_, "Qwen/Qwen3-8B", "gone").status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("commit ffffffff")));
  EXPECT_THAT(ResolveHfSnapshot(cache_, "Qwen/Qwen3-8B", std::string(40, 'e')).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("is not in the Hugging Face cache")));
}

TEST_F(HfCacheTest, RevisionsAndRefsCannotLeaveTheRepository) {
  for (const char* rev : {"../main", "/etc/passwd", "refs/../../x", "a//b"}) {
    EXPECT_THAT(ResolveHfSnapshot(cache_, "Qwen/Qwen3-8B", rev).status(),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("not a branch, tag or commit")))
        << rev;
  }
  EXPECT_THAT(ResolveHfSnapshot(cache_, "Qwen/Qwen3-8B", "escape").status(),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("not a commit hash")));
}

TEST_F(HfCacheTest, CacheDirectoryFollowsTheEnvironment) {
  struct Saved {
    const char* name;
    std::string value;
    bool set;
  };
  std::vector<Saved> saved;
  for (const char* name : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"}) {
    const char* v = getenv(name);
    saved.push_back({name, v ? v : "", v != nullptr});
    unsetenv(name);
  }
  setenv("HOME", "/home/u", 1);
  EXPECT_EQ(HfHubCacheDir(), "/home/u/.cache/huggingface/hub");
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  EXPECT_EQ(HfHubCacheDir(), "/xdg/huggingface/hub");
  setenv("HF_HOME", "~/hf", 1);
  EXPECT_EQ(HfHubCacheDir(), "/home/u/hf/hub");
  setenv("HUGGINGFACE_HUB_CACHE", "/legacy", 1);
  EXPECT_EQ(HfHubCacheDir(), "/legacy");
  setenv("HF_HUB_CACHE", cache_.c_str(), 1);
  EXPECT_EQ(HfHubCacheDir(), cache_);
  // A repo id resolves there; an existing path wins over a repo id; --revision needs a repo id.
  EXPECT_EQ(*ResolveModelSource("Qwen/Qwen3-8B", "v1"), Snapshot(kOld));
  EXPECT_EQ(*ResolveModelSource(cache_, ""), cache_);
  EXPECT_THAT(ResolveModelSource(cache_, "v1").status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("is a local path")));
  EXPECT_THAT(ResolveModelSource("/no/such/dir", "").status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("does not exist")));
  for (const Saved& s : saved) {
    if (s.set) setenv(s.name, s.value.c_str(), 1);
    else unsetenv(s.name);
  }
}

}  // namespace
}  // namespace stquant
