// One test per validation rule of the reader (docs/safetensors.md), each on a raw file that
// breaks exactly that rule, checking the rule's own message.
#include <sys/stat.h>

#include <string>

#include "safetensors/st_test_util.h"

namespace stquant::safetensors {
namespace {

using ::testing::HasSubstr;
using testing::RawFile;
using testing::RawFileTest;
using testing::IsOk;
using testing::StatusIs;

// A valid entry for tensor `name` with `body` spliced in, e.g. Entry("a", R"("dtype":"F32",...)").
std::string Header(const std::string& entries) { return "{" + entries + "}"; }

constexpr char kGood[] = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

class HeaderRulesTest : public RawFileTest {};

// --- the file around the header ---

TEST_F(HeaderRulesTest, FileShorterThanEightBytes) {
  ExpectInvalid("12345", "file is 5 bytes, shorter than the 8-byte header length (empty or truncated file?)");
}

TEST_F(HeaderRulesTest, EmptyFile) { ExpectInvalid("", "file is 0 bytes, shorter than the 8-byte header length"); }

TEST_F(HeaderRulesTest, HeaderLengthZero) {
  ExpectInvalid(testing::LengthPrefix(0) + "{}", "header length is 0 (not a safetensors file?)");
}

TEST_F(HeaderRulesTest, HeaderLengthOverLimit) {
  ExpectInvalid(testing::LengthPrefix(kMaxHeaderBytes + 1) + "{}",
                "header length 100000001 exceeds the limit of 100000000 bytes");
}

TEST_F(HeaderRulesTest, HeaderLengthPastEndOfFile) {
  ExpectInvalid(testing::LengthPrefix(50) + "{\"a\":1}",
                "header length 50 past end of file: only 7 bytes follow the 8-byte length "
                "(incomplete download or corrupt file?)");
}

TEST_F(HeaderRulesTest, HeaderLengthHugeDoesNotWrap) {
  // 2^64 - 1: adding 8 to it would wrap to 7 and look "inside" the file.
  ExpectInvalid(testing::LengthPrefix(~uint64_t{0}) + "{}", "header length 18446744073709551615 exceeds the limit");
}

TEST_F(HeaderRulesTest, NotARegularFile) {
  const auto result = Reader::Open(dir_.path());
  EXPECT_THAT(result, StatusIs(StatusCode::kInvalidInput, "'" + dir_.path() + "': not a regular file (a directory)"));
}

TEST_F(HeaderRulesTest, FifoIsRefusedWithoutBlocking) {
  // Opening a FIFO for reading blocks until a writer appears: it must be refused before that.
  ASSERT_EQ(::mkfifo(dir_.File("fifo.safetensors").c_str(), 0600), 0);
  EXPECT_THAT(Reader::Open(dir_.File("fifo.safetensors")),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("fifo.safetensors': not a regular file (a FIFO)")));
}

TEST_F(HeaderRulesTest, MissingFileIsBadInput) {
  const auto result = Reader::Open(dir_.File("absent.safetensors"));
  EXPECT_THAT(result, StatusIs(StatusCode::kInvalidInput,
                               "'" + dir_.File("absent.safetensors") + "': no such file or directory"));
}

// --- the header as text ---

TEST_F(HeaderRulesTest, InvalidUtf8) {
  ExpectInvalidHeader("{\"a\xff\":1}", "", "header is not valid UTF-8 (byte 0xff at offset 3)");
}

TEST_F(HeaderRulesTest, OverlongUtf8) {
  // 0xC0 0xAF is an overlong '/', which lenient decoders accept.
  ExpectInvalidHeader("{\"\xC0\xAF\":1}", "", "header is not valid UTF-8 (byte 0xc0 at offset 2)");
}

TEST_F(HeaderRulesTest, InvalidJson) {
  ExpectInvalidHeader("{\"a\":", "", "header is not valid JSON: parse error at line 1, column 6");
}

TEST_F(HeaderRulesTest, TrailingGarbageAfterJson) {
  ExpectInvalidHeader(Header(kGood) + "x", std::string(8, '\0'), "header is not valid JSON");
}

TEST_F(HeaderRulesTest, NestedDeeperThanTheJsonLimit) {
  // A valid header nests 3 levels; 64 are allowed, and a 65th stops the parse before a hostile
  // header of 100 MB of '[' builds gigabytes of DOM.
  ExpectInvalidHeader("{\"__metadata__\":" + std::string(62, '[') + std::string(62, ']') + "}", "",
                      "__metadata__ is not an object of strings");
  ExpectInvalidHeader("{\"a\":" + std::string(63, '[') + std::string(63, ']') + "}", "",
                      "tensor 'a': entry is not an object (found an array of 1)");
  ExpectInvalidHeader("{\"a\":" + std::string(64, '[') + std::string(64, ']') + "}", "",
                      "header JSON is nested deeper than 64 levels");
  ExpectInvalidHeader(std::string(20000000, '['), "", "header JSON is nested deeper than 64 levels");
}

TEST_F(HeaderRulesTest, NotAnObject) { ExpectInvalidHeader("[]", "", "header JSON is not an object (found an array of 0)"); }

TEST_F(HeaderRulesTest, DuplicateTensorName) {
  ExpectInvalidHeader(Header(std::string(kGood) + "," + kGood), std::string(8, '\0'), "duplicate tensor name 'a'");
}

TEST_F(HeaderRulesTest, DuplicateKeyInTensorEntry) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': duplicate key 'dtype'");
}

