#include "model/sanitize.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/tensor_view.h"
#include "util/file_test_util.h"

namespace stquant::model {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const char kGeneric[] = R"({"model_type": "_generic", "status": "verified", "mlx_lm": "-"})";

// An entry "t" with these sanitize rules (a JSON list).
ArchEntry Entry(const std::string& rules, const std::string& extra = "") {
  Result<ArchTable> table = ArchTable::Parse(
      {{"_generic.json", kGeneric},
       {"t.json", R"({"model_type": "t", "status": "verified", "mlx_lm": "-", "sanitize": )" + rules + extra + "}"}});
  EXPECT_THAT(table, IsOk());
  return table.ok() ? table->entries().front() : ArchEntry{};
}

std::vector<std::string> Names(const std::vector<RuleTensor>& tensors) {
  std::vector<std::string> out;
  for (const RuleTensor& t : tensors) out.push_back(t.name);
  return out;
}

const RuleTensor& Find(const std::vector<RuleTensor>& tensors, const std::string& name) {
  for (const RuleTensor& t : tensors) {
    if (t.name == name) return t;
  }
  static const RuleTensor none;
  ADD_FAILURE() << "no tensor " << name;
  return none;
}

TEST(SanitizeTest, DropRenameWithConditions) {
  const ArchEntry e = Entry(R"([
    {"drop": "rotary_emb\\.inv_freq"},
    {"drop": "^lm_head\\.weight$", "if": "tie_word_embeddings"},
    {"drop": "^model\\.layers\\.(\\d+)\\.", "if": "$1 >= num_hidden_layers"},
    {"rename": "^transformer\\.", "to": "model."}])",
                            R"(, "args_defaults": {"tie_word_embeddings": true})");
  const std::vector<SourceHeader> sources = {{"lm_head.weight", DType::kBF16, {8, 4}},
                                             {"model.layers.0.rotary_emb.inv_freq", DType::kF32, {2}},
                                             {"model.layers.1.mlp.weight", DType::kBF16, {4, 4}},
                                             {"model.layers.2.mlp.weight", DType::kBF16, {4, 4}},
                                             {"transformer.wte.weight", DType::kBF16, {8, 4}}};
  auto out = ApplySanitize(e, {{"num_hidden_layers", 2}}, sources);
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(Names(*out), ElementsAre("model.layers.1.mlp.weight", "model.wte.weight"));
  EXPECT_THAT(Find(*out, "model.wte.weight").steps, ElementsAre("rename 'transformer.wte.weight'"));
  // The config value wins over the entry's default.
  out = ApplySanitize(e, {{"num_hidden_layers", 2}, {"tie_word_embeddings", false}}, sources);
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ(Names(*out).front(), "lm_head.weight");
}

TEST(SanitizeTest, StackExperts) {
  const ArchEntry e = Entry(R"([{"stack": "\\.experts\\.(\\d+)\\.w1\\.weight$", "to": ".switch_mlp.gate_proj.weight",
                                "count": "num_local_experts"}])");
  std::vector<SourceHeader> sources;
  for (int i = 2; i >= 0; --i) sources.push_back({"m.experts." + std::to_string(i) + ".w1.weight", DType::kBF16, {4, 8}});
  auto out = ApplySanitize(e, {{"num_local_experts", 3}}, sources);
  ASSERT_THAT(out, IsOk());
  ASSERT_EQ(out->size(), 1u);
  const RuleTensor& t = out->front();
  EXPECT_EQ(t.name, "m.switch_mlp.gate_proj.weight");
  EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 4, 8}));
  ASSERT_EQ(t.pieces.size(), 3u);
  EXPECT_EQ(t.pieces[1].tensor, "m.experts.1.w1.weight");
  EXPECT_EQ(t.pieces[1].view.shape, (std::vector<int64_t>{1, 4, 8}));
  EXPECT_THAT(ApplySanitize(e, {{"num_local_experts", 4}}, sources),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("stacks 3 experts but the config declares 4")));
  sources.erase(sources.begin() + 1);  // expert 1
  EXPECT_THAT(ApplySanitize(e, {{"num_local_experts", 3}}, sources),
              StatusIs(StatusCode::kInvalidInput,
                       AllOf(HasSubstr("t.json sanitize[0] (stack"), HasSubstr("not numbered 0..1 (expert 1 missing)"))));
}

