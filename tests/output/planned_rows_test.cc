// The executor of planned tensors (output/planned_rows.h) against a plain reference: every output
// element is looked up through its view (offset + index . strides), FP8-decoded element by
// element, value ops applied one element at a time, and compared with what CopyRows and
// QuantizeRowSource write through PlannedRows (whole-row blocks, parts of rows, tiles of
// transposed views), on several threads.
#include "output/planned_rows.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "model/inventory.h"
#include "model/tensor_view.h"
#include "numeric/bf16.h"
#include "numeric/f16.h"
#include "numeric/fp8.h"
#include "stquant/quantize.h"
#include "stquant/safetensors.h"
#include "util/file_test_util.h"

namespace stquant::output {
namespace {

using ::stquant::testing::IsOk;
using model::ElementCount;

struct SourceTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Random bf16 values in [-2, 2]; E4M3 codes other than NaN; F32 scales in [0.5, 2).
SourceTensor Random(const std::string& name, DType dtype, std::vector<int64_t> shape, std::mt19937& rng) {
  SourceTensor t{name, dtype, shape, {}};
  const int64_t n = ElementCount(shape);
  std::uniform_real_distribution<float> value(-2.0f, 2.0f), scale(0.5f, 2.0f);
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == DType::kBF16) {
      const uint16_t b = numeric::BF16FromFloat(value(rng));
      t.bytes.push_back(b & 0xFF);
      t.bytes.push_back(b >> 8);
    } else if (dtype == DType::kF8E4M3) {
      uint8_t code = static_cast<uint8_t>(rng());
      if ((code & 0x7F) == 0x7F) code &= 0xF0;
      t.bytes.push_back(code);
    } else {
      const float f = scale(rng);
      const auto* p = reinterpret_cast<const uint8_t*>(&f);
      t.bytes.insert(t.bytes.end(), p, p + 4);
    }
  }
  return t;
}

class PlannedRowsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(11);
    sources_ = {Random("w", DType::kBF16, {2100, 96}, rng),
                Random("e0", DType::kBF16, {40, 70}, rng),
                Random("e1", DType::kBF16, {40, 70}, rng),
                Random("f", DType::kF8E4M3, {384, 260}, rng),
                Random("f_scale_inv", DType::kF32, {3, 3}, rng),
                Random("x", DType::kF8E4M3, {2, 130, 600}, rng),
                Random("x_scale_inv", DType::kF32, {2, 2, 5}, rng)};
    std::vector<safetensors::TensorDecl> decls;
    for (const SourceTensor& s : sources_) decls.push_back({s.name, s.dtype, s.shape});
    auto writer = safetensors::Writer::Create(dir_.File("in.safetensors"), decls);
    ASSERT_THAT(writer, IsOk());
    for (size_t i = 0; i < sources_.size(); ++i) ASSERT_THAT((*writer)->WriteTensorData(i, 0, sources_[i].bytes), IsOk());
    ASSERT_THAT((*writer)->Commit(), IsOk());
    auto inv = model::Inventory::OpenFile(dir_.File("in.safetensors"));
    ASSERT_THAT(inv, IsOk());
    inventory_ = std::make_unique<model::Inventory>(std::move(*inv));
  }

  const SourceTensor& Source(const std::string& name) const {
    for (const SourceTensor& s : sources_) {
      if (s.name == name) return s;
    }
    ADD_FAILURE() << name;
    return sources_.front();
  }

  // Source element `at` as the executor's working value: bf16, or decoded FP8 (bf16 of the
  // float32 product of the E4M3 value and its block's scale).
  float SourceValue(const PlannedSource& piece, int64_t at) const {
    const SourceTensor& s = Source(piece.tensor);
    if (s.dtype == DType::kBF16) return numeric::BF16ToFloat(s.bytes[2 * at] | s.bytes[2 * at + 1] << 8);
    const SourceTensor& sc = Source(piece.fp8_scale);
    const int64_t cols = s.shape.back(), rows = s.shape[s.shape.size() - 2];
    const int64_t row = at / cols, col = at % cols, expert = row / rows;
    const int64_t scale_cols = (cols + 127) / 128, scale_rows = (rows + 127) / 128;
    const int64_t si = (expert * scale_rows + (row % rows) / 128) * scale_cols + col / 128;
    float scale;
    std::memcpy(&scale, &sc.bytes[4 * si], 4);
    return numeric::RoundToBF16(numeric::E4M3FnToFloat(s.bytes[at]) * scale);
  }

  // The planned tensor's values, element by element, as floats of t.dtype.
  std::vector<float> Reference(const PlannedTensor& t) const {
    std::vector<float> out;
    for (const PlannedSource& piece : t.sources) {
      const TensorView& v = piece.view;
      for (int64_t flat = 0; flat < ElementCount(v.shape); ++flat) {
        int64_t rest = flat, at = v.offset;
        for (size_t i = v.shape.size(); i-- > 0;) {
          at += (rest % v.shape[i]) * v.strides[i];
          rest /= v.shape[i];
        }
        float x = SourceValue(piece, at);
        for (const ValueOp& op : t.value_ops) {
          const float c = numeric::RoundToBF16(static_cast<float>(op.value));
          x = numeric::RoundToBF16(op.kind == ValueOp::Kind::kAdd ? x + c : x * c);
        }
        out.push_back(t.dtype == DType::kF16 ? numeric::F16ToFloat(numeric::F16FromFloat(x)) : x);
      }
    }
    return out;
  }

  // PlannedRows -> CopyRows into a file; the values read back.
  std::vector<float> Copied(const PlannedTensor& t, int threads) {
    const std::string path = dir_.File("out-" + std::to_string(counter_++) + ".safetensors");
    auto writer = safetensors::Writer::Create(path, {{"t", t.dtype, t.shape}});
    EXPECT_THAT(writer, IsOk());
    const RowSource rows = PlannedRows(*inventory_, t, QuantProfile::kMlxCpu);
    EXPECT_THAT(CopyRows(rows, WriteTarget{writer->get(), 0}, threads), IsOk());
    EXPECT_THAT((*writer)->Commit(), IsOk());
    auto reader = safetensors::Reader::Open(path);
    std::vector<uint8_t> bytes((*reader)->tensors().front().nbytes());
    EXPECT_THAT((*reader)->Read((*reader)->tensors().front(), 0, bytes), IsOk());
    std::vector<float> out;
    for (size_t i = 0; i < bytes.size(); i += 2) {
      const uint16_t b = bytes[i] | bytes[i + 1] << 8;
      out.push_back(t.dtype == DType::kF16 ? numeric::F16ToFloat(b) : numeric::BF16ToFloat(b));
    }
    return out;
  }

  PlannedTensor Tensor(std::vector<PlannedSource> sources, std::vector<int64_t> shape, DType source_dtype,
                       DType dtype = DType::kBF16) {
    PlannedTensor t;
    t.name = "t";
    t.sources = std::move(sources);
    t.shape = std::move(shape);
    t.source_dtype = source_dtype;
    t.dtype = dtype;
    t.transform = source_dtype == DType::kF8E4M3 ? TensorTransform::kDecodeFp8
                  : dtype != source_dtype       ? TensorTransform::kCast
                                                : TensorTransform::kCopy;
    return t;
  }

  ::stquant::testing::ScratchDir dir_;
  std::vector<SourceTensor> sources_;
  std::unique_ptr<model::Inventory> inventory_;
  int counter_ = 0;
};