TEST_F(HeaderRulesTest, DuplicateKeyInNestedObject) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[{"x":1,"x":2}],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': duplicate key 'x' in a nested object");
}

TEST_F(HeaderRulesTest, DuplicateMetadataKey) {
  ExpectInvalidHeader(R"({"__metadata__":{},"__metadata__":{}})", "", "duplicate key '__metadata__'");
}

TEST_F(HeaderRulesTest, DuplicateKeyInMetadata) {
  ExpectInvalidHeader(R"({"__metadata__":{"k":"1","k":"2"}})", "", "__metadata__: duplicate key 'k'");
}

TEST_F(HeaderRulesTest, MetadataNotAnObject) {
  ExpectInvalidHeader(R"({"__metadata__":["x"]})", "", "__metadata__ is not an object of strings (found an array of 1)");
}

TEST_F(HeaderRulesTest, MetadataValueNotAString) {
  ExpectInvalidHeader(R"({"__metadata__":{"k":1}})", "", "__metadata__: value of key 'k' is not a string (found 1)");
}

TEST_F(HeaderRulesTest, MetadataNullIsAccepted) {
  // MLX's save_safetensors writes "__metadata__": null when there is none.
  const auto reader = OpenHeader(R"({"__metadata__":null})");
  ASSERT_THAT(reader, IsOk());
  EXPECT_FALSE((*reader)->metadata().has_value());
}

TEST_F(HeaderRulesTest, MetadataEmptyObjectIsAnEmptyMap) {
  const auto reader = OpenHeader(R"({"__metadata__":{}})");
  ASSERT_THAT(reader, IsOk());
  ASSERT_TRUE((*reader)->metadata().has_value());
  EXPECT_TRUE((*reader)->metadata()->empty());
}

// --- one tensor entry ---

TEST_F(HeaderRulesTest, EmptyTensorName) {
  ExpectInvalidHeader(R"({"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor '': empty tensor name");
}

TEST_F(HeaderRulesTest, EntryNotAnObject) {
  ExpectInvalidHeader(R"({"a":"x"})", "", "tensor 'a': entry is not an object (found \"x\")");
}

TEST_F(HeaderRulesTest, UnknownKeyInEntry) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"offsets":[0,8]}})",
                      std::string(8, '\0'), "tensor 'a': unknown key 'offsets' (allowed: dtype, shape, data_offsets)");
}

