// Test helpers for code that touches files: a scratch directory, whole-file read/write, write
// fault injection for a scope, and gMock matchers for Status / Result.
#pragma once

#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <span>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "stquant/status.h"
#include "util/file.h"

namespace stquant::testing {

// A fresh directory under the test temp dir, removed (with its files) when destroyed.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = ::testing::TempDir() + "stquant-XXXXXX";
    char* made = ::mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr) << "mkdtemp " << pattern;
    path_ = pattern;
  }
  ~ScratchDir() {
    for (const std::string& name : List()) ::unlink((path_ + "/" + name).c_str());
    ::rmdir(path_.c_str());
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  // Names of the entries in the directory (hidden ones included), sorted.
  std::vector<std::string> List() const {
    std::vector<std::string> names;
    if (DIR* dir = ::opendir(path_.c_str())) {
      while (const dirent* entry = ::readdir(dir)) {
        const std::string name = entry->d_name;
        if (name != "." && name != "..") names.push_back(name);
      }
      ::closedir(dir);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

// The bytes of `s`, for the span-taking write APIs.
inline std::span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// util::SetWriteFaultForTesting for one scope: cleared however the test ends.
class ScopedWriteFault {
 public:
  ScopedWriteFault(uint64_t after_bytes, int err) { util::SetWriteFaultForTesting(after_bytes, err); }
  ~ScopedWriteFault() { util::ClearWriteFaultForTesting(); }
  ScopedWriteFault(const ScopedWriteFault&) = delete;
  ScopedWriteFault& operator=(const ScopedWriteFault&) = delete;
};

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Runs `call` on a thread of its own and returns its status, or fails the test when it has not
// returned after `limit` (the thread, blocked in open() on a FIFO say, is then left behind: it
// does not keep the test binary from exiting).
inline Status WithinLimit(const std::function<Status()>& call,
                          std::chrono::milliseconds limit = std::chrono::seconds(2)) {
  auto done = std::make_shared<std::promise<Status>>();
  std::future<Status> result = done->get_future();
  std::thread([done, call] { done->set_value(call()); }).detach();
  if (result.wait_for(limit) != std::future_status::ready) {
    ADD_FAILURE() << "still blocked after " << limit.count() << " ms";
    return Status::Internal("blocked");
  }
  return result.get();
}

inline Status GetStatus(const Status& status) { return status; }
template <typename T>
Status GetStatus(const Result<T>& result) {
  return result.status();
}

// Matches an OK Status or a Result holding a value.
MATCHER(IsOk, "is OK") {
  const Status status = GetStatus(arg);
  if (status.ok()) return true;
  *result_listener << "status is " << status.ToString();
  return false;
}

// Matches a Status or Result whose code is `code` and whose message matches `message_matcher`.
MATCHER_P2(StatusIs, code, message_matcher,
           std::string(negation ? "isn't" : "is") + " a status with code " + ::testing::PrintToString(code) +
               " and a message that " + ::testing::DescribeMatcher<std::string>(message_matcher)) {
  const Status status = GetStatus(arg);
  if (status.code() != code) {
    *result_listener << "status is " << status.ToString();
    return false;
  }
  return ::testing::ExplainMatchResult(message_matcher, status.message(), result_listener);
}

}  // namespace stquant::testing

namespace stquant {
// gtest prints these through ADL: the status instead of the object's bytes.
inline void PrintTo(const Status& status, std::ostream* os) { *os << status.ToString(); }
inline void PrintTo(StatusCode code, std::ostream* os) {
  static constexpr const char* kNames[] = {"kOk", "kInvalidArgument", "kInvalidInput",
                                           "kUnsupported", "kIoError", "kInternal"};
  *os << kNames[static_cast<int>(code)];
}
template <typename T>
void PrintTo(const Result<T>& result, std::ostream* os) {
  *os << (result.ok() ? std::string("a value") : result.status().ToString());
}
}  // namespace stquant
