// Reader access: Find, Read (pread), View (mmap), Prefetch, and their bounds.
#include <string>
#include <thread>
#include <vector>

#include "safetensors/st_test_util.h"

namespace stquant::safetensors {
namespace {

using ::testing::HasSubstr;
using testing::IsOk;
using testing::StatusIs;

class ReaderTest : public testing::RawFileTest {
 protected:
  void SetUp() override {
    // Data: "AAAA" for a (U8[4]), then b (U16[2]) = "bbbb", and an empty tensor e.
    auto reader = OpenHeader(R"({"b":{"dtype":"U16","shape":[2],"data_offsets":[4,8]},)"
                             R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                             R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]},)"
                             R"("__metadata__":{"format":"pt"}})",
                             "AAAAbbbb");
    ASSERT_THAT(reader, IsOk());
    reader_ = std::move(reader).value();
  }
  std::unique_ptr<Reader> reader_;
};

TEST_F(ReaderTest, Accessors) {
  EXPECT_EQ(reader_->path(), path());
  const uint64_t header_length = reader_->data_offset() - 8;
  EXPECT_EQ(reader_->file_size(), 8 + header_length + 8);
  ASSERT_TRUE(reader_->metadata().has_value());
  EXPECT_EQ(reader_->metadata()->at("format"), "pt");
  ASSERT_EQ(reader_->tensors().size(), 3u);
  EXPECT_EQ(reader_->tensors()[0].name, "a");
  EXPECT_EQ(reader_->tensors()[1].name, "b");
  EXPECT_EQ(reader_->tensors()[2].name, "e");
  EXPECT_EQ(reader_->tensors()[1].num_elements(), 2);
  EXPECT_EQ(reader_->tensors()[2].num_elements(), 0);
}

TEST_F(ReaderTest, Find) {
  const TensorInfo* b = reader_->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kU16);
  EXPECT_EQ(b->begin, 4u);
  EXPECT_EQ(reader_->Find("missing"), nullptr);
  EXPECT_EQ(reader_->Find("__metadata__"), nullptr);
}

TEST_F(ReaderTest, ReadWholeAndPart) {
  std::vector<uint8_t> buf(4);
  ASSERT_THAT(reader_->Read(*reader_->Find("b"), 0, buf), IsOk());
  EXPECT_EQ(std::string(buf.begin(), buf.end()), "bbbb");
  std::vector<uint8_t> part(2);
  ASSERT_THAT(reader_->Read(*reader_->Find("a"), 2, part), IsOk());
  EXPECT_EQ(std::string(part.begin(), part.end()), "AA");
  EXPECT_THAT(reader_->Read(*reader_->Find("e"), 0, {}), IsOk());
}

TEST_F(ReaderTest, ReadPastTensorIsRefused) {
  std::vector<uint8_t> buf(3);
  EXPECT_THAT(reader_->Read(*reader_->Find("a"), 2, buf),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor 'a': read of 3 bytes at offset 2 past its 4 bytes")));
  EXPECT_THAT(reader_->Read(*reader_->Find("a"), ~uint64_t{0}, {}), StatusIs(StatusCode::kInvalidArgument, HasSubstr("past")));
}

TEST_F(ReaderTest, ForeignTensorIsRefused) {
  TensorInfo foreign{"x", DType::kU8, {100}, 0, 100};
  std::vector<uint8_t> buf(1);
  EXPECT_THAT(reader_->Read(foreign, 0, buf),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor 'x': data_offsets [0, 100] are not inside this file")));
  EXPECT_THAT(reader_->View(foreign), StatusIs(StatusCode::kInvalidArgument, HasSubstr("not inside this file")));
}

TEST_F(ReaderTest, ViewIsZeroCopyAndStable) {
  auto a = reader_->View(*reader_->Find("a"));
  auto b = reader_->View(*reader_->Find("b"));
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(std::string(a->begin(), a->end()), "AAAA");
  EXPECT_EQ(std::string(b->begin(), b->end()), "bbbb");
  EXPECT_EQ(a->data() + 4, b->data());  // one mapping of the whole file
  auto e = reader_->View(*reader_->Find("e"));
  ASSERT_THAT(e, IsOk());
  EXPECT_TRUE(e->empty());
}

TEST_F(ReaderTest, ViewFromManyThreadsMapsOnce) {
  std::vector<const uint8_t*> seen(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < seen.size(); ++i) {
    threads.emplace_back([&, i] {
      auto view = reader_->View(*reader_->Find("b"));
      seen[i] = view.ok() ? view->data() : nullptr;
    });
  }
  for (auto& t : threads) t.join();
  for (const uint8_t* p : seen) EXPECT_EQ(p, seen[0]);
  EXPECT_NE(seen[0], nullptr);
}

TEST_F(ReaderTest, PrefetchIsHarmless) {
  for (const TensorInfo& t : reader_->tensors()) {
    reader_->Prefetch(t, 0, t.nbytes());
    reader_->Prefetch(t, t.nbytes() / 2, UINT64_MAX);  // clipped to the tensor
    reader_->Prefetch(t, t.nbytes(), 1);               // past the end: nothing
  }
  reader_->Prefetch(TensorInfo{"x", DType::kU8, {100}, 0, 100}, 0, 100);  // not this file's: refused
}

}  // namespace
}  // namespace stquant::safetensors
