// safetensors headers read into an Index: the layout the safetensors package
// writes, the dtype mapping, loading through the ordinary pipeline, and
// hostile headers that must fail with kFormatError.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/load.h"
#include "tensorizer/source.h"

namespace tensorizer {
namespace {

std::string Safetensors(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + data;
}

Result<Index> Parse(const std::string& file) {
  return ParseSafetensorsIndex(reinterpret_cast<const uint8_t*>(file.data()), file.size(),
                               file.size());
}

const char kTwoTensors[] = R"({"__metadata__":{"format":"pt"},)"
                           R"("w":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},)"
                           R"("b":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})";

TEST(SafetensorsTest, ParsesEntriesInDataOrderWithTensorizerDtypes) {
  std::string file = Safetensors(kTwoTensors, std::string(8, '\x01'));
  ASSERT_TRUE(LooksLikeSafetensors(reinterpret_cast<const uint8_t*>(file.data()), file.size(),
                                   file.size()));
  auto index = Parse(file);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->format, FileFormat::kSafetensors);
  ASSERT_EQ(index->entries.size(), 2u);
  const uint64_t data_start = 8 + std::strlen(kTwoTensors);
  EXPECT_EQ(index->entries[0].name, "b");
  EXPECT_EQ(index->entries[0].dtype, "<f4");
  EXPECT_TRUE(index->entries[0].shape.empty());
  EXPECT_EQ(index->entries[0].data_offset, data_start);
  EXPECT_EQ(index->entries[0].header_length(), 0u);
  EXPECT_EQ(index->entries[1].name, "w");
  EXPECT_EQ(index->entries[1].dtype, std::string("<V2\0torch.bfloat16", 18));
  EXPECT_EQ(index->entries[1].type, TensorType::kStateDict);
  EXPECT_EQ(index->prefix_length(), data_start);
}

TEST(SafetensorsTest, LoadsThroughThePipeline) {
  std::string data = "\x01\x02\x03\x04\x05\x06\x07\x08";
  std::string file = Safetensors(kTwoTensors, data);
  std::shared_ptr<const Source> src = MakeMemorySource(file, "mem.safetensors");
  auto index = ReadIndex(*src);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  auto shared = std::make_shared<const Index>(std::move(index).value());
  for (HashCheck verify : {HashCheck::kNone, HashCheck::kAll}) {
    LoadOptions o;
    o.verify = verify;
    o.chunk_bytes = 3;
    auto load = Load::Start(src, shared, {0, 1}, o);
    ASSERT_TRUE(load.ok()) << load.status().ToString();
    ASSERT_TRUE((*load)->Wait().ok());
    const uint8_t* arena = (*load)->arena()->data();
    EXPECT_EQ(std::memcmp(arena + (*load)->arena_offset(0), data.data(), 4), 0);
    EXPECT_EQ(std::memcmp(arena + (*load)->arena_offset(1), data.data() + 4, 4), 0);
  }
}

TEST(SafetensorsTest, EmptyTensorsMayShareAnOffset) {
  std::string json = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})";
  auto index = Parse(Safetensors(json, std::string(4, '\0')));
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->entries[0].name, "e");
}

struct BadCase {
  const char* what;
  std::string file;
};

TEST(SafetensorsTest, HostileHeadersFailWithFormatErrors) {
  std::string oversized(8, '\0');
  uint64_t huge = kSafetensorsMaxHeader + 1;
  std::memcpy(oversized.data(), &huge, 8);
  oversized += "{}";
  const BadCase cases[] = {
      {"oversized", oversized},
      {"past the end", Safetensors("{}", "").substr(0, 9)},
      {"bad JSON", Safetensors(R"({"a":)", "")},
      {"not an object", Safetensors("[1,2]", "")},
      {"entry not an object", Safetensors(R"({"a":3})", "")},
      {"missing fields", Safetensors(R"({"a":{"dtype":"F32"}})", "")},
      {"unknown dtype", Safetensors(R"({"a":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}})",
                                    std::string(4, '\0'))},
      {"negative dim", Safetensors(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                                   std::string(4, '\0'))},
      {"begin after end", Safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})",
                                      std::string(4, '\0'))},
      {"out of range", Safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                   std::string(4, '\0'))},
      {"length mismatch", Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
                                      std::string(4, '\0'))},
      {"overlap", Safetensors(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                              R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                              std::string(4, '\0'))},
      {"hole", Safetensors(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                           std::string(2, '\0'))},
      {"metadata not strings", Safetensors(R"({"__metadata__":{"k":[]}})", "")},
      {"shape overflow",
       Safetensors(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                   std::string(8, '\0'))},
  };
  for (const BadCase& c : cases) {
    auto index = Parse(c.file);
    ASSERT_FALSE(index.ok()) << c.what;
    EXPECT_EQ(index.status().code(), StatusCode::kFormatError) << c.what;
    std::shared_ptr<const Source> src = MakeMemorySource(c.file, "bad.safetensors");
    auto via_read = ReadIndex(*src);
    ASSERT_FALSE(via_read.ok()) << c.what;
    EXPECT_NE(via_read.status().message().find("bad.safetensors"), std::string::npos) << c.what;
  }
}

