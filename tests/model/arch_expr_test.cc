#include "model/arch_expr.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "util/file_test_util.h"

namespace stquant::model {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::StatusIs;
using ::testing::HasSubstr;

const nlohmann::json kConfig = nlohmann::json::parse(R"({
  "hidden_size": 64, "num_attention_heads": 2, "tie": true, "eps": 1e-6, "name": "x",
  "rope_parameters": {"rope_theta": 10000.0}, "layer_types": ["linear_attention", "full_attention"],
  "mult": [0.5, 2]})");

nlohmann::json Eval(const std::string& text, const std::vector<int64_t>* shape = nullptr,
                    const std::vector<std::string>* groups = nullptr) {
  Result<Expr> e = Expr::Parse(text);
  EXPECT_THAT(e, IsOk()) << text;
  if (!e.ok()) return nullptr;
  ExprScope scope;
  scope.config = [](const std::string& path) { return LookupPath(kConfig, path); };
  scope.shape = shape;
  scope.groups = groups;
  Result<nlohmann::json> v = e->Evaluate(scope);
  EXPECT_THAT(v, IsOk()) << text;
  return v.ok() ? *v : nullptr;
}

TEST(ArchExprTest, ArithmeticFollowsPython) {
  EXPECT_EQ(Eval("hidden_size // num_attention_heads"), 32);
  EXPECT_EQ(Eval("7 // -2"), -4);  // floor division
  EXPECT_EQ(Eval("-7 % 3"), 2);
  EXPECT_EQ(Eval("7 / 2"), 3.5);
  EXPECT_EQ(Eval("1 + 2 * 3 - 4"), 3);
  EXPECT_EQ(Eval("(1 + 2) * 3"), 9);
  EXPECT_EQ(Eval("-7.5 // 2"), -4.0);
  EXPECT_EQ(Eval("mult[0] * mult[1]"), 1.0);
  EXPECT_EQ(Eval("1e-3 * 1000"), 1.0);
  EXPECT_EQ(Eval("rope_parameters.rope_theta"), 10000.0);
  EXPECT_EQ(Eval("'a' + 'b'"), "ab");
}

TEST(ArchExprTest, ComparisonsAndLogic) {
  EXPECT_EQ(Eval("tie and hidden_size > 32"), true);
  EXPECT_EQ(Eval("not tie or 1 == 1.0"), true);
  EXPECT_EQ(Eval("0 or 5"), 5);   // the operand, as in Python
  EXPECT_EQ(Eval("0 and missing"), 0);  // short-circuit: the missing path is not read
  EXPECT_EQ(Eval("name == 'x'"), true);
  EXPECT_EQ(Eval("name != 'y' and eps < 1"), true);
}

TEST(ArchExprTest, ShapeGroupsAndFunctions) {
  const std::vector<int64_t> shape = {128, 1, 4};
  const std::vector<std::string> groups = {"model.layers.3.", "3", "up"};
  EXPECT_EQ(Eval("ndim", &shape), 3);
  EXPECT_EQ(Eval("shape[-1] != 1 and shape[0] == 128", &shape), true);
  EXPECT_EQ(Eval("$1 >= 2", &shape, &groups), true);
  EXPECT_EQ(Eval("$2", &shape, &groups), "up");
  EXPECT_EQ(Eval("index(layer_types, 'full_attention') + 1"), 2);
  EXPECT_EQ(Eval("len(layer_types)"), 2);
}

TEST(ArchExprTest, ErrorsNameTheProblem) {
  ExprScope scope;
  scope.config = [](const std::string& path) { return LookupPath(kConfig, path); };
  auto eval = [&](const std::string& text) { return Expr::Parse(text)->Evaluate(scope); };
  EXPECT_THAT(eval("num_experts + 1"), StatusIs(StatusCode::kInvalidInput, HasSubstr("config field 'num_experts' is missing")));
  EXPECT_THAT(eval("shape[0]"), StatusIs(StatusCode::kInvalidInput, HasSubstr("'shape' outside a tensor rule")));
  EXPECT_THAT(eval("$1"), StatusIs(StatusCode::kInvalidInput, HasSubstr("$1 is not a group")));
  EXPECT_THAT(eval("1 // 0"), StatusIs(StatusCode::kInvalidInput, HasSubstr("division by zero")));
  EXPECT_THAT(eval("name * 2"), StatusIs(StatusCode::kInvalidInput, HasSubstr("needs numbers")));
  EXPECT_THAT(eval("index(layer_types, 'mamba')"), StatusIs(StatusCode::kInvalidInput, HasSubstr("is not in the list")));
  EXPECT_THAT(eval("9223372036854775807 + 1"), StatusIs(StatusCode::kInvalidInput, HasSubstr("overflow")));
  const std::vector<int64_t> shape = {4};
  scope.shape = &shape;
  EXPECT_THAT(eval("shape[1]"), StatusIs(StatusCode::kInvalidInput, HasSubstr("out of range")));
}

TEST(ArchExprTest, SyntaxErrorsAreRejectedAtParse) {
  for (const char* bad : {"", "1 +", "(1", "shape[0", "$", "a..b", "a[x]", "'open", "1 2", "len(1, 2)", "index(a)", "#"}) {
    EXPECT_THAT(Expr::Parse(bad), StatusIs(StatusCode::kInvalidInput, ::testing::_)) << bad;
  }
}

TEST(ArchExprTest, ConfigPathsAreListed) {
  Result<Expr> e = Expr::Parse("qk_nope_head_dim + v_head_dim * text_config.x[1] + len(layer_types)");
  ASSERT_THAT(e, IsOk());
  EXPECT_THAT(e->ConfigPaths(), ::testing::ElementsAre("qk_nope_head_dim", "v_head_dim", "text_config.x[1]", "layer_types"));
}

TEST(ArchExprTest, LookupPath) {
  EXPECT_EQ(*LookupPath(kConfig, "mult[1]"), 2);
  EXPECT_EQ(LookupPath(kConfig, "mult[2]"), nullptr);
  EXPECT_EQ(LookupPath(kConfig, "name.x"), nullptr);
  EXPECT_EQ(LookupPath(kConfig, "mult[99999999999999999999]"), nullptr);
}

}  // namespace
}  // namespace stquant::model