TEST(SanitizeTest, SplitReshapeTransposeComposeIntoViews) {
  // DeepSeek-V3's MLA split, as deepseek_v3.json writes it.
  const ArchEntry e = Entry(R"([
    {"reshape": "kv_b_proj\\.weight$", "shape": ["num_attention_heads", "qk_nope_head_dim + v_head_dim", -1]},
    {"split": "kv_b_proj\\.weight$", "axis": 1, "parts": [{"to": "embed_q.weight", "size": "qk_nope_head_dim"},
                                                         {"to": "unembed_out.weight", "size": "v_head_dim"}]},
    {"transpose": "embed_q\\.weight$", "axes": [0, 2, 1]}])");
  const nlohmann::json config = {{"num_attention_heads", 2}, {"qk_nope_head_dim", 3}, {"v_head_dim", 4}};
  auto out = ApplySanitize(e, config, {{"a.kv_b_proj.weight", DType::kBF16, {14, 5}}});
  ASSERT_THAT(out, IsOk());
  const RuleTensor& q = Find(*out, "a.embed_q.weight");
  EXPECT_EQ(q.shape, (std::vector<int64_t>{2, 5, 3}));
  EXPECT_EQ(q.pieces.front().view.offset, 0);
  EXPECT_EQ(q.pieces.front().view.strides, (std::vector<int64_t>{35, 1, 5}));
  const RuleTensor& o = Find(*out, "a.unembed_out.weight");
  EXPECT_EQ(o.shape, (std::vector<int64_t>{2, 4, 5}));
  EXPECT_EQ(o.pieces.front().view.offset, 15);
  EXPECT_THAT(q.steps, ElementsAre("reshape (2, 7, 5)", "split axis 1 [0:3] of 'a.kv_b_proj.weight'", "transpose (0, 2, 1)"));
  // A config that does not fit the tensor.
  EXPECT_THAT(ApplySanitize(e, config, {{"a.kv_b_proj.weight", DType::kBF16, {15, 5}}}),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("cannot be reshaped to [2, 7, -1]")));
}

TEST(SanitizeTest, ReshapeToAScalar) {
  // apertus: alpha_p.squeeze() of a [1] tensor.
  const ArchEntry e = Entry(R"([{"reshape": "alpha_p$", "shape": []}])");
  auto out = ApplySanitize(e, {}, {{"m.alpha_p", DType::kBF16, {1}}});
  ASSERT_THAT(out, IsOk());
  EXPECT_TRUE(out->front().shape.empty());
  EXPECT_THAT(ApplySanitize(e, {}, {{"m.alpha_p", DType::kBF16, {2}}}),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("[2] cannot be reshaped to []")));
}

TEST(SanitizeTest, ShapeConditionsAndValueOps) {
  const ArchEntry e = Entry(R"([
    {"transpose": "conv1d\\.weight", "if": "shape[-1] != 1", "axes": [0, 2, 1]},
    {"add": "norm\\.weight$", "value": 1.0, "if": "ndim == 1"},
    {"multiply": "norm\\.weight$", "value": "scale * 2"}])");
  auto out = ApplySanitize(e, {{"scale", 0.25}}, {{"a.conv1d.weight", DType::kBF16, {8, 1, 4}},
                                                  {"b.conv1d.weight", DType::kBF16, {8, 4, 1}},
                                                  {"c.norm.weight", DType::kBF16, {8}}});
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ(Find(*out, "a.conv1d.weight").shape, (std::vector<int64_t>{8, 4, 1}));
  EXPECT_EQ(Find(*out, "b.conv1d.weight").shape, (std::vector<int64_t>{8, 4, 1}));
  EXPECT_TRUE(IsContiguous(Find(*out, "b.conv1d.weight").pieces.front().view));
  const RuleTensor& norm = Find(*out, "c.norm.weight");
  ASSERT_EQ(norm.value_ops.size(), 2u);
  EXPECT_EQ(norm.value_ops[0].kind, ValueOp::Kind::kAdd);
  EXPECT_EQ(norm.value_ops[1].value, 0.5);
  EXPECT_THAT(ApplySanitize(e, {}, {{"c.norm.weight", DType::kI32, {8}}}),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("an elementwise op on a I32 tensor")));
}

