#include "util/json_input.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <chrono>
#include <string>

#include "util/file_test_util.h"

namespace stquant::util {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

std::string Repeat(const std::string& piece, int n) {
  std::string out;
  out.reserve(piece.size() * static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) out += piece;
  return out;
}

// `levels` nested arrays around 1, inside a config object: the config itself is level 1.
Result<nlohmann::json> Parse(std::string_view text, std::string_view path = "c.json") {
  return ParseJson(text, path, kJsonConfigLimit);
}
Result<nlohmann::ordered_json> ParseOrdered(std::string_view text, std::string_view path = "c.json") {
  return ParseOrderedJson(text, path, kJsonConfigLimit);
}

std::string NestedArrays(int levels) {
  return "{\"model_type\": \"llama\", \"a\": " + Repeat("[", levels) + "1" + Repeat("]", levels) + "}";
}

std::string NestedObjects(int levels) {
  return "{\"model_type\": \"llama\", \"x\": " + Repeat("{\"y\":", levels) + "1" + Repeat("}", levels) + "}";
}

TEST(JsonInputTest, ParsesAnObject) {
  auto j = Parse(R"({"model_type": "llama", "n": [1, 2.5, -3, null, true], "o": {"k": "v"}})");
  ASSERT_THAT(j, IsOk());
  EXPECT_EQ((*j)["model_type"], "llama");
  EXPECT_EQ((*j)["n"].size(), 5u);
  EXPECT_EQ((*j)["o"]["k"], "v");
}

TEST(JsonInputTest, NestingUpToTheLimitIsAcceptedAndOneMoreIsNot) {
  // The top-level object is level 1: kMaxJsonDepth - 1 arrays inside it reach the limit.
  EXPECT_THAT(Parse(NestedArrays(kMaxJsonDepth - 1)), IsOk());
  EXPECT_THAT(Parse(NestedArrays(kMaxJsonDepth)),
              StatusIs(StatusCode::kInvalidInput, "'c.json': invalid JSON: nested deeper than 64 levels"));
  EXPECT_THAT(Parse(NestedObjects(kMaxJsonDepth - 1)), IsOk());
  EXPECT_THAT(Parse(NestedObjects(kMaxJsonDepth)),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("nested deeper than 64 levels")));
  EXPECT_THAT(Parse(Repeat("[", kMaxJsonDepth) + Repeat("]", kMaxJsonDepth)), IsOk());
  EXPECT_THAT(ParseOrdered(Repeat("[{\"a\":", 33) + "1" + Repeat("}]", 33)),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("nested deeper than 64 levels")));
  // Depth counts open containers, not how many were opened: siblings do not add up.
  EXPECT_THAT(Parse("[" + Repeat(Repeat("[", 60) + Repeat("]", 60) + ",", 1000) + "1]"), IsOk());
}

// Issue 17's rows: 100,000 / 20,000 levels of arrays and 60,000 of objects crashed (stack
// overflow in a recursive copy) or took seconds and gigabytes; the parse now stops at level 65.
TEST(JsonInputTest, DeepNestingStopsAtTheLimitFastAndSmall) {
  for (const std::string& text : {NestedArrays(100000), NestedArrays(20000), NestedObjects(60000),
                                  Repeat("[", 5000000)}) {
    rusage before{};
    ::getrusage(RUSAGE_SELF, &before);
    const auto start = std::chrono::steady_clock::now();
    EXPECT_THAT(Parse(text), StatusIs(StatusCode::kInvalidInput, HasSubstr("nested deeper than 64")));
    EXPECT_THAT(ParseOrdered(text), StatusIs(StatusCode::kInvalidInput, HasSubstr("nested deeper")));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500));
    rusage after{};
    ::getrusage(RUSAGE_SELF, &after);
    EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 4096);  // KiB
  }
}

TEST(JsonInputTest, SyntaxErrorsSayWhereWithoutNlohmannsId) {
  auto bad = Parse("{model", "dir/config.json");
  EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidInput,
                            HasSubstr("'dir/config.json': invalid JSON: parse error at line 1, column 2")));
  EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidInput, Not(HasSubstr("json.exception"))));
  EXPECT_THAT(Parse("", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(Parse("{} x", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(Parse("{\"a\": 1e400}", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(Parse("{\"a\": \"\xff\"}", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
  EXPECT_THAT(Parse("{\"a\": 1} // c", "e.json"), StatusIs(StatusCode::kInvalidInput, HasSubstr("invalid JSON")));
}

TEST(JsonInputTest, MessagesStayOneLine) {
  for (const char* text : {"{\"a\":\n\x01\x02}", "\"\n\x1b[2J", "{\"\xff\": 1}"}) {
    auto bad = Parse(text, "dir/new\nline.json");
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().message().find('\n'), std::string::npos) << bad.status().message();
    EXPECT_THAT(bad, StatusIs(StatusCode::kInvalidInput, HasSubstr("'dir/new\\x0aline.json'")));
  }
}

TEST(JsonInputTest, OrderedKeepsTheOrderOfMembers) {
  auto j = ParseOrdered(R"({"z": 1, "a": 2, "m": 3})");
  ASSERT_THAT(j, IsOk());
  EXPECT_EQ(j->dump(), R"({"z":1,"a":2,"m":3})");
}

// Dense JSON costs far more parsed than as text ("0," is 2 bytes, a parsed value 16 and an object
// member up to 150): the value budget bounds it where the file size does not.
TEST(JsonInputTest, ValueBudgetBoundsTheParsedForm) {
  constexpr InputLimit kSmall{1u << 20, 10, "a test file"};
  EXPECT_THAT(ParseJson("[1, 2, 3, 4, 5, 6, 7, 8, 9]", "t.json", kSmall), IsOk());  // 10 values with the array
  EXPECT_THAT(ParseJson("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", "t.json", kSmall),
              StatusIs(StatusCode::kInvalidInput, "'t.json': JSON of more than 10 values, over the limit for a test file"));
  EXPECT_THAT(ParseJson(R"({"a": 1, "b": 2, "c": 3, "d": 4})", "t.json", kSmall), IsOk());  // names count
  EXPECT_THAT(ParseJson(R"({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5})", "t.json", kSmall),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("more than 10 values")));

  // A config of the densest kind at the size limit stops at the value budget, in little memory.
  std::string members = "{";
  for (int i = 0; members.size() + 16 < kJsonConfigLimit.max_bytes; ++i) members += "\"" + std::to_string(i) + "\":0,";
  members.back() = '}';
  for (const std::string& text : {"[" + Repeat("0,", (kJsonConfigLimit.max_bytes - 3) / 2) + "0]", members}) {
    ASSERT_LE(text.size(), kJsonConfigLimit.max_bytes);
    rusage before{};
    ::getrusage(RUSAGE_SELF, &before);
    EXPECT_THAT(Parse(text), StatusIs(StatusCode::kInvalidInput,
                                      "'c.json': JSON of more than 262144 values, over the limit for a JSON "
                                      "configuration file"));
    rusage after{};
    ::getrusage(RUSAGE_SELF, &after);
    EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 64 << 10);  // KiB
  }
}
}  // namespace
}  // namespace stquant::util
