// WriteRows (output/tensor_stream.h), several outputs from one read: every element of the source
// is read exactly once whatever the destinations, and each destination gets the bytes that
// CopyRows / QuantizeRowSource give it alone.
#include "output/tensor_stream.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
#include <random>

#include "numeric/bf16.h"
#include "stquant/safetensors.h"
#include "util/file_test_util.h"

namespace stquant::output {
namespace {

using ::stquant::testing::IsOk;
using ::stquant::testing::ScratchDir;

constexpr int64_t kRows = 700, kCols = 768;

// A bf16 tensor in memory whose every read is counted per element.
class CountedSource {
 public:
  CountedSource() : reads_(new std::atomic<int>[kRows * kCols]) {
    std::mt19937 rng(5);
    std::normal_distribution<float> value(0.0f, 0.05f);
    for (int64_t i = 0; i < kRows * kCols; ++i) {
      values_.push_back(numeric::BF16FromFloat(value(rng)));
      reads_[i] = 0;
    }
  }

  RowSource Rows() {
    RowSource source;
    source.name = "t";
    source.dtype = DType::kBF16;
    SetRowShape(source, std::vector<int64_t>{kRows, kCols}, 1);
    source.rows_per_piece = kRows;
    source.read = [this](const RowBlock& block, uint8_t* out) -> Status {
      auto* dst = reinterpret_cast<uint16_t*>(out);
      for (int64_t r = 0; r < block.count; ++r) {
        for (int64_t c = 0; c < block.cols; ++c) {
          const int64_t i = (block.first + r) * kCols + block.col + c;
          ++reads_[i];
          *dst++ = values_[i];
        }
      }
      return Status::Ok();
    };
    return source;
  }

  // How many elements were read `n` times.
  int64_t ReadTimes(int n) const {
    int64_t count = 0;
    for (int64_t i = 0; i < kRows * kCols; ++i) count += reads_[i] == n;
    return count;
  }

 private:
  std::vector<uint16_t> values_;
  std::unique_ptr<std::atomic<int>[]> reads_;
};

std::vector<int64_t> FieldShape(int64_t cols) { return {kRows, cols}; }

// The output tensors of one destination: "<prefix>" (copy or packed), ".scales", ".biases".
std::vector<safetensors::TensorDecl> Decls(const std::string& prefix, const std::optional<QuantSpec>& spec) {
  if (!spec) return {{prefix, DType::kBF16, FieldShape(kCols)}};
  std::vector<safetensors::TensorDecl> decls = {
      {prefix, DType::kU32, FieldShape(PackedWordsPerRow(*spec, kCols))},
      {prefix + ".scales", ScaleDType(*spec, DType::kBF16), FieldShape(GroupsPerRow(*spec, kCols))}};
  if (ModeInfo(spec->mode).has_biases) decls.push_back({prefix + ".biases", DType::kBF16, FieldShape(GroupsPerRow(*spec, kCols))});
  return decls;
}

RowDestination Destination(safetensors::Writer* writer, const std::string& prefix, const std::optional<QuantSpec>& spec) {
  auto target = [&](const std::string& name) { return WriteTarget{writer, *writer->IndexOf(name)}; };
  RowDestination d;
  if (!spec) {
    d.copy = target(prefix);
    return d;
  }
  d.spec = spec;
  d.quantized = {target(prefix), target(prefix + ".scales"), std::nullopt};
  if (ModeInfo(spec->mode).has_biases) d.quantized.biases = target(prefix + ".biases");
  return d;
}

std::map<std::string, std::vector<uint8_t>> ReadAll(const std::string& path) {
  auto reader = safetensors::Reader::Open(path);
  EXPECT_THAT(reader, IsOk());
  std::map<std::string, std::vector<uint8_t>> out;
  for (const safetensors::TensorInfo& t : (*reader)->tensors()) {
    std::vector<uint8_t> bytes(t.nbytes());
    EXPECT_THAT((*reader)->Read(t, 0, bytes), IsOk());
    out[t.name] = std::move(bytes);
  }
  return out;
}

TEST(WriteRowsTest, EveryElementIsReadOnceAndEachOutputEqualsItsOwnRun) {
  const std::vector<std::pair<std::string, std::optional<QuantSpec>>> outputs = {
      {"copy", std::nullopt},
      {"int4", *ParseQuantType("int4")},
      {"nvfp4", *ParseQuantType("nvfp4")},
      {"mxfp8", *ParseQuantType("mxfp8")},
      {"int3_g128", QuantSpec{QuantMode::kAffine, 3, 128}}};
  ScratchDir dir;
  for (int threads : {1, 3}) {
    // All outputs from one read.
    std::vector<safetensors::TensorDecl> decls;
    for (const auto& [prefix, spec] : outputs) {
      for (auto& d : Decls(prefix, spec)) decls.push_back(d);
    }
    const std::string together = dir.File("together-" + std::to_string(threads) + ".safetensors");
    auto writer = safetensors::Writer::Create(together, decls);
    ASSERT_THAT(writer, IsOk());
    std::vector<RowDestination> destinations;
    for (const auto& [prefix, spec] : outputs) destinations.push_back(Destination(writer->get(), prefix, spec));
    CountedSource source;
    ASSERT_THAT(WriteRows(source.Rows(), destinations, threads), IsOk());
    ASSERT_THAT((*writer)->Commit(), IsOk());
    EXPECT_EQ(source.ReadTimes(1), kRows * kCols) << threads << " threads";
    const auto got = ReadAll(together);

    // Each output on its own.
    for (const auto& [prefix, spec] : outputs) {
      const std::string alone = dir.File(prefix + "-" + std::to_string(threads) + ".safetensors");
      auto one = safetensors::Writer::Create(alone, Decls(prefix, spec));
      ASSERT_THAT(one, IsOk());
      const RowDestination d = Destination(one->get(), prefix, spec);
      CountedSource fresh;
      if (spec) {
        ASSERT_THAT(QuantizeRowSource(fresh.Rows(), *spec, 0.0f, d.quantized, threads), IsOk());
      } else {
        ASSERT_THAT(CopyRows(fresh.Rows(), d.copy, threads), IsOk());
      }
      ASSERT_THAT((*one)->Commit(), IsOk());
      for (const auto& [name, bytes] : ReadAll(alone)) EXPECT_EQ(got.at(name), bytes) << name << ", " << threads << " threads";
    }
  }
}

}  // namespace
}  // namespace stquant::output