TEST_F(PlannedRowsTest, TransposedViewInTiles) {
  // [2100, 96] transposed: 96 rows of 2100 columns, more than a tile wide.
  const PlannedTensor t = Tensor({{"w", "", model::TransposeView(ContiguousView({2100, 96}), {1, 0})}}, {96, 2100}, DType::kBF16);
  EXPECT_EQ(PlannedRows(*inventory_, t, QuantProfile::kMlxCpu).tile_cols, 1024);
  const std::vector<float> want = Reference(t);
  EXPECT_EQ(Copied(t, 1), want);
  EXPECT_EQ(Copied(t, 3), want);
}

TEST_F(PlannedRowsTest, StackedSlicesWithValueOpsAndCast) {
  // Two experts [40, 70] stacked, columns 10..59 of each, + 1.0 then * 0.3 in bf16, cast to F16.
  std::vector<PlannedSource> pieces;
  for (const char* name : {"e0", "e1"}) {
    pieces.push_back({name, "", model::SliceView(model::UnsqueezeView(ContiguousView({40, 70})), 2, 10, 50)});
  }
  PlannedTensor t = Tensor(pieces, {2, 40, 50}, DType::kBF16, DType::kF16);
  t.value_ops = {{ValueOp::Kind::kAdd, 1.0}, {ValueOp::Kind::kMultiply, 0.3}};
  EXPECT_EQ(Copied(t, 2), Reference(t));
}

TEST_F(PlannedRowsTest, Fp8DecodeMeetsTheMlaSplit) {
  // DeepSeek-V3's embed_q of an FP8 kv_b_proj: [384, 260] -> [2, 192, 260], rows 0..99 of each
  // head, last two axes swapped: every column a run across 128x128 scale blocks.
  auto reshaped = model::ReshapeView(ContiguousView({384, 260}), {2, 192, 260});
  ASSERT_THAT(reshaped, IsOk());
  const TensorView q = model::TransposeView(model::SliceView(*reshaped, 1, 0, 100), {0, 2, 1});
  const PlannedTensor embed_q = Tensor({{"f", "f_scale_inv", q}}, {2, 260, 100}, DType::kF8E4M3);
  EXPECT_EQ(Copied(embed_q, 2), Reference(embed_q));
  const PlannedTensor unembed = Tensor({{"f", "f_scale_inv", model::SliceView(*reshaped, 1, 100, 92)}}, {2, 92, 260},
                                       DType::kF8E4M3);
  EXPECT_EQ(Copied(unembed, 2), Reference(unembed));
}