TEST_F(HeaderRulesTest, MissingDtype) {
  ExpectInvalidHeader(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'), "tensor 'a': missing 'dtype'");
}

TEST_F(HeaderRulesTest, MissingShape) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': missing 'shape'");
}

TEST_F(HeaderRulesTest, MissingDataOffsets) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2]}})", std::string(8, '\0'),
                      "tensor 'a': missing 'data_offsets'");
}

TEST_F(HeaderRulesTest, DtypeNotAString) {
  ExpectInvalidHeader(R"({"a":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': 'dtype' is not a string (found 5)");
}

TEST_F(HeaderRulesTest, UnknownDtype) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': unknown dtype 'F7'");
}

TEST_F(HeaderRulesTest, ShapeNotAnArray) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", std::string(16, '\0'),
                      "tensor 'a': 'shape' is not an array (found 4)");
}

TEST_F(HeaderRulesTest, ShapeEntryNegative) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': shape[1] is not a non-negative integer (found -2)");
}

TEST_F(HeaderRulesTest, ShapeEntryFloat) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': shape[0] is not a non-negative integer (found 2.0)");
}

TEST_F(HeaderRulesTest, ShapeEntryString) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': shape[0] is not a non-negative integer (found \"2\")");
}

TEST_F(HeaderRulesTest, ShapeEntryBeyondInt64) {
  ExpectInvalidHeader(R"({"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': shape[0] = 9223372036854775808 is larger than 2^63-1");
}

TEST_F(HeaderRulesTest, ShapeProductOverflow) {
  // 2^32 * 2^32 wraps to 0 in 64 bits: a multiply-then-check would accept it with 0 bytes.
  ExpectInvalidHeader(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "",
                      "tensor 'a': shape [4294967296, 4294967296] has more than 2^63-1 elements");
}

TEST_F(HeaderRulesTest, ShapeWithZeroNeverOverflows) {
  // A zero dimension makes any product 0, even after huge dimensions.
  const auto reader = OpenHeader(R"({"a":{"dtype":"U8","shape":[9223372036854775807,4,0],"data_offsets":[0,0]}})");
  ASSERT_THAT(reader, IsOk());
  EXPECT_EQ((*reader)->tensors()[0].num_elements(), 0);
}

TEST_F(HeaderRulesTest, DataOffsetsNotAPair) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", std::string(8, '\0'),
                      "tensor 'a': 'data_offsets' is not an array of 2 integers (found an array of 3)");
}

TEST_F(HeaderRulesTest, DataOffsetsNotAnArray) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":{"0":8}}})", std::string(8, '\0'),
                      "tensor 'a': 'data_offsets' is not an array of 2 integers (found an object)");
}

TEST_F(HeaderRulesTest, DataOffsetsEntryNegative) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", std::string(8, '\0'),
                      "tensor 'a': data_offsets[0] is not a non-negative integer (found -8)");
}

TEST_F(HeaderRulesTest, DataOffsetsEntryFloat) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}})", std::string(8, '\0'),
                      "tensor 'a': data_offsets[1] is not a non-negative integer (found 8.0)");
}

TEST_F(HeaderRulesTest, DataOffsetsBeginAfterEnd) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, '\0'),
                      "tensor 'a': data_offsets [8, 0] begin is after end");
}

TEST_F(HeaderRulesTest, SubByteDtypeNotWholeBytes) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", std::string(2, '\0'),
                      "tensor 'a': 3 elements of 4-bit dtype F4 are not a whole number of bytes");
}

TEST_F(HeaderRulesTest, SixBitDtypeNotWholeBytes) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F6_E2M3","shape":[2,3],"data_offsets":[0,5]}})", std::string(5, '\0'),
                      "tensor 'a': 6 elements of 6-bit dtype F6_E2M3 are not a whole number of bytes");
}

