#include "model/tensor_view.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "util/file_test_util.h"

namespace stquant::model {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::StatusIs;

// The source element of every view element, in row-major order of the view.
std::vector<int64_t> Elements(const TensorView& v) {
  std::vector<int64_t> out;
  const int64_t n = ElementCount(v.shape);
  for (int64_t flat = 0; flat < n; ++flat) {
    int64_t rest = flat, at = v.offset;
    for (size_t i = v.shape.size(); i-- > 0;) {
      at += (rest % v.shape[i]) * v.strides[i];
      rest /= v.shape[i];
    }
    out.push_back(at);
  }
  return out;
}

std::vector<int64_t> Iota(int64_t n, int64_t from = 0) {
  std::vector<int64_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

TEST(TensorViewTest, ContiguousViewIsRowMajor) {
  EXPECT_EQ(Elements(ContiguousView({2, 3, 4})), Iota(24));
  EXPECT_TRUE(IsContiguous(ContiguousView({2, 3, 4})));
  EXPECT_TRUE(IsContiguous(UnsqueezeView(ContiguousView({3, 4}))));
  EXPECT_EQ(Elements(ContiguousView({})), Iota(1));
}

TEST(TensorViewTest, TransposeAndSlice) {
  // [[0 1 2] [3 4 5]] transposed: 0 3 1 4 2 5.
  const TensorView t = TransposeView(ContiguousView({2, 3}), {1, 0});
  EXPECT_EQ(Elements(t), (std::vector<int64_t>{0, 3, 1, 4, 2, 5}));
  EXPECT_FALSE(IsContiguous(t));
  const TensorView s = SliceView(ContiguousView({4, 3}), 0, 1, 2);  // rows 1..2
  EXPECT_EQ(Elements(s), Iota(6, 3));
  EXPECT_TRUE(IsContiguous(s));
  EXPECT_FALSE(IsContiguous(SliceView(ContiguousView({4, 3}), 1, 1, 2)));
}

// The MLA split of DeepSeek-V3 (mlx-lm's sanitize): kv_b_proj [H * (nope + v), R] reshaped to
// [H, nope + v, R]; embed_q = [:, :nope, :] with the last two axes swapped; unembed_out = [:, nope:, :].
TEST(TensorViewTest, MlaSplitMatchesTheArrayOperations) {
  const int64_t h = 3, nope = 2, v = 4, r = 5;
  Result<TensorView> reshaped = ReshapeView(ContiguousView({h * (nope + v), r}), {h, nope + v, r});
  ASSERT_THAT(reshaped, IsOk());
  const TensorView embed_q = TransposeView(SliceView(*reshaped, 1, 0, nope), {0, 2, 1});
  const TensorView unembed_out = SliceView(*reshaped, 1, nope, v);
  std::vector<int64_t> want_q, want_out;
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t j = 0; j < r; ++j) {
      for (int64_t k = 0; k < nope; ++k) want_q.push_back((i * (nope + v) + k) * r + j);
    }
    for (int64_t k = 0; k < v; ++k) {
      for (int64_t j = 0; j < r; ++j) want_out.push_back((i * (nope + v) + nope + k) * r + j);
    }
  }
  EXPECT_EQ(Elements(embed_q), want_q);
  EXPECT_EQ(Elements(unembed_out), want_out);
}

// Reshape keeps the row-major order of the elements whenever the view allows it (numpy's rule),
// checked on random shapes against the element lists.
TEST(TensorViewTest, ReshapeKeepsElementOrder) {
  std::mt19937 rng(7);
  const std::vector<std::vector<int64_t>> factorings = {{24}, {2, 12}, {4, 6}, {2, 3, 4}, {1, 24, 1}, {6, 1, 4}, {2, 2, 2, 3}};
  for (int round = 0; round < 200; ++round) {
    // A random view of 24 elements: a contiguous tensor, maybe transposed.
    std::vector<int64_t> shape = factorings[rng() % factorings.size()];
    TensorView base = ContiguousView(shape);
    if (rng() % 2 && shape.size() >= 2) {
      std::vector<int> axes(shape.size());
      std::iota(axes.begin(), axes.end(), 0);
      std::shuffle(axes.begin(), axes.end(), rng);
      base = TransposeView(base, axes);
    }
    const std::vector<int64_t> before = Elements(base);
    const std::vector<int64_t>& target = factorings[rng() % factorings.size()];
    Result<TensorView> reshaped = ReshapeView(base, target);
    if (!reshaped.ok()) {
      EXPECT_THAT(reshaped, StatusIs(StatusCode::kUnsupported, ::testing::_));
      EXPECT_FALSE(IsContiguous(base));  // a contiguous view always reshapes
      continue;
    }
    EXPECT_EQ(reshaped->shape, target);
    EXPECT_EQ(Elements(*reshaped), before);
  }
}

TEST(TensorViewTest, ReshapeThatWouldReorderIsRefused) {
  const TensorView t = TransposeView(ContiguousView({2, 3}), {1, 0});
  EXPECT_THAT(ReshapeView(t, {6}), StatusIs(StatusCode::kUnsupported, ::testing::_));
  EXPECT_THAT(ReshapeView(ContiguousView({2, 3}), {7}), StatusIs(StatusCode::kInvalidArgument, ::testing::_));
}

}  // namespace
}  // namespace stquant::model