// Issue 12 #21: the header was parsed into a whole JSON tree before any
// check, so nesting cost memory and time without bound (and was accepted in
// fields nobody reads). Nesting past 128 is now refused at its first bracket.
TEST(SafetensorsTest, NestingPastTheDepthLimitIsRefusedAtOnce) {
  const std::string tensor = R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1])";
  auto nested = [&](size_t depth) {
    return Safetensors("{" + tensor + R"(,"x":)" + std::string(depth, '[') +
                           std::string(depth, ']') + "}}",
                       std::string(1, '\0'));
  };
  // Skipped unknown fields may nest up to the limit (the tensor object and
  // the top level count too), as the safetensors package allows.
  auto ok = Parse(nested(kSafetensorsMaxDepth - 2));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->entries.size(), 1u);
  auto deep = Parse(nested(kSafetensorsMaxDepth - 1));
  ASSERT_FALSE(deep.ok());
  EXPECT_EQ(deep.status().code(), StatusCode::kFormatError);
  EXPECT_NE(deep.status().message().find("nested deeper than 128"), std::string::npos)
      << deep.status().message();

  // A 64 MB bomb: refused after reading 129 brackets, not after building
  // 32 million JSON values.
  const size_t depth = 32u << 20;
  std::string json = "{" + tensor + R"(,"x":)" + std::string(depth, '[') + std::string(depth, ']') +
                     "}}";
  std::string bomb = Safetensors(json, std::string(1, '\0'));
  json.clear();
  json.shrink_to_fit();
  auto start = std::chrono::steady_clock::now();
  auto refused = Parse(bomb);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("nested deeper"), std::string::npos);
  EXPECT_LT(seconds, 0.5);
}

// Issue 12 #13: convert read the header a second time for __metadata__; the
// index now carries it from the one parse.
TEST(SafetensorsTest, MetadataComesFromTheOneParse) {
  auto index = Parse(Safetensors(
      R"({"__metadata__":{"format":"pt","k":"1","k":"2"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      std::string(1, '\0')));
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  ASSERT_TRUE(index->safetensors_metadata.has_value());
  // A repeated key keeps its last value, as in the safetensors package.
  EXPECT_EQ(*index->safetensors_metadata,
            (std::map<std::string, std::string>{{"format", "pt"}, {"k", "2"}}));
  auto none = Parse(Safetensors(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                                std::string(1, '\0')));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->safetensors_metadata.has_value());
  auto null = Parse(Safetensors(
      R"({"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      std::string(1, '\0')));
  ASSERT_TRUE(null.ok()) << null.status().ToString();
  EXPECT_FALSE(null->safetensors_metadata.has_value());
}

TEST(SafetensorsTest, RepeatedKeysAndFieldsAreTreatedAsTheSafetensorsPackageTreatsThem) {
  // A repeated tensor key: the last one counts.
  auto index = Parse(Safetensors(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                                 R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                                 std::string(1, '\0')));
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  ASSERT_EQ(index->entries.size(), 1u);
  EXPECT_EQ(index->entries[0].shape, std::vector<uint64_t>{1});
  // A repeated field inside one tensor is an error (serde: duplicate field).
  auto dup = Parse(Safetensors(R"({"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                               std::string(1, '\0')));
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("duplicate field"), std::string::npos);
}

// Issue 12 #24: raw control characters from keys reached messages.
TEST(SafetensorsTest, MessagesEscapeControlCharactersInKeys) {
  auto index = Parse(Safetensors(
      "{\"bad\\u001b[31m\\n\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
      std::string(4, '\0')));
  ASSERT_FALSE(index.ok());
  const std::string& m = index.status().message();
  EXPECT_NE(m.find("bad\\x1b[31m\\x0a"), std::string::npos) << m;
  EXPECT_EQ(m.find('\x1b'), std::string::npos);
  EXPECT_EQ(m.find('\n'), std::string::npos);
}

}  // namespace
}  // namespace tensorizer
