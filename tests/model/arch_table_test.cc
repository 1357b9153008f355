// The architecture table (src/model/arch/*.json): every entry the binary embeds parses, the
// embedded texts are the files of the folder, the README lists exactly the table, and malformed
// entries are refused naming the file and the problem.
#include "model/arch_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "model/arch.h"
#include "util/file_test_util.h"

namespace stquant::model {
namespace {

namespace fs = std::filesystem;
using ::stquant::testing::IsOk;
using ::stquant::testing::StatusIs;
using ::testing::HasSubstr;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(ArchTableTest, EveryEmbeddedEntryParses) {
  Result<const ArchTable*> table = ArchTable::Builtin();
  ASSERT_THAT(table, IsOk());
  EXPECT_FALSE((*table)->entries().empty());
  EXPECT_EQ((*table)->generic().model_type, "_generic");
  for (const ArchEntry& e : (*table)->entries()) {
    EXPECT_FALSE(e.mlx_lm.empty()) << e.file;
    EXPECT_EQ(e.verified, e.reason.empty()) << e.file;
  }
}

TEST(ArchTableTest, TheEmbeddedTableIsTheFolder) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::directory_iterator(fs::path(STQUANT_SOURCE_DIR) / "src/model/arch")) {
    if (entry.path().extension() == ".json") {
      files["src/model/arch/" + entry.path().filename().string()] = ReadFile(entry.path());
    }
  }
  std::map<std::string, std::string> embedded(EmbeddedArchFiles().begin(), EmbeddedArchFiles().end());
  EXPECT_EQ(embedded, files) << "rebuild: the embedded table is out of date";
}

TEST(ArchTableTest, ReadmeListsTheTable) {
  const std::string readme = ReadFile(fs::path(STQUANT_SOURCE_DIR) / "README.md");
  const std::string begin = "<!-- architectures: begin", end = "<!-- architectures: end -->";
  const size_t b = readme.find(begin), e = readme.find(end);
  ASSERT_NE(b, std::string::npos) << "README.md has no " << begin << " marker";
  ASSERT_NE(e, std::string::npos);
  const size_t body = readme.find('\n', b) + 1;
  Result<const ArchTable*> table = ArchTable::Builtin();
  ASSERT_THAT(table, IsOk());
  EXPECT_EQ(readme.substr(body, e - body), (*table)->MarkdownList())
      << "regenerate it: build/tools/arch_readme --write README.md";
}

TEST(ArchTableTest, FindResolvesAliases) {
  Result<const ArchTable*> table = ArchTable::Builtin();
  ASSERT_THAT(table, IsOk());
  ASSERT_NE((*table)->Find("mistral"), nullptr);
  EXPECT_EQ((*table)->Find("mistral")->model_type, "llama");
  EXPECT_EQ((*table)->Find("kimi_k2")->model_type, "deepseek_v3");
  EXPECT_EQ((*table)->Find("falcon_mamba")->model_type, "mamba");
  EXPECT_EQ((*table)->Find("no_such_model"), nullptr);
  EXPECT_EQ((*table)->Find("_generic"), nullptr);
}

TEST(ArchTableTest, VerdictForAConfig) {
  EXPECT_TRUE(RulesFor({{"model_type", "qwen3_moe"}}).known);
  const ArchRules text = RulesFor({{"text_config", {{"model_type", "mistral"}}}});
  EXPECT_TRUE(text.known);
  EXPECT_EQ(text.entry->model_type, "llama");
  const ArchRules unknown = RulesFor({{"model_type", "no_such_model"}});
  EXPECT_FALSE(unknown.known);
  EXPECT_FALSE(unknown.refused);
  EXPECT_EQ(unknown.entry, nullptr);
}