TEST_F(PlannedRowsTest, Fp8ThreeDimensionalExpertsTransposed) {
  // Pre-stacked FP8 experts [2, 130, 600] (a scale matrix per expert), each transposed.
  const PlannedTensor t =
      Tensor({{"x", "x_scale_inv", model::TransposeView(ContiguousView({2, 130, 600}), {0, 2, 1})}}, {2, 600, 130}, DType::kF8E4M3);
  EXPECT_EQ(Copied(t, 2), Reference(t));
  const PlannedTensor plain = Tensor({{"x", "x_scale_inv", ContiguousView({2, 130, 600})}}, {2, 130, 600}, DType::kF8E4M3);
  EXPECT_EQ(Copied(plain, 2), Reference(plain));
}

// Quantizing tiles writes each row's words and scales at its place: the same bytes as quantizing
// the reference matrix whole.
TEST_F(PlannedRowsTest, QuantizedTilesEqualTheWholeMatrix) {
  const PlannedTensor t = Tensor({{"w", "", model::TransposeView(ContiguousView({2100, 96}), {1, 0})}}, {96, 2048}, DType::kBF16);
  PlannedTensor cut = t;
  cut.sources[0].view = model::SliceView(t.sources[0].view, 1, 0, 2048);
  for (const QuantSpec spec : {QuantSpec{QuantMode::kAffine, 4, 64, false, QuantProfile::kMlxCpu},
                               QuantSpec{QuantMode::kNvfp4, 4, 16, false, QuantProfile::kMlxCpu}}) {
    const std::vector<float> values = Reference(cut);
    std::vector<uint16_t> bf16;
    for (float v : values) bf16.push_back(numeric::BF16FromFloat(v));
    const int64_t rows = 96, cols = 2048;
    std::vector<uint32_t> want_packed(rows * PackedWordsPerRow(spec, cols));
    const int scale_bytes = spec.mode == QuantMode::kAffine ? 2 : 1;
    std::vector<uint8_t> want_scales(rows * GroupsPerRow(spec, cols) * scale_bytes), want_biases(want_scales.size());
    ASSERT_THAT(QuantizeRows(spec, DType::kBF16, bf16.data(), rows, cols, 0.0f,
                             {want_packed.data(), want_scales.data(), spec.mode == QuantMode::kAffine ? want_biases.data() : nullptr}),
                IsOk());
    const std::string path = dir_.File("q-" + std::to_string(counter_++) + ".safetensors");
    std::vector<safetensors::TensorDecl> decls = {{"p", DType::kU32, {rows, PackedWordsPerRow(spec, cols)}},
                                                  {"s", ScaleDType(spec, DType::kBF16), {rows, GroupsPerRow(spec, cols)}}};
    if (spec.mode == QuantMode::kAffine) decls.push_back({"b", DType::kBF16, {rows, GroupsPerRow(spec, cols)}});
    auto writer = safetensors::Writer::Create(path, decls);
    ASSERT_THAT(writer, IsOk());
    QuantizedTargets targets{{writer->get(), 0}, {writer->get(), 1}, std::nullopt};
    if (spec.mode == QuantMode::kAffine) targets.biases = WriteTarget{writer->get(), 2};
    const RowSource source = PlannedRows(*inventory_, cut, QuantProfile::kMlxCpu);
    ASSERT_THAT(QuantizeRowSource(source, spec, 0.0f, targets, 3), IsOk());
    ASSERT_THAT((*writer)->Commit(), IsOk());
    auto reader = safetensors::Reader::Open(path);
    auto read = [&](const char* name) {
      const safetensors::TensorInfo* info = (*reader)->Find(name);
      std::vector<uint8_t> bytes(info->nbytes());
      EXPECT_THAT((*reader)->Read(*info, 0, bytes), IsOk());
      return bytes;
    };
    const std::vector<uint8_t> packed = read("p");
    EXPECT_EQ(0, std::memcmp(packed.data(), want_packed.data(), packed.size()));
    EXPECT_EQ(read("s"), want_scales);
    if (spec.mode == QuantMode::kAffine) EXPECT_EQ(read("b"), want_biases);
  }
}

TEST(ApplyValueOpsTest, ScalarRoundedToTheDtypeFirst) {
  // bf16 1.0 * 0.1: MLX rounds 0.1 to bf16 (0.10009765625) before multiplying.
  const uint16_t one = numeric::BF16FromFloat(1.0f);
  uint16_t out = 0;
  const ValueOp op{ValueOp::Kind::kMultiply, 0.1};
  ApplyValueOps({&op, 1}, DType::kBF16, DType::kBF16, reinterpret_cast<const uint8_t*>(&one),
                reinterpret_cast<uint8_t*>(&out), 1);
  EXPECT_EQ(numeric::BF16ToFloat(out), 0.10009765625f);
  float f32_out = 0;
  const float f32_one = 1.0f;
  ApplyValueOps({&op, 1}, DType::kF32, DType::kF32, reinterpret_cast<const uint8_t*>(&f32_one),
                reinterpret_cast<uint8_t*>(&f32_out), 1);
  EXPECT_EQ(f32_out, 0.1f);
}

}  // namespace
}  // namespace stquant::output
