// Issue 8, faults: a write that fails (ENOSPC, EIO) at any point of `convert`, `quantize` or
// `dequantize` gives an IoError (exit code 3) naming the file, and leaves the previous state
// intact: no output directory or file, no temporary left beside it.
//
// The fault is injected by util::SetWriteFaultForTesting after N bytes written, for N swept over
// the whole output (the headers, the first tensor, the middle, the last bytes, the index and
// config files, the copied tokenizer).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <string>
#include <vector>

#include "stquant/convert.h"
#include "stquant/quantize_file.h"
#include "util/file_test_util.h"

namespace stquant {
namespace {

namespace fs = std::filesystem;
using ::stquant::testing::IsOk;
using ::stquant::testing::ScratchDir;
using ::stquant::testing::ScopedWriteFault;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const std::string kTinyModel = std::string(STQUANT_SOURCE_DIR) + "/examples/tiny-model";

// Every entry under `dir`, recursively (hidden ones included).
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    out.push_back(fs::relative(it->path(), dir).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t TreeBytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) total += entry.file_size();
  }
  return total;
}

// Fault points spread over [0, total): the first bytes, a sweep, and the last bytes.
std::vector<uint64_t> FaultPoints(uint64_t total, int sweep) {
  std::vector<uint64_t> points = {0, 1, 7, 8, 100, 4096};
  for (int i = 1; i < sweep; ++i) points.push_back(total * i / sweep);
  for (uint64_t back : {4096, 100, 1}) {
    if (total > back) points.push_back(total - back);
  }
  return points;
}

class FaultInjectionTest : public ::testing::Test {
 protected:
  ~FaultInjectionTest() override {
    std::error_code ec;
    fs::remove_all(Work(), ec);
  }
  std::string Work() const { return scratch_.path() + "/work"; }
  void SetUp() override { fs::create_directories(Work()); }
  ScratchDir scratch_;
};

TEST_F(FaultInjectionTest, ConvertFaultAnywhereLeavesNoOutput) {
  const std::string work = Work();
  ConvertOptions options;
  options.source_dir = kTinyModel;
  options.output_dir = work + "/reference";
  options.quant = QuantSpec{};
  options.shard_bytes = 512 << 10;  // several shards
  options.threads = 2;
  ASSERT_THAT(Convert(options).status(), IsOk());
  const uint64_t total = TreeBytes(options.output_dir);
  ASSERT_GT(total, 512u << 10);
  fs::remove_all(options.output_dir);

  int runs = 0;
  for (int err : {ENOSPC, EIO}) {
    for (uint64_t after : FaultPoints(total, err == ENOSPC ? 16 : 4)) {
      SCOPED_TRACE("fault after " + std::to_string(after) + " bytes, errno " + std::to_string(err));
      options.output_dir = work + "/out";
      Result<ConvertSummary> result = [&] {
        ScopedWriteFault fault(after, err);
        return Convert(options);
      }();
      ++runs;
      ASSERT_FALSE(result.ok());
      EXPECT_EQ(result.status().code(), StatusCode::kIoError) << result.status().message();
      EXPECT_EQ(result.status().ExitCode(), 3);
      EXPECT_THAT(result.status().message(), HasSubstr(err == ENOSPC ? "No space left on device" : "Input/output error"));
      EXPECT_THAT(result.status().message(), HasSubstr(work));  // names the file
      EXPECT_EQ(result.status().message().find('\n'), std::string::npos);
      EXPECT_THAT(Entries(work), IsEmpty());
    }
  }
  // The same conversion succeeds once the disk has room again.
  options.output_dir = work + "/out";
  ASSERT_THAT(Convert(options).status(), IsOk());
  EXPECT_THAT(Entries(work), ::testing::Contains("out"));
  RecordProperty("fault_runs", runs);
}

TEST_F(FaultInjectionTest, ConvertFaultWithForceKeepsThePreviousOutput) {
  const std::string work = Work();
  ConvertOptions options;
  options.source_dir = kTinyModel;
  options.output_dir = work + "/out";
  options.quant = QuantSpec{};
  ASSERT_THAT(Convert(options).status(), IsOk());
  const std::vector<std::string> before = Entries(work);
  const uint64_t total = TreeBytes(options.output_dir);
  options.force = true;
  for (uint64_t after : FaultPoints(total, 8)) {
    SCOPED_TRACE("fault after " + std::to_string(after) + " bytes");
    Result<ConvertSummary> result = [&] {
      ScopedWriteFault fault(after, ENOSPC);
      return Convert(options);
    }();
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), StatusCode::kIoError);
    EXPECT_EQ(Entries(work), before);
    EXPECT_EQ(TreeBytes(options.output_dir), total);
  }
}

TEST_F(FaultInjectionTest, QuantizeAndDequantizeFaultAnywhereLeaveNoFile) {
  const std::string work = Work();
  const std::string input = kTinyModel + "/model-00001-of-00002.safetensors";
  QuantizeFileOptions options;
  options.threads = 2;
  const std::string reference = work + "/reference.safetensors";
  ASSERT_THAT(QuantizeFile(input, reference, options), IsOk());
  const uint64_t total = fs::file_size(reference);

  DequantizeFileOptions dq;
  dq.threads = 2;
  ASSERT_THAT(DequantizeFile(reference, work + "/dq-reference.safetensors", dq), IsOk());
  const uint64_t dq_total = fs::file_size(work + "/dq-reference.safetensors");
  fs::remove(work + "/dq-reference.safetensors");
  const std::vector<std::string> before = Entries(work);

  for (uint64_t after : FaultPoints(total, 16)) {
    SCOPED_TRACE("quantize, fault after " + std::to_string(after) + " bytes");
    Status status = [&] {
      ScopedWriteFault fault(after, ENOSPC);
      return QuantizeFile(input, work + "/q.safetensors", options);
    }();
    EXPECT_EQ(status.code(), StatusCode::kIoError) << status.message();
    EXPECT_THAT(status.message(), HasSubstr("No space left on device"));
    EXPECT_EQ(Entries(work), before);
  }
  for (uint64_t after : FaultPoints(dq_total, 16)) {
    SCOPED_TRACE("dequantize, fault after " + std::to_string(after) + " bytes");
    Status status = [&] {
      ScopedWriteFault fault(after, ENOSPC);
      return DequantizeFile(reference, work + "/d.safetensors", dq);
    }();
    EXPECT_EQ(status.code(), StatusCode::kIoError) << status.message();
    EXPECT_EQ(Entries(work), before);
  }
}

}  // namespace
}  // namespace stquant