TEST_F(HeaderRulesTest, SizeMismatch) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'),
                      "tensor 'a': data_offsets [0, 8] hold 8 bytes but dtype F32 shape [3] needs 12 bytes");
}

TEST_F(HeaderRulesTest, EndPastDataSection) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  const auto result = OpenHeader(header, std::string(8, '\0'));
  // The full message, as the style guide shows it.
  EXPECT_THAT(result, StatusIs(StatusCode::kInvalidInput,
                               path() + ": tensor 'a': data_offsets [0, 16] end past data section of 8 bytes "
                                        "(incomplete download or corrupt file?)"));
}

TEST_F(HeaderRulesTest, OffsetsNearUint64MaxDoNotWrap) {
  ExpectInvalidHeader(
      R"({"a":{"dtype":"U8","shape":[7],"data_offsets":[18446744073709551608,18446744073709551615]}})",
      std::string(8, '\0'),
      "tensor 'a': data_offsets [18446744073709551608, 18446744073709551615] end past data section of 8 bytes");
}

TEST_F(HeaderRulesTest, OverlappingTensors) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      std::string(12, '\0'), "tensor 'b': data_offsets [4, 12] overlap tensor 'a' at [0, 8]");
}

TEST_F(HeaderRulesTest, IdenticalRangesOverlap) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                      std::string(8, '\0'), "tensor 'b': data_offsets [0, 8] overlap tensor 'a' at [0, 8]");
}

TEST_F(HeaderRulesTest, ContainedRangeOverlaps) {
  // 'c' starts after 'b' but inside 'a', which reaches furthest.
  ExpectInvalidHeader(R"({"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},)"
                      R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                      std::string(16, '\0'), "tensor 'b': data_offsets [2, 6] overlap tensor 'a' at [0, 16]");
}

TEST_F(HeaderRulesTest, ZeroSizeTensorsNeverOverlap) {
  const auto reader = OpenHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                 R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                                 R"("c":{"dtype":"BF16","shape":[3,0],"data_offsets":[4,4]},)"
                                 R"("d":{"dtype":"U8","shape":[0],"data_offsets":[8,8]}})",
                                 std::string(8, '\0'));
  ASSERT_THAT(reader, IsOk());
  EXPECT_EQ((*reader)->tensors().size(), 4u);
  EXPECT_TRUE((*reader)->warnings().empty());
}

TEST_F(HeaderRulesTest, ZeroSizeTensorPastDataSectionIsRejected) {
  ExpectInvalidHeader(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[9,9]}})", std::string(8, '\0'),
                      "tensor 'a': data_offsets [9, 9] end past data section of 8 bytes");
}

TEST_F(HeaderRulesTest, OutOfOrderTensorsAreValid) {
  // Listed z, a; stored a's data after z's. tensors() comes back in data order.
  const auto reader = OpenHeader(R"({"z":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                 R"("a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                                 "zzzzaaaa");
  ASSERT_THAT(reader, IsOk());
  ASSERT_EQ((*reader)->tensors().size(), 2u);
  EXPECT_EQ((*reader)->tensors()[0].name, "z");
  EXPECT_EQ((*reader)->tensors()[1].name, "a");
  EXPECT_TRUE((*reader)->warnings().empty());
}

TEST_F(HeaderRulesTest, GapBetweenTensorsIsAWarning) {
  const auto reader = OpenHeader(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                 R"("b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})",
                                 std::string(12, '\0'));
  ASSERT_THAT(reader, IsOk());
  EXPECT_THAT((*reader)->warnings(),
              ::testing::ElementsAre(path() + ": tensor 'b': data_offsets [8, 12] start 4 bytes after the previous "
                                              "tensor data ends at 4 (gap accepted)"));
}