TEST(SanitizeTest, IfPresentLooksAtTheSetBeforeTheRule) {
  const ArchEntry e = Entry(R"([{"drop": "^lm_head\\.weight$", "if_present": "\\.experts\\.0\\."}])");
  auto dense = ApplySanitize(e, {}, {{"lm_head.weight", DType::kBF16, {2, 2}}});
  ASSERT_THAT(dense, IsOk());
  EXPECT_EQ(dense->size(), 1u);
  auto moe = ApplySanitize(e, {}, {{"lm_head.weight", DType::kBF16, {2, 2}}, {"m.experts.0.w", DType::kBF16, {2, 2}}});
  ASSERT_THAT(moe, IsOk());
  EXPECT_THAT(Names(*moe), ElementsAre("m.experts.0.w"));
}

TEST(SanitizeTest, StackedTensorsKeepTheirExpertAxis) {
  const ArchEntry e = Entry(R"([
    {"stack": "\\.experts\\.(\\d+)\\.w$", "to": ".w"},
    {"split": "\\.w$", "axis": -2, "parts": [{"to": ".gate"}, {"to": ".up"}]},
    {"transpose": "\\.up$", "axes": [0, 2, 1]},
    {"transpose": "\\.gate$", "axes": [1, 0, 2]}])");
  std::vector<SourceHeader> sources = {{"m.experts.0.w", DType::kBF16, {4, 3}}, {"m.experts.1.w", DType::kBF16, {4, 3}}};
  EXPECT_THAT(ApplySanitize(e, {}, sources),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("a transpose of stacked experts must keep the expert axis")));
  const ArchEntry ok = Entry(R"([
    {"stack": "\\.experts\\.(\\d+)\\.w$", "to": ".w"},
    {"split": "\\.w$", "axis": -2, "parts": [{"to": ".gate"}, {"to": ".up"}]},
    {"transpose": "\\.up$", "axes": [0, 2, 1]}])");
  auto out = ApplySanitize(ok, {}, sources);
  ASSERT_THAT(out, IsOk());
  const RuleTensor& up = Find(*out, "m.up");
  EXPECT_EQ(up.shape, (std::vector<int64_t>{2, 3, 2}));
  EXPECT_EQ(up.pieces[1].tensor, "m.experts.1.w");
  EXPECT_EQ(up.pieces[1].view.offset, 6);
  EXPECT_EQ(up.pieces[1].view.shape, (std::vector<int64_t>{1, 3, 2}));
  EXPECT_EQ(up.pieces[1].view.strides, (std::vector<int64_t>{12, 1, 3}));
}

TEST(SanitizeTest, ConfigFields) {
  Result<ArchTable> table = ArchTable::Parse(
      {{"_generic.json", kGeneric},
       {"t.json", R"({"model_type": "t", "status": "verified", "mlx_lm": "-", "config": [
          {"field": "n_ctx", "from": "n_positions"},
          {"field": "full_attention_interval", "from": ["interval", "index(layer_types, 'full_attention') + 1"]},
          {"field": "never", "from": "absent"}]})"}});
  ASSERT_THAT(table, IsOk());
  nlohmann::json config = {{"n_positions", 256}, {"n_ctx", 1}, {"layer_types", {"linear", "linear", "full_attention"}}};
  AddConfigFields(table->entries().front(), config);
  EXPECT_EQ(config["n_ctx"], 1);  // present: kept
  EXPECT_EQ(config["full_attention_interval"], 3);
  EXPECT_FALSE(config.contains("never"));
}

}  // namespace
}  // namespace stquant::model