// Each malformed entry is refused with a message naming the file and what is wrong.
TEST(ArchTableTest, MalformedEntriesAreRefused) {
  const std::string generic = R"({"model_type": "_generic", "status": "verified", "mlx_lm": "-"})";
  const std::string head = R"("model_type": "t", "status": "verified", "mlx_lm": "-")";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "not a JSON object"},
      {"{" + head + R"(, "sanitise": []})", "unknown key 'sanitise'"},
      {R"({"model_type": "u", "status": "verified", "mlx_lm": "-"})", "differs from the file name"},
      {R"({"model_type": "t", "status": "maybe", "mlx_lm": "-"})", "must be \"verified\" or \"refused\""},
      {R"({"model_type": "t", "status": "refused", "mlx_lm": "-"})", "'reason' is required"},
      {R"({"model_type": "t", "status": "verified"})", "'mlx_lm' is required"},
      {"{" + head + R"(, "sanitize": [{"drop": "("}]})", "invalid regex '('"},
      {"{" + head + R"(, "sanitize": [{"drop": "a", "rename": "b", "to": "c"}]})", "one operation"},
      {"{" + head + R"(, "sanitize": [{"delete": "a"}]})", "no operation"},
      {"{" + head + R"(, "sanitize": [{"drop": "a", "to": "b"}]})", "sanitize[0]: unknown key 'to'"},
      {"{" + head + R"(, "sanitize": [{"rename": "a"}]})", "'to' is required"},
      {"{" + head + R"(, "sanitize": [{"stack": "experts\\.\\d+", "to": "x"}]})", "regex group capturing the expert index"},
      {"{" + head + R"(, "sanitize": [{"split": "a", "axis": 0, "parts": [{"to": "b", "size": 1}, {"to": "c"}]}]})",
       "every split part a 'size', or none"},
      {"{" + head + R"(, "sanitize": [{"split": "a", "parts": [{"to": "b"}]}]})", "integer 'axis'"},
      {"{" + head + R"(, "sanitize": [{"transpose": "a", "axes": [0, 0]}]})", "permutation"},
      {"{" + head + R"(, "sanitize": [{"reshape": "a", "shape": ["x +"]}]})", "expression 'x +'"},
      {"{" + head + R"(, "sanitize": [{"drop": "a", "if": "shape[0"}]})", "expression 'shape[0'"},
      {"{" + head + R"(, "sanitize": [{"add": "a"}]})", "needs a 'value'"},
      {"{" + head + R"(, "quant_predicate": [{"match": "gate$", "bits": 8}]})", "give integer 'bits' and 'group_size'"},
      {"{" + head + R"(, "quant_predicate": [{"match": "gate$", "bits": 5, "group_size": 64, "mode": "mxfp4"}]})",
       "quant_predicate[0]"},
      {"{" + head + R"(, "quant_predicate": [{"match": "gate$", "quantize": true}]})", "can only be false"},
      {"{" + head + R"(, "config": [{"field": "x"}]})", "config[0]: 'from' is required"},
      {"{" + head + R"(, "aliases": ["llama"]})", ""},  // fine alone; duplicates are checked below
  };
  for (const auto& [text, expect] : cases) {
    Result<ArchTable> t = ArchTable::Parse({{"_generic.json", generic}, {"src/model/arch/t.json", text}});
    if (expect.empty()) {
      EXPECT_THAT(t, IsOk()) << text;
      continue;
    }
    EXPECT_THAT(t, StatusIs(StatusCode::kInvalidInput, HasSubstr(expect))) << text;
    if (!t.ok() && text != "not json") EXPECT_THAT(t.status().message(), HasSubstr("src/model/arch/t.json")) << text;
  }
  EXPECT_THAT(ArchTable::Parse({{"_generic.json", generic},
                                {"a.json", R"({"model_type": "a", "aliases": ["x"], "status": "verified", "mlx_lm": "-"})"},
                                {"b.json", R"({"model_type": "b", "aliases": ["x"], "status": "verified", "mlx_lm": "-"})"}}),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("model_type 'x' is already in a.json")));
  EXPECT_THAT(ArchTable::Parse({{"t.json", "{" + head + "}"}}), StatusIs(StatusCode::kInvalidInput, HasSubstr("no _generic.json")));
}

}  // namespace
}  // namespace stquant::model
