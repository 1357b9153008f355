// The ollama model store: names, blobs (content addressed, deduplicated), manifests.
#include "output/ollama_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/file.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <atomic>
#include <chrono>
#include <iterator>
#include <optional>
#include <thread>
#include <vector>

#include "util/file.h"
#include "util/file_test_util.h"

namespace stquant::output {
namespace {

namespace fs = std::filesystem;

TEST(OllamaName, ResolveManifestPath) {
  EXPECT_EQ(ParseOllamaName("llama2")->ManifestPath(), "registry.ollama.ai/library/llama2/latest");
  EXPECT_EQ(ParseOllamaName("llama2:7b")->ManifestPath(), "registry.ollama.ai/library/llama2/7b");
  EXPECT_EQ(ParseOllamaName("myuser/mymodel")->ManifestPath(), "registry.ollama.ai/myuser/mymodel/latest");
  EXPECT_EQ(ParseOllamaName("myuser/mymodel:v1")->ManifestPath(), "registry.ollama.ai/myuser/mymodel/v1");
  EXPECT_EQ(ParseOllamaName("registry.example.com/namespace/model:tag")->ManifestPath(),
            "registry.example.com/namespace/model/tag");
  EXPECT_EQ(ParseOllamaName("localhost:5000/ns/m")->ManifestPath(), "localhost:5000/ns/m/latest");
}

TEST(OllamaName, Invalid) {
  for (const char* bad : {"", "a/b/c/d", "foo:", "/foo", "foo bar", "../x", "a/../b"}) {
    Result<OllamaName> n = ParseOllamaName(bad);
    ASSERT_FALSE(n.ok()) << bad;
    EXPECT_EQ(n.status().message(), std::string("invalid model name: ") + bad);
  }
}

TEST(OllamaSha256, KnownVector) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(OllamaSha256, PiecesGiveTheDigestOfTheWhole) {
  // FIPS 180-2 test vector 2, given in pieces of 1, 5, 20 ... bytes (block boundaries inside them).
  const std::string text = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  Sha256 sha;
  for (size_t at = 0, n = 1; at < text.size(); at += n, n = n * 4 + 1) {
    const std::string piece = text.substr(at, n);
    sha.Update({reinterpret_cast<const uint8_t*>(piece.data()), piece.size()});
  }
  EXPECT_EQ(sha.HexDigest(), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(text), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

class OllamaStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = (fs::temp_directory_path() / ("stquant_store_" + std::to_string(::getpid()))).string();
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string root_;
};

TEST_F(OllamaStoreTest, BlobsAreContentAddressedAndReused) {
  Result<OllamaStore> store = OllamaStore::Open(root_);
  ASSERT_TRUE(store.ok()) << store.status().message();
  Result<OllamaLayer> a = store->AddBlobBytes("abc", kOllamaMediaJson, "a.json");
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->digest, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(a->size, 3u);
  EXPECT_FALSE(a->reused);
  EXPECT_TRUE(fs::is_regular_file(store->BlobPath(a->digest)));
  Result<OllamaLayer> b = store->AddBlobBytes("abc", kOllamaMediaJson, "b.json");
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->reused);
  EXPECT_EQ(b->digest, a->digest);
  // Only the blob remains in blobs/: no temporary files (but the open store's lock file and journal).
  int files = 0;
  for (const auto& e : fs::directory_iterator(fs::path(root_) / "blobs")) {
    if (e.path().extension() == ".lock" || e.path().extension() == kOllamaJournalSuffix) continue;
    ++files;
    EXPECT_EQ(e.path().filename().string().rfind("sha256-", 0), 0u) << e.path();
  }
  EXPECT_EQ(files, 1);
}

TEST_F(OllamaStoreTest, ConcurrentBlobsWithTheSameBytesKeepOneFile) {
  // Blobs are committed on several threads at once: of equal blobs one is renamed into place,
  // the others are found there and dropped, as one after the other.
  Result<OllamaStore> store = OllamaStore::Open(root_);
  ASSERT_TRUE(store.ok());
  const std::string bytes = "the same tensor bytes";
  std::vector<std::string> temps;
  for (int i = 0; i < 8; ++i) {
    temps.push_back(store->NewTempPath());
    std::ofstream(temps.back()) << bytes;
  }
  std::vector<Result<OllamaLayer>> layers(temps.size(), Status::Internal("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < temps.size(); ++i) {
    threads.emplace_back([&, i] { layers[i] = store->AddBlobFile(temps[i], Sha256Hex(bytes), kOllamaMediaTensor, "t"); });
  }
  for (std::thread& t : threads) t.join();
  int reused = 0;
  for (const Result<OllamaLayer>& layer : layers) {
    ASSERT_TRUE(layer.ok()) << layer.status().message();
    EXPECT_EQ(layer->digest, "sha256:" + Sha256Hex(bytes));
    EXPECT_EQ(layer->size, bytes.size());
    reused += layer->reused;
  }
  EXPECT_EQ(reused, 7);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(fs::path(root_) / "blobs")) {
    // The store's lock and journal (held while it is open) aside.
    if (e.path().extension() != ".lock" && e.path().extension() != ".blobs") names.push_back(e.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"sha256-" + Sha256Hex(bytes)});
}

TEST_F(OllamaStoreTest, ManifestIsWrittenWithLayersInOrder) {
  Result<OllamaStore> store = OllamaStore::Open(root_);
  ASSERT_TRUE(store.ok());
  OllamaLayer config = *store->AddBlobBytes("{}", kOllamaMediaConfig, "");
  OllamaLayer t = *store->AddBlobBytes("tensor", kOllamaMediaTensor, "w.weight");
  OllamaLayer j = *store->AddBlobBytes("{\"a\":1}", kOllamaMediaJson, "config.json");
  Result<std::string> path = store->WriteManifest(*ParseOllamaName("me/m:v1"), config, {t, j});
  ASSERT_TRUE(path.ok()) << path.status().message();
  EXPECT_EQ(*path, root_ + "/manifests/registry.ollama.ai/me/m/v1");
  std::ifstream written(*path);
  const nlohmann::json raw = nlohmann::json::parse(written);
  EXPECT_EQ(raw["schemaVersion"], 2);
  EXPECT_EQ(raw["mediaType"], kOllamaMediaManifest);
  EXPECT_FALSE(raw["config"].contains("name"));
  Result<OllamaManifest> m = store->ReadManifest(*ParseOllamaName("me/m:v1"));
  ASSERT_TRUE(m.ok()) << m.status().message();
  ASSERT_TRUE(m->config.has_value());
  EXPECT_EQ(m->config->digest, config.digest);
  EXPECT_EQ(m->config->media_type, kOllamaMediaConfig);
  ASSERT_EQ(m->layers.size(), 2u);
  EXPECT_EQ(m->layers[0].name, "w.weight");
  EXPECT_EQ(m->layers[0].size, 6u);
  EXPECT_EQ(m->layers[1].media_type, kOllamaMediaJson);
  EXPECT_EQ(store->ReadManifest(*ParseOllamaName("other")).status().code(), StatusCode::kInvalidArgument);
}

// Issue 17: a manifest is input like any other file.
TEST_F(OllamaStoreTest, ManifestThatIsAFifoOrTooLargeIsRefusedAtOnce) {
  Result<OllamaStore> store = OllamaStore::Open(root_);
  ASSERT_TRUE(store.ok());
  const fs::path dir = fs::path(root_) / "manifests/registry.ollama.ai/library/fifo";
  fs::create_directories(dir);
  ASSERT_EQ(::mkfifo((dir / "latest").c_str(), 0600), 0);
  Result<OllamaManifest> fifo = store->ReadManifest(*ParseOllamaName("fifo"));
  EXPECT_EQ(fifo.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(fifo.status().message().find("not a regular file (a FIFO)"), std::string::npos) << fifo.status().message();
  std::ofstream(dir / "big") << "{\"layers\": []}" << std::string(5 << 20, ' ');
  Result<OllamaManifest> big = store->ReadManifest(*ParseOllamaName("fifo:big"));
  EXPECT_NE(big.status().message().find("over the limit of 4 MiB"), std::string::npos) << big.status().message();
}

TEST(OllamaManifestTest, LayersMustNameBlobsInsideTheStore) {
  const std::string digest = "sha256:" + std::string(64, 'a');
  auto parse = [](const std::string& text) { return ParseOllamaManifest(text, "m"); };
  auto message = [&](const std::string& text) { return parse(text).status().message(); };
  Result<OllamaManifest> ok = parse(R"({"layers": [{"digest": ")" + digest + R"(", "size": 3}]})");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_FALSE(ok->config.has_value());
  EXPECT_EQ(ok->layers[0].size, 3u);
  EXPECT_EQ(ok->layers[0].media_type, "");
  EXPECT_EQ(message(R"({"layers": [{"digest": "sha256:../../../../etc/passwd"}]})"),
            "'m': layer 0 has no digest \"sha256:<64 hex digits>\"");
  EXPECT_EQ(message(R"({"layers": [{"digest": ")" + digest + R"(", "size": -1}]})"),
            "'m': layer 0: \"size\" is not a non-negative integer");
  EXPECT_EQ(message(R"({"layers": [{"digest": ")" + digest + R"(", "size": "3"}]})"),
            "'m': layer 0: \"size\" is not a non-negative integer");
  EXPECT_EQ(message(R"({"layers": [{"digest": ")" + digest + R"(", "mediaType": 7}]})"),
            "'m': layer 0: \"mediaType\" is not a string");
  EXPECT_EQ(message(R"({"layers": [], "config": []})"), "'m': \"config\" is not an object");
  EXPECT_EQ(message(R"({"layers": {}})"), "'m': not an ollama manifest (no \"layers\" array)");
  EXPECT_EQ(message("[]"), "'m': not an ollama manifest (no \"layers\" array)");
  EXPECT_EQ(message(R"({"layers": )" + std::string(100000, '[')), "'m': invalid JSON: nested deeper than 64 levels");
}

// Issue 17: a FIFO named like a lock file would block its open; it is left alone, and so are the
// temporaries of its tag.
TEST_F(OllamaStoreTest, OpenDoesNotBlockOnAFifoNamedLikeALock) {
  const fs::path blobs = fs::path(root_) / "blobs";
  fs::create_directories(blobs);
  const fs::path lock = blobs / ".stquant-tmp-4194311-0123456789abcdef.lock";
  ASSERT_EQ(::mkfifo(lock.c_str(), 0600), 0);
  std::ofstream(blobs / ".stquant-tmp-4194311-0123456789abcdef-0") << "partial";
  EXPECT_TRUE(testing::WithinLimit([&] { return OllamaStore::Open(root_).status(); }).ok());
  EXPECT_TRUE(fs::exists(fs::symlink_status(lock)));
  EXPECT_TRUE(fs::exists(blobs / ".stquant-tmp-4194311-0123456789abcdef-0"));
}

TEST_F(OllamaStoreTest, OpenRemovesOnlyTemporariesWhoseLockNobodyHolds) {
  const fs::path blobs = fs::path(root_) / "blobs";
  fs::create_directories(blobs);
  auto write = [&](const std::string& name) {
    std::ofstream(blobs / name) << "partial";
    return blobs / name;
  };
  // pid 2^22 + 7 is above the default pid_max of most systems: no such process here.
  const fs::path legacy = write(".stquant-tmp-4194311-0");                          // no lock file
  const fs::path killed = write(".stquant-tmp-4194311-0123456789abcdef-0");         // lock not held
  const fs::path killed_lock = write(".stquant-tmp-4194311-0123456789abcdef.lock");
  // A live import whose pid means nothing here (another pid namespace): its lock is held.
  const fs::path foreign = write(".stquant-tmp-4194311-fedcba9876543210-0");
  const fs::path foreign_writer = write("..stquant-tmp-4194311-fedcba9876543210-1.tmp-4194311-00");
  const fs::path foreign_lock = write(".stquant-tmp-4194311-fedcba9876543210.lock");
  util::Fd held(::open(foreign_lock.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_EQ(::flock(held.get(), LOCK_EX | LOCK_NB), 0);
  // A store open in this process: its temporaries stay while it is open.
  std::optional<OllamaStore> first;
  {
    Result<OllamaStore> opened = OllamaStore::Open(root_);
    ASSERT_TRUE(opened.ok());
    first.emplace(std::move(*opened));
  }
  const fs::path mine = write(fs::path(first->NewTempPath()).filename().string());

  ASSERT_TRUE(OllamaStore::Open(root_).ok());
  EXPECT_FALSE(fs::exists(legacy));
  EXPECT_FALSE(fs::exists(killed));
  EXPECT_FALSE(fs::exists(killed_lock));
  EXPECT_TRUE(fs::exists(foreign));
  EXPECT_TRUE(fs::exists(foreign_writer));
  EXPECT_TRUE(fs::exists(foreign_lock));
  EXPECT_TRUE(fs::exists(mine));

  // Once their owners are gone, the next store removes them.
  held.Reset();
  first.reset();
  ASSERT_TRUE(OllamaStore::Open(root_).ok());
  EXPECT_FALSE(fs::exists(foreign));
  EXPECT_FALSE(fs::exists(foreign_writer));
  EXPECT_FALSE(fs::exists(foreign_lock));
  EXPECT_FALSE(fs::exists(mine));
}

TEST(OllamaModelsDir, Resolution) {
  EXPECT_EQ(*ResolveOllamaModelsDir("/x"), "/x");
  ::setenv("OLLAMA_MODELS", "/from/env", 1);
  EXPECT_EQ(*ResolveOllamaModelsDir(""), "/from/env");
  ::unsetenv("OLLAMA_MODELS");
  ::setenv("HOME", "/home/u", 1);
  EXPECT_EQ(*ResolveOllamaModelsDir(""), "/home/u/.ollama/models");
}

// The collector protocol (ollama_store.h): every blob added or reused is in the import's journal
// before it is in place; the journal is gone once the store is closed; a collector holding the
// lock exclusively keeps blobs from being committed.
TEST_F(OllamaStoreTest, JournalListsEveryBlobUntilTheStoreCloses) {
  std::string journal;
  {
    Result<OllamaStore> store = OllamaStore::Open(root_);
    ASSERT_TRUE(store.ok()) << store.status().message();
    ASSERT_TRUE(store->AddBlobBytes("abc", kOllamaMediaJson, "a.json").ok());
    ASSERT_TRUE(store->AddBlobBytes("abc", kOllamaMediaJson, "again.json").ok());  // reused: listed again
    ASSERT_TRUE(store->AddBlobBytes("xyz", kOllamaMediaJson, "b.json").ok());
    for (const auto& entry : fs::directory_iterator(root_ + "/blobs")) {
      if (entry.path().string().ends_with(kOllamaJournalSuffix)) journal = entry.path().string();
    }
    ASSERT_FALSE(journal.empty());
    std::ifstream in(journal);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string abc = "sha256-ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n";
    EXPECT_EQ(text, abc + abc + "sha256-" + Sha256Hex("xyz") + "\n");

    // A collector's exclusive lock holds the next commit back until it is released.
    util::Fd gc(::open((root_ + "/" + kOllamaGcLockFile).c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(gc.valid());
    ASSERT_EQ(0, ::flock(gc.get(), LOCK_EX));
    std::atomic<bool> committed = false;
    std::thread writer([&] {
      ASSERT_TRUE(store->AddBlobBytes("later", kOllamaMediaJson, "c.json").ok());
      committed = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(committed);
    EXPECT_FALSE(fs::exists(store->BlobPath(Sha256Hex("later"))));
    ::flock(gc.get(), LOCK_UN);
    writer.join();
    EXPECT_TRUE(committed);
  }
  EXPECT_FALSE(fs::exists(journal));
}

}  // namespace
}  // namespace stquant::output