TEST_F(HeaderRulesTest, GapAtStartOfDataIsAWarning) {
  const auto reader = OpenHeader(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", std::string(8, '\0'));
  ASSERT_THAT(reader, IsOk());
  EXPECT_THAT((*reader)->warnings(), ::testing::ElementsAre(HasSubstr("start 4 bytes after the previous tensor data "
                                                                      "ends at 0 (gap accepted)")));
}

TEST_F(HeaderRulesTest, TrailingBytesAreAWarning) {
  const auto reader = OpenHeader(Header(kGood), std::string(11, '\0'));
  ASSERT_THAT(reader, IsOk());
  EXPECT_THAT((*reader)->warnings(),
              ::testing::ElementsAre(path() + ": 3 trailing bytes after the last tensor data (data section of 11 "
                                              "bytes, tensors end at 8; accepted)"));
}

TEST_F(HeaderRulesTest, ManyGapsAreSummarized) {
  std::string header = "{";
  for (int i = 0; i < 10; ++i) {
    header += "\"t" + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
              std::to_string(2 * i + 1) + "," + std::to_string(2 * i + 2) + "]}";
    header += i < 9 ? "," : "}";
  }
  const auto reader = OpenHeader(header, std::string(20, '\0'));
  ASSERT_THAT(reader, IsOk());
  ASSERT_EQ((*reader)->warnings().size(), Reader::kMaxGapWarnings + 1);
  EXPECT_EQ((*reader)->warnings().back(), path() + ": 10 gaps between tensors in all, 10 unused bytes (accepted)");
}

TEST_F(HeaderRulesTest, WhitespacePaddingIsAccepted) {
  // Writers pad the header to 8 bytes with spaces; any JSON whitespace is harmless.
  const auto reader = OpenHeader(" \t\r\n" + Header(kGood) + "     \n\t  ", std::string(8, '\0'));
  ASSERT_THAT(reader, IsOk());
  EXPECT_EQ((*reader)->tensors().size(), 1u);
}

TEST_F(HeaderRulesTest, EmptyHeaderObjectIsValid) {
  const auto reader = OpenHeader("{}");
  ASSERT_THAT(reader, IsOk());
  EXPECT_TRUE((*reader)->tensors().empty());
  EXPECT_TRUE((*reader)->warnings().empty());
}

TEST_F(HeaderRulesTest, HostileNameStaysOnOneLine) {
  ExpectInvalidHeader(R"({"a\nb'":{"dtype":"F7","shape":[],"data_offsets":[0,0]}})", "",
                      R"(tensor 'a\x0ab\'': unknown dtype 'F7')");
}

TEST_F(HeaderRulesTest, EveryDtypeIsAccepted) {
  for (int d = 0; d <= static_cast<int>(DType::kF4); ++d) {
    const DType dtype = static_cast<DType>(d);
    // 8 elements are a whole number of bytes for every width.
    const uint64_t bytes = static_cast<uint64_t>(DTypeBits(dtype));
    const std::string header = "{\"x\":{\"dtype\":\"" + std::string(DTypeName(dtype)) +
                               "\",\"shape\":[2,4],\"data_offsets\":[0," + std::to_string(bytes) + "]}}";
    const auto reader = OpenHeader(header, std::string(bytes, '\0'));
    ASSERT_THAT(reader, IsOk()) << DTypeName(dtype);
    EXPECT_EQ((*reader)->tensors()[0].dtype, dtype);
    EXPECT_EQ((*reader)->tensors()[0].nbytes(), bytes);
  }
}

TEST(ParseHeaderTest, NamesThePathGiven) {
  const auto header = Reader::ParseHeader("{", 0, "shard-3.safetensors");
  EXPECT_THAT(header, StatusIs(StatusCode::kInvalidInput, ::testing::StartsWith("shard-3.safetensors: header is not "
                                                                                "valid JSON")));
}

TEST(ParseHeaderTest, DeepNestingIsAnErrorNotACrash) {
  const std::string deep = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_THAT(Reader::ParseHeader(deep, 0, "f"),
              StatusIs(StatusCode::kInvalidInput, HasSubstr("header JSON is nested deeper than 64 levels")));
}

}  // namespace
}  // namespace stquant::safetensors
