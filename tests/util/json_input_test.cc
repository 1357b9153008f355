#include "util/json_input.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <chrono>
#include <string>

#include "util/file_test_util.h"

namespace stquant::util {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::ScratchDir;
using ::stquant::testing::StatusIs;
using ::stquant::testing::WriteBytes;
using ::testing::HasSubstr;
using ::testing::Not;

std::string Repeat(const std::string& piece, int n) {
  std::string out;
  out.reserve(piece.size() * static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) out += piece;
  return out;
}

// `levels` nested arrays around 1, inside a config object: the config itself is level 1.
std::string NestedArrays(int levels) {
  return "{\"model_type\": \"llama\", \"a\": " + Repeat("[", levels) + "1" + Repeat("]", levels) + "}";
}

std::string NestedObjects(int levels) {
  return "{\"model_type\": \"llama\", \"x\": " + Repeat("{\"y\":", levels) + "1" + Repeat("}", levels) + "}";
}

TEST(JsonInputTest, ParsesAnObject) {
  auto j = ParseJson(R"({"model_type": "llama", "n": [1, 2.5, -3, null, true], "o": {"k": "v"}})", "c.json");
  ASSERT_THAT(j, IsOk());
  EXPECT_EQ((*j)["model_type"], "llama");
  EXPECT_EQ((*j)["n"].size(), 5u);
  EXPECT_EQ((*j)["o"]["k"], "v");
}

TEST(JsonInputTest, NestingUpToTheLimitIsAcceptedAndOneMoreIsNot) {
  // The top-level object is level 1: kMaxJsonDepth - 1 arrays inside it reach the limit.
  EXPECT_THAT(ParseJson(NestedArrays(kMaxJsonDepth - 1), "c.json"), IsOk());
  EXPECT_THAT(ParseJson(NestedArrays(kMaxJsonDepth), "c.json"),
              StatusIs(StatusCode::kInvalidInput, "'c.json': invalid JSON: nested deeper than 64 levels"));
  EXPECT_THAT(ParseJson(NestedObjects(kMaxJsonDepth - 1), "c.json"), IsOk());
  EXPECT_THAT(ParseJson(NestedObjects(kMaxJsonDepth), "c.json"),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("nested deeper than 64 levels")));
  EXPECT_THAT(ParseJson(Repeat("[", kMaxJsonDepth) + Repeat("]", kMaxJsonDepth), "c.json"), IsOk());
  EXPECT_THAT(ParseOrderedJson(Repeat("[{\"a\":", 33) + "1" + Repeat("}]", 33), "c.json"),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("nested deeper than 64 levels")));
  // Depth counts open containers, not how many were opened: siblings do not add up.
  EXPECT_THAT(ParseJson("[" + Repeat(Repeat("[", 60) + Repeat("]", 60) + ",", 1000) + "1]", "c.json"), IsOk());
}

// Issue 17's rows: 100,000 / 20,000 levels of arrays and 60,000 of objects crashed (stack
// overflow in a recursive copy) or took seconds and gigabytes; the parse now stops at level 65.
TEST(JsonInputTest, DeepNestingStopsAtTheLimitFastAndSmall) {
  for (const std::string& text : {NestedArrays(100000), NestedArrays(20000), NestedObjects(60000),
                                  Repeat("[", 5000000)}) {
    rusage before{};
    ::getrusage(RUSAGE_SELF, &before);
    const auto start = std::chrono::steady_clock::now();
    EXPECT_THAT(ParseJson(text, "c.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("nested deeper than 64")));
    EXPECT_THAT(ParseOrderedJson(text, "c.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("nested deeper")));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500));
    rusage after{};
    ::getrusage(RUSAGE_SELF, &after);
    EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 4096);  // KiB
  }
}

TEST(JsonInputTest, SyntaxErrorsSayWhereWithoutNlohmannsId) {
  auto bad = ParseJson("{model", "dir/config.json");
  EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidInput,
                            HasSubstr("'dir/config.json': invalid JSON: parse error at line 1, column 2")));
  EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidInput, Not(HasSubstr("json.exception"))));
  EXPECT_THAT(ParseJson("", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(ParseJson("{} x", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(ParseJson("{\"a\": 1e400}", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(ParseJson("{\"a\": \"\xff\"}", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(ParseJson("{\"a\": 1} // c", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
}

TEST(JsonInputTest, MessagesStayOneLine) {
  for (const char* text : {"{\"a\":\n\x01\x02}", "\"\n\x1b[2J", "{\"\xff\": 1}"}) {
    auto bad = ParseJson(text, "dir/new\nline.json");
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().message().find('\n'), std::string::npos) << bad.status().message();
    EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidInput, HasSubstr("'dir/new\\x0aline.json'")));
  }
}

TEST(JsonInputTest, OrderedKeepsTheOrderOfMembers) {
  auto j = ParseOrderedJson(R"({"z": 1, "a": 2, "m": 3})", "c.json");
  ASSERT_THAT(j, IsOk());
  EXPECT_EQ(j->dump(), R"({"z":1,"a":2,"m":3})");
}

TEST(JsonInputTest, ReadJsonFileAppliesTheFileChecksFirst) {
  ScratchDir dir;
  WriteBytes(dir.File("config.json"), NestedArrays(3));
  EXPECT_THAT(ReadJsonFile(dir.File("config.json"), kJsonConfigLimit), IsOk());
  ASSERT_EQ(::mkfifo(dir.File("fifo.json").c_str(), 0600), 0);
  EXPECT_THAT(ReadJsonFile(dir.File("fifo.json"), kJsonConfigLimit),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("not a regular file (a FIFO)")));
  WriteBytes(dir.File("big.json"), "{}" + std::string(kJsonConfigLimit.max_bytes, ' '));
  EXPECT_THAT(ReadJsonFile(dir.File("big.json"), kJsonConfigLimit),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("16777218 bytes, over the limit of 16 MiB")));
  WriteBytes(dir.File("deep.json"), NestedArrays(100000));
  EXPECT_THAT(ReadJsonFile(dir.File("deep.json"), kJsonConfigLimit),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("'" + dir.File("deep.json") + "': invalid JSON: nested")));
}

}  // namespace
}  // namespace stquant::util
