// The .tensors format as pure functions: golden bytes, round trips, and
// hostile inputs that must fail with a specific status code.
//
// Golden bytes are the file tensorizer 2.11.1 writes for
// {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)} (research
// report §1.14), a 262327-byte file.
#include "tensorizer/format.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "format/hash.h"
#include "tensorizer/load.h"
#include "tensorizer/source.h"
#include "test_files.h"

namespace tensorizer {
namespace {

using testing::BuildFile;
using testing::BuiltFile;
using testing::BuiltRecord;
using testing::F32;
using testing::FileBlueprint;
using testing::GetLE;
using testing::GoldenBlueprint;
using testing::Hex;
using testing::PutLE;
using testing::TensorBlueprint;
using testing::Unhex;

const char kGoldenFileHeader[] =
    "7c545a527c 01000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1800000000000000 0000000000000000 0100000000000000"
    "0000040000000000";
const char kGoldenEntry[] =
    "0100 61 02 03 3c6634 02 02000000 03000000 4900040000000000 9700040000000000 "
    "1800000000000000";
const char kGoldenHeader[] =
    "4e00000000000000 0000 02 0100 61 03 3c6634 02 02000000 03000000 2900 02 00 04 2b57a458 "
    "01 20 e8e3d014d48f732fb354e0362af5d6b75aa061cb5a911b2fc5f4a301948b1682 1800000000000000";
const char kGoldenData[] = "00000000 0000803f 00000040 00004040 00008040 0000a040";
const char kGoldenSha256[] = "e8e3d014d48f732fb354e0362af5d6b75aa061cb5a911b2fc5f4a301948b1682";
constexpr uint32_t kGoldenCrc32 = 0x58A4572B;
constexpr uint64_t kGoldenHeaderOffset = 262217;
constexpr uint64_t kGoldenDataOffset = 262295;

TensorRecordSpec GoldenSpec() {
  TensorRecordSpec spec;
  spec.name = "a";
  spec.type = TensorType::kStateDict;
  spec.dtype = "<f4";
  spec.shape = {2, 3};
  spec.data_length = 24;
  return spec;
}

std::string GoldenFile() {
  std::string file = Unhex(kGoldenFileHeader);
  file += Unhex(kGoldenEntry);
  file.resize(kGoldenHeaderOffset, '\0');
  file += Unhex(kGoldenHeader);
  file += Unhex(kGoldenData);
  file += std::string(8, '\0');
  return file;
}

const uint8_t* U8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

Result<Index> ParseAll(const std::string& file) {
  return ParseIndex(U8(file), file.size(), file.size());
}

// Asserts a failed result with the given code.
#define EXPECT_CODE(expr, expected_code)                                      \
  do {                                                                        \
    auto&& _r = (expr);                                                       \
    EXPECT_FALSE(_r.ok()) << #expr << " unexpectedly succeeded";              \
    EXPECT_EQ(_r.status().code(), (expected_code)) << _r.status().ToString(); \
  } while (0)

// --- Golden bytes -------------------------------------------------------

TEST(GoldenTest, FileIsTheSizeTensorizerWrites) {
  EXPECT_EQ(GoldenFile().size(), 262327u);
  EXPECT_EQ(kFirstTensorOffset, kGoldenHeaderOffset);
}

TEST(GoldenTest, EncodeFileHeader) {
  FileHeader h;
  h.version = 1;
  h.tensor_size = 24;
  h.tensor_count = 1;
  h.metadata_length = kMetadataReserve;
  std::string bytes = EncodeFileHeader(h);
  ASSERT_EQ(bytes.size(), kMetadataStart);
  EXPECT_EQ(Hex(bytes), Hex(Unhex(kGoldenFileHeader)));
}

TEST(GoldenTest, EncodeFileHeaderWritesFlagsOnlyFromVersion4) {
  FileHeader h;
  h.flags = kFlagEncrypted;
  h.version = 3;
  EXPECT_EQ(GetLE<uint64_t>(EncodeFileHeader(h), 9), 0u);
  h.version = 4;
  EXPECT_EQ(GetLE<uint64_t>(EncodeFileHeader(h), 9), kFlagEncrypted);
}

TEST(GoldenTest, EncodeMetadataEntry) {
  auto entry = EncodeMetadataEntry(GoldenSpec(), kGoldenHeaderOffset, kGoldenDataOffset, false);
  ASSERT_TRUE(entry.ok()) << entry.status().ToString();
  EXPECT_EQ(entry->size(), 41u);  // 29 + N + D + 4R
  EXPECT_EQ(Hex(*entry), Hex(Unhex(kGoldenEntry)));
}

TEST(GoldenTest, EncodeTensorHeaderThenHash) {
  auto enc = EncodeTensorHeader(GoldenSpec());
  ASSERT_TRUE(enc.ok()) << enc.status().ToString();
  std::string golden = Unhex(kGoldenHeader);
  ASSERT_EQ(enc->bytes.size(), 78u);
  EXPECT_EQ(enc->crc32_offset, 32u);
  EXPECT_EQ(enc->sha256_offset, 38u);
  // Before hashing: the golden header with both hash values zero.
  std::string zeroed = golden;
  std::fill_n(zeroed.begin() + 32, 4, '\0');
  std::fill_n(zeroed.begin() + 38, 32, '\0');
  EXPECT_EQ(Hex(enc->bytes), Hex(zeroed));

  internal::TensorHasher hasher;
  hasher.Update(enc->bytes.data(), enc->bytes.size());
  std::string data = Unhex(kGoldenData);
  hasher.Update(data.data(), data.size());
  EXPECT_EQ(hasher.crc32(), kGoldenCrc32);
  std::string sha = hasher.FinishSha256();
  EXPECT_EQ(Hex(sha), kGoldenSha256);

  uint32_t crc = hasher.crc32();
  std::memcpy(enc->bytes.data() + enc->crc32_offset, &crc, 4);
  std::memcpy(enc->bytes.data() + enc->sha256_offset, sha.data(), 32);
  EXPECT_EQ(Hex(enc->bytes), Hex(golden));
}

TEST(GoldenTest, BuilderReproducesTheWholeFile) {
  // The test helper (used by every other test) agrees with the golden file.
  EXPECT_EQ(BuildFile(GoldenBlueprint()).bytes, GoldenFile());
}

TEST(GoldenTest, ParseFileHeader) {
  std::string file = GoldenFile();
  auto h = ParseFileHeader(U8(file), kMetadataStart, file.size());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->version, 1u);
  EXPECT_EQ(h->flags, 0u);
  EXPECT_EQ(h->tensor_size, 24u);
  EXPECT_EQ(h->tensor_count, 1u);
  EXPECT_EQ(h->metadata_length, kMetadataReserve);
  EXPECT_FALSE(h->has_crypt_info());
  EXPECT_FALSE(h->versioned_metadata());
}

TEST(GoldenTest, ParseIndex) {
  std::string file = GoldenFile();
  auto index = ParseAll(file);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->prefix_length(), kGoldenHeaderOffset);
  ASSERT_EQ(index->entries.size(), 1u);
  const TensorEntry& e = index->entries[0];
  EXPECT_EQ(e.name, "a");
  EXPECT_EQ(e.type, TensorType::kStateDict);
  EXPECT_EQ(e.dtype, "<f4");
  EXPECT_EQ(e.shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(e.header_offset, kGoldenHeaderOffset);
  EXPECT_EQ(e.data_offset, kGoldenDataOffset);
  EXPECT_EQ(e.data_length, 24u);
  EXPECT_EQ(e.metadata_version, 1u);
  EXPECT_EQ(e.header_length(), 78u);
  EXPECT_EQ(e.record_end(), 262319u);
}

TEST(GoldenTest, ParseTensorHeaderAndHashedBytes) {
  std::string header = Unhex(kGoldenHeader);
  auto h = ParseTensorHeader(U8(header), header.size(), false, false);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->header_size, 78u);
  EXPECT_EQ(h->module_idx, 0);
  EXPECT_EQ(h->type, TensorType::kStateDict);
  EXPECT_EQ(h->name, "a");
  EXPECT_EQ(h->dtype, "<f4");
  EXPECT_EQ(h->shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(h->data_length, 24);
  EXPECT_EQ(h->crypt_info_size, 0u);
  ASSERT_EQ(h->hashes.size(), 2u);
  EXPECT_EQ(h->hashes[0].type, HashType::kCrc32);
  EXPECT_EQ(h->hashes[0].offset, 32u);
  EXPECT_EQ(GetLE<uint32_t>(h->hashes[0].value, 0), kGoldenCrc32);
  EXPECT_EQ(h->hashes[1].type, HashType::kSha256);
  EXPECT_EQ(h->hashes[1].offset, 38u);
  EXPECT_EQ(Hex(h->hashes[1].value), kGoldenSha256);

  auto index = ParseAll(GoldenFile());
  ASSERT_TRUE(index.ok());
  EXPECT_TRUE(CheckHeaderMatchesEntry(*h, index->entries[0]).ok());

  std::string hashed = HashedHeaderBytes(U8(header), *h);
  internal::TensorHasher hasher;
  hasher.Update(hashed.data(), hashed.size());
  std::string data = Unhex(kGoldenData);
  hasher.Update(data.data(), data.size());
  EXPECT_EQ(hasher.crc32(), kGoldenCrc32);
  EXPECT_EQ(Hex(hasher.FinishSha256()), kGoldenSha256);
}

TEST(GoldenTest, LoadsWithEveryHashChecked) {
  std::shared_ptr<const Source> source = MakeMemorySource(GoldenFile(), "golden");
  auto index = ReadIndex(*source);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  LoadOptions opt;
  opt.verify = HashCheck::kAll;
  opt.num_threads = 1;
  auto load = Load::Start(source, std::make_shared<const Index>(*index), {0}, opt);
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  ASSERT_TRUE((*load)->Wait().ok());
  const uint8_t* at = (*load)->arena()->data() + (*load)->arena_offset(0);
  std::string got(reinterpret_cast<const char*>(at), (*load)->arena_bytes(0));
  EXPECT_EQ(Hex(got), Hex(Unhex(kGoldenData)));
}

// --- Round trips ---------------------------------------------------------

std::vector<TensorRecordSpec> VariedSpecs() {
  std::vector<TensorRecordSpec> specs;
  TensorRecordSpec s;
  s.name = "model.layers.0.weight";
  s.type = TensorType::kParam;
  s.module_idx = 7;
  s.dtype = "<f2";
  s.shape = {3, 5};
  s.data_length = 30;
  specs.push_back(s);
  s.name = "scalar";
  s.type = TensorType::kBuffer;
  s.module_idx = 65535;
  s.dtype = "<i8";
  s.shape = {};
  s.data_length = 8;
  specs.push_back(s);
  s.name = std::string("\x1e[\"a\",0]");
  s.type = TensorType::kStateDict;
  s.module_idx = 0;
  s.dtype = std::string("<V2\0torch.bfloat16", 18);
  s.shape = {1, 1, 1, 1, 1, 1, 1, 2};
  s.data_length = 4;
  specs.push_back(s);
  s.name = "long";
  s.dtype = "|i1";
  s.shape = {uint64_t{1} << 33, 0};
  s.data_length = 0;
  s.long_shape = true;
  specs.push_back(s);
  s.name = std::string(300, 'n');
  s.dtype = "|b1";
  s.shape = std::vector<uint64_t>(255, 1);
  s.data_length = 1;
  s.long_shape = false;
  specs.push_back(s);
  return specs;
}

TEST(RoundTripTest, TensorHeaders) {
  for (const TensorRecordSpec& spec : VariedSpecs()) {
    SCOPED_TRACE(spec.name.substr(0, 40));
    auto enc = EncodeTensorHeader(spec);
    ASSERT_TRUE(enc.ok()) << enc.status().ToString();
    const std::string& b = enc->bytes;
    auto h = ParseTensorHeader(U8(b), b.size(), spec.long_shape, false);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_EQ(h->header_size, b.size());
    EXPECT_EQ(h->module_idx, spec.module_idx);
    EXPECT_EQ(h->type, spec.type);
    EXPECT_EQ(h->name, spec.name);
    EXPECT_EQ(h->dtype, spec.dtype);
    EXPECT_EQ(h->shape, spec.shape);
    EXPECT_EQ(static_cast<uint64_t>(h->data_length), spec.data_length);
    ASSERT_EQ(h->hashes.size(), 2u);
    EXPECT_EQ(h->hashes[0].offset, enc->crc32_offset);
    EXPECT_EQ(h->hashes[1].offset, enc->sha256_offset);
    // Hash values are zero, so the hashed bytes are the header itself.
    EXPECT_EQ(HashedHeaderBytes(U8(b), *h), b);
  }
}

TEST(RoundTripTest, IndexOfVariedTensors) {
  FileBlueprint bp;
  bp.version = 5;
  bp.flags = kFlagVersionedMetadata;
  for (const TensorRecordSpec& spec : VariedSpecs()) {
    TensorBlueprint t;
    t.name = spec.name;
    t.type = spec.type;
    t.module_idx = spec.module_idx;
    t.dtype = spec.dtype;
    t.shape = spec.shape;
    t.data = std::string(spec.data_length, '\x01');
    t.long_shape = spec.long_shape;
    bp.tensors.push_back(t);
  }
  BuiltFile file = BuildFile(bp);
  auto index = ParseAll(file.bytes);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  ASSERT_EQ(index->entries.size(), bp.tensors.size());
  EXPECT_EQ(index->header.version, 5u);
  EXPECT_TRUE(index->header.versioned_metadata());
  for (size_t i = 0; i < bp.tensors.size(); ++i) {
    const TensorEntry& e = index->entries[i];
    const TensorBlueprint& t = bp.tensors[i];
    EXPECT_EQ(e.name, t.name);
    EXPECT_EQ(e.type, t.type);
    EXPECT_EQ(e.dtype, t.dtype);
    EXPECT_EQ(e.shape, t.shape);
    EXPECT_EQ(e.metadata_version, t.long_shape ? 5u : 1u);
    EXPECT_EQ(e.header_offset, file.records[i].header_offset);
    EXPECT_EQ(e.data_offset, file.records[i].data_offset);
    EXPECT_EQ(e.data_length, t.data.size());
    auto h = ParseTensorHeader(file.data() + e.header_offset, e.header_length(),
                               e.metadata_version == kVersionLongShape, false);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_TRUE(CheckHeaderMatchesEntry(*h, e).ok());
  }
}

TEST(RoundTripTest, FileHeaderFields) {
  FileHeader h;
  h.version = 5;  // the versioned-metadata flag is valid from version 5 on
  h.flags = kFlagEncrypted | kFlagVersionedMetadata;
  h.tensor_size = 0x0102030405060708;
  h.tensor_count = 3;
  h.metadata_length = 3 * 29;
  std::string bytes = EncodeFileHeader(h);
  bytes.resize(kMetadataStart + h.metadata_length, '\0');
  auto p = ParseFileHeader(U8(bytes), bytes.size(), bytes.size());
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->version, 5u);
  EXPECT_EQ(p->flags, h.flags);
  EXPECT_EQ(p->tensor_size, h.tensor_size);
  EXPECT_EQ(p->tensor_count, 3u);
  EXPECT_EQ(p->metadata_length, h.metadata_length);
  EXPECT_TRUE(p->has_crypt_info());
  EXPECT_TRUE(p->versioned_metadata());
}

TEST(RoundTripTest, CryptInfoIsCutFromTheHashedBytes) {
  FileBlueprint bp = GoldenBlueprint(std::nullopt);
  bp.version = 3;
  bp.tensors[0].crypt_info = std::string("\x00\x00", 2);
  BuiltFile file = BuildFile(bp);
  auto index = ParseAll(file.bytes);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  const TensorEntry& e = index->entries[0];
  EXPECT_EQ(e.header_length(), 78u + 10u);
  auto h = ParseTensorHeader(file.data() + e.header_offset, e.header_length(), false, true);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->crypt_info_offset, 78u - 8u);
  EXPECT_EQ(h->crypt_info_size, 10u);
  EXPECT_EQ(h->data_length, 24);
  // Without the crypt-info block, the bytes hashed are the golden ones but
  // for the size field, which counts the block (as tensorizer hashes it).
  std::string hashed = HashedHeaderBytes(file.data() + e.header_offset, *h);
  std::string golden = Unhex(kGoldenHeader);
  std::fill_n(golden.begin() + 32, 4, '\0');
  std::fill_n(golden.begin() + 38, 32, '\0');
  PutLE<uint64_t>(golden, 0, 88);
  EXPECT_EQ(Hex(hashed), Hex(golden));
}

// --- dtypes -----------------------------------------------------------

TEST(DtypeTest, Table) {
  struct Case {
    std::string dtype;
    uint64_t itemsize;
    char kind;
    std::string opaque;
  };
  const std::vector<Case> cases = {
      {"<f4", 4, 'f', ""},
      {"<f2", 2, 'f', ""},
      {"<f8", 8, 'f', ""},
      {"|b1", 1, 'b', ""},
      {"|i1", 1, 'i', ""},
      {"|u1", 1, 'u', ""},
      {"<i2", 2, 'i', ""},
      {"<i8", 8, 'i', ""},
      {"<u8", 8, 'u', ""},
      {"<c8", 8, 'c', ""},
      {"<c16", 16, 'c', ""},
      {std::string("<V2\0torch.bfloat16", 18), 2, 'V', "torch.bfloat16"},
      {std::string("<V4\0torch.complex32", 19), 4, 'V', "torch.complex32"},
      {std::string("|V1\0torch.float8_e4m3fn", 23), 1, 'V', "torch.float8_e4m3fn"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(Hex(c.dtype));
    auto info = ParseDtype(c.dtype);
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_EQ(info->itemsize, c.itemsize);
    EXPECT_EQ(info->kind, c.kind);
    EXPECT_EQ(info->opaque_name, c.opaque);
  }
}

TEST(DtypeTest, RejectsMalformed) {
  const std::vector<std::string> bad = {
      "",
      "<",
      "|",
      "<x4",   // unknown kind
      "<f",    // no size
      "<f0",   // size 0
      "<f4x",  // junk after the size
      "<f-4",
      "<f1234567",  // absurd size
      "f4 ",
      std::string("<V2\0", 4),                   // opaque name missing
      std::string("<V2\0torch.a\0torch.b", 18),  // two separators
      std::string("\0torch.bfloat16", 15),       // no base type
  };
  for (const std::string& d : bad) {
    SCOPED_TRACE(Hex(d));
    EXPECT_CODE(ParseDtype(d), StatusCode::kFormatError);
  }
}

TEST(DtypeTest, ExpectedLengthAndMeta) {
  TensorEntry e;
  e.dtype = std::string("<V2\0torch.bfloat16", 18);
  e.shape = {3, 4};
  auto n = ExpectedDataLength(e);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 24u);  // itemsize from the part before the separator
  EXPECT_TRUE(*IsMetaTensor(e));
  e.data_length = 24;
  EXPECT_FALSE(*IsMetaTensor(e));
  e.data_length = 0;
  e.shape = {0, 4};
  EXPECT_FALSE(*IsMetaTensor(e));  // genuinely empty
  e.shape = {};
  EXPECT_EQ(*ExpectedDataLength(e), 2u);  // scalar
  e.dtype = "<f8";
  e.shape = {uint64_t{1} << 32, uint64_t{1} << 32};
  EXPECT_CODE(ExpectedDataLength(e), StatusCode::kFormatError);  // overflows 64 bits
  EXPECT_CODE(IsMetaTensor(e), StatusCode::kFormatError);
}

// --- Versioned metadata (data version 5) --------------------------------

TEST(VersionedMetadataTest, EntriesCarryTags) {
  TensorRecordSpec spec = GoldenSpec();
  auto tagged = EncodeMetadataEntry(spec, kGoldenHeaderOffset, kGoldenDataOffset, true);
  ASSERT_TRUE(tagged.ok());
  EXPECT_EQ(Hex(*tagged), "01000000" + Hex(Unhex(kGoldenEntry)));

  spec.long_shape = true;
  auto long_entry = EncodeMetadataEntry(spec, kGoldenHeaderOffset, kGoldenDataOffset, true);
  ASSERT_TRUE(long_entry.ok());
  EXPECT_EQ(Hex(*long_entry),
            "05000000"
            "0100"
            "61"
            "02"
            "03"
            "3c6634"
            "02"
            "0200000000000000"
            "0300000000000000"
            "4900040000000000"
            "9700040000000000"
            "1800000000000000");

  auto header = EncodeTensorHeader(spec);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->bytes.size(), 78u + 8u);  // two dims, four bytes more each
  EXPECT_EQ(Hex(header->bytes.substr(18, 17)),
            "02"
            "0200000000000000"
            "0300000000000000");
}

TEST(VersionedMetadataTest, DimensionsOver32BitsNeedALongRecord) {
  TensorRecordSpec spec = GoldenSpec();
  spec.shape = {uint64_t{1} << 32};
  EXPECT_TRUE(NeedsLongShape(spec.shape));
  EXPECT_FALSE(NeedsLongShape({0xFFFFFFFFu}));
  EXPECT_CODE(EncodeTensorHeader(spec), StatusCode::kInvalidArgument);
  EXPECT_CODE(EncodeMetadataEntry(spec, 0, 0, true), StatusCode::kInvalidArgument);
}

FileBlueprint MixedLongBlueprint() {
  FileBlueprint bp;
  bp.version = 5;
  bp.flags = kFlagVersionedMetadata;
  TensorBlueprint a;
  a.name = "a";
  a.shape = {1};
  a.data = F32({1});
  TensorBlueprint l;
  l.name = "long";
  l.dtype = "|i1";
  l.shape = {2, 1};
  l.data = "\x07\x08";
  l.long_shape = true;
  TensorBlueprint b = a;
  b.name = "b";
  bp.tensors = {a, l, b};
  return bp;
}

TEST(VersionedMetadataTest, MixedTagsParse) {
  BuiltFile file = BuildFile(MixedLongBlueprint());
  EXPECT_EQ(GetLE<uint32_t>(file.bytes, file.records[0].entry_offset), 1u);
  EXPECT_EQ(GetLE<uint32_t>(file.bytes, file.records[1].entry_offset), 5u);
  auto index = ParseAll(file.bytes);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->entries[0].metadata_version, 1u);
  EXPECT_EQ(index->entries[1].metadata_version, 5u);
  EXPECT_EQ(index->entries[1].shape, (std::vector<uint64_t>{2, 1}));
  EXPECT_EQ(index->entries[2].name, "b");
  const TensorEntry& e = index->entries[1];
  auto h = ParseTensorHeader(file.data() + e.header_offset, e.header_length(), true, false);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->shape, (std::vector<uint64_t>{2, 1}));
  // Read with u32 dims, the same header does not parse as the same tensor.
  auto wrong = ParseTensorHeader(file.data() + e.header_offset, e.header_length(), false, false);
  EXPECT_TRUE(!wrong.ok() || !CheckHeaderMatchesEntry(*wrong, e).ok());
}

TEST(VersionedMetadataTest, UnknownTagIsUnsupported) {
  for (uint32_t tag : {0u, 2u, 4u, 6u, 0xFFFFFFFFu}) {
    SCOPED_TRACE(tag);
    BuiltFile file = BuildFile(MixedLongBlueprint());
    PutLE<uint32_t>(file.bytes, file.records[2].entry_offset, tag);
    EXPECT_CODE(ParseAll(file.bytes), StatusCode::kUnsupportedVersion);
  }
}

TEST(VersionedMetadataTest, Version5WithoutTheFlagHasUntaggedEntries) {
  FileBlueprint bp = GoldenBlueprint(std::nullopt);
  bp.version = 5;
  BuiltFile file = BuildFile(bp);
  auto index = ParseAll(file.bytes);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_FALSE(index->header.versioned_metadata());
  EXPECT_EQ(index->entries[0].name, "a");
}

TEST(VersionedMetadataTest, FlagBeforeVersion5IsRejected) {
  // tensorizer 2.12.1: "Invalid feature flag present in file header for a
  // file with version 4" (ValueError) — the tag layout exists only in v5.
  FileBlueprint bp = MixedLongBlueprint();
  bp.version = 4;
  BuiltFile file = BuildFile(bp);
  EXPECT_CODE(ParseAll(file.bytes), StatusCode::kFormatError);
}

// --- Hostile inputs -----------------------------------------------------

TEST(HostileTest, BadMagic) {
  for (const char* magic : {"|TZR!", "\0TZR|", "PK\x03\x04\x00", "|tzr|"}) {
    std::string file = GoldenFile();
    std::memcpy(file.data(), magic, 5);
    EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
    EXPECT_CODE(ParseFileHeader(U8(file), file.size(), file.size()), StatusCode::kFormatError);
  }
}

TEST(HostileTest, EveryPrefixShorterThanTheHeaderFails) {
  const std::string file = GoldenFile();
  for (size_t n = 0; n < kMetadataStart; ++n) {
    SCOPED_TRACE(n);
    std::string prefix = file.substr(0, n);
    EXPECT_CODE(ParseFileHeader(U8(prefix), n, n), StatusCode::kFormatError);
    EXPECT_CODE(ParseIndex(U8(prefix), n, n), StatusCode::kFormatError);
    auto source = MakeMemorySource(prefix, "prefix");
    EXPECT_CODE(ReadIndex(*source), StatusCode::kFormatError);
  }
}

TEST(HostileTest, TruncatedMetadataBlock) {
  const std::string file = GoldenFile();
  // Cut inside the 256 KiB metadata block: its length field now lies.
  for (size_t n : {size_t{73}, size_t{74}, size_t{100}, size_t{114}, size_t{262216}}) {
    SCOPED_TRACE(n);
    std::string cut = file.substr(0, n);
    EXPECT_CODE(ParseFileHeader(U8(cut), cut.size(), cut.size()), StatusCode::kFormatError);
    EXPECT_CODE(ReadIndex(*MakeMemorySource(cut, "cut")), StatusCode::kFormatError);
  }
}

TEST(HostileTest, EntryRunsPastTheMetadataBlock) {
  // A block that ends inside the only entry (41 bytes) although the file
  // goes on: every byte of it is needed.
  for (uint64_t len : {29u, 30u, 40u}) {
    SCOPED_TRACE(len);
    std::string file = GoldenFile();
    PutLE<uint64_t>(file, 65, len);
    EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
  }
}

TEST(HostileTest, ParseIndexWantsTheWholeBlock) {
  std::string file = GoldenFile();
  EXPECT_CODE(ParseIndex(U8(file), 1000, file.size()), StatusCode::kInvalidArgument);
}

TEST(HostileTest, UnknownVersions) {
  for (uint32_t v : {0u, 6u, 7u, 0x01000000u, 0xFFFFFFFFu}) {
    SCOPED_TRACE(v);
    std::string file = GoldenFile();
    PutLE<uint32_t>(file, 5, v);
    EXPECT_CODE(ParseAll(file), StatusCode::kUnsupportedVersion);
    EXPECT_CODE(ReadIndex(*MakeMemorySource(file, "v")), StatusCode::kUnsupportedVersion);
  }
}

TEST(HostileTest, UnknownFlagBitsInVersion4) {
  for (size_t byte : {size_t{0}, size_t{1}, size_t{8}, size_t{31}}) {
    for (uint8_t bits : {uint8_t{0x04}, uint8_t{0x80}}) {
      if (byte != 0 && bits == 0x04) continue;
      SCOPED_TRACE(std::to_string(byte) + "/" + std::to_string(bits));
      FileBlueprint bp = GoldenBlueprint(std::nullopt);
      bp.version = 4;
      BuiltFile file = BuildFile(bp);
      ASSERT_TRUE(ParseAll(file.bytes).ok());
      file.bytes[9 + byte] = static_cast<char>(file.bytes[9 + byte] | bits);
      EXPECT_CODE(ParseAll(file.bytes), StatusCode::kUnsupportedVersion);
    }
  }
}

TEST(HostileTest, FlagBitsBeforeVersion4) {
  // tensorizer 2.12.1 checks the flag bits whatever the version.
  for (uint32_t version : {1u, 2u, 3u}) {
    SCOPED_TRACE(version);
    FileBlueprint bp = GoldenBlueprint(std::nullopt);
    bp.version = version;
    BuiltFile file = BuildFile(bp);
    std::string unknown = file.bytes;
    unknown[9 + 31] = static_cast<char>(0x80);
    EXPECT_CODE(ParseAll(unknown), StatusCode::kUnsupportedVersion);
    unknown = file.bytes;
    unknown[9] = 0x04;
    EXPECT_CODE(ParseAll(unknown), StatusCode::kUnsupportedVersion);
    std::string versioned = file.bytes;
    versioned[9] = static_cast<char>(kFlagVersionedMetadata);
    EXPECT_CODE(ParseAll(versioned), StatusCode::kFormatError);
    // The encrypted bit means nothing before version 4: no crypt info.
    std::string encrypted = file.bytes;
    encrypted[9] = static_cast<char>(kFlagEncrypted);
    auto index = ParseAll(encrypted);
    ASSERT_TRUE(index.ok()) << index.status().ToString();
    EXPECT_EQ(index->header.has_crypt_info(), version == 3);
  }
}

TEST(HostileTest, TensorCountTooBigForTheBlock) {
  for (uint64_t count :
       {uint64_t{2}, uint64_t{1000}, uint64_t{1} << 40, std::numeric_limits<uint64_t>::max()}) {
    SCOPED_TRACE(count);
    BuiltFile file = BuildFile(GoldenBlueprint(std::nullopt));  // block: one 41-byte entry
    PutLE<uint64_t>(file.bytes, 57, count);
    EXPECT_CODE(ParseFileHeader(file.data(), file.size(), file.size()), StatusCode::kFormatError);
    EXPECT_CODE(ParseAll(file.bytes), StatusCode::kFormatError);
  }
  // Fits the 256 KiB block by size, but the entries after the first are
  // zero padding, which is no valid entry (dtype "").
  std::string file = GoldenFile();
  PutLE<uint64_t>(file, 57, 2);
  EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
}

TEST(HostileTest, EmptyIndex) {
  std::string file = GoldenFile();
  PutLE<uint64_t>(file, 57, 0);
  EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
  PutLE<uint64_t>(file, 65, 0);
  EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
}

TEST(HostileTest, EntryPointsOutsideTheFile) {
  const uint64_t size = GoldenFile().size();
  const size_t entry = 73 + 2 + 1 + 1 + 1 + 3 + 1 + 8;  // the three u64 locations
  struct Case {
    const char* what;
    uint64_t header, data, length;
  };
  const std::vector<Case> cases = {
      {"header past the end", size + 10, size + 88, 24},
      {"data past the end", kGoldenHeaderOffset, size + 1, 0},
      {"data runs past the end", kGoldenHeaderOffset, kGoldenDataOffset, 24 + 12000},
      {"length wraps around", kGoldenHeaderOffset, kGoldenDataOffset, ~uint64_t{0} - 3},
      {"data offset wraps", kGoldenHeaderOffset, ~uint64_t{0} - 7, 24},
      {"header inside the metadata block", 100, 178, 24},
      {"header at offset 0", 0, 78, 24},
      {"data before header", kGoldenDataOffset, kGoldenHeaderOffset, 24},
      {"empty header", kGoldenDataOffset, kGoldenDataOffset, 24},
      {"header too short to hold its fields", kGoldenDataOffset - 20, kGoldenDataOffset, 24},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string file = GoldenFile();
    ASSERT_EQ(file.size(), size);
    // The data length must also agree with the shape, or that check fires
    // first; grow the shape to match when a case needs another length.
    PutLE<uint64_t>(file, entry, c.header);
    PutLE<uint64_t>(file, entry + 8, c.data);
    PutLE<uint64_t>(file, entry + 16, c.length);
    if (c.length != 24 && c.length % 12 == 0) {
      PutLE<uint32_t>(file, 73 + 9, static_cast<uint32_t>(c.length / 12));  // shape (n, 3)
    }
    EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
  }
}

BuiltFile TwoTensorFile() {
  FileBlueprint bp = GoldenBlueprint(std::nullopt);
  TensorBlueprint b = bp.tensors[0];
  b.name = "b";
  bp.tensors.push_back(b);
  return BuildFile(bp);
}

TEST(HostileTest, OverlappingAndOutOfOrderRecords) {
  {
    BuiltFile file = TwoTensorFile();
    ASSERT_TRUE(ParseAll(file.bytes).ok());
  }
  auto entry_loc = [](const BuiltFile& f, size_t i) {
    return f.records[i].entry_offset + 2 + 1 + 1 + 1 + 3 + 1 + 8;
  };
  {
    SCOPED_TRACE("second record starts inside the first one's data");
    BuiltFile file = TwoTensorFile();
    PutLE<uint64_t>(file.bytes, entry_loc(file, 1), file.records[0].data_offset + 4);
    PutLE<uint64_t>(file.bytes, entry_loc(file, 1) + 8, file.records[0].data_offset + 4 + 78);
    EXPECT_CODE(ParseAll(file.bytes), StatusCode::kFormatError);
  }
  {
    SCOPED_TRACE("both entries name the same record");
    BuiltFile file = TwoTensorFile();
    std::string first_loc = file.bytes.substr(entry_loc(file, 0), 24);
    file.bytes.replace(entry_loc(file, 1), 24, first_loc);
    EXPECT_CODE(ParseAll(file.bytes), StatusCode::kFormatError);
  }
  {
    SCOPED_TRACE("entries in the opposite order of their records");
    BuiltFile file = TwoTensorFile();
    std::string a = file.bytes.substr(entry_loc(file, 0), 24);
    std::string b = file.bytes.substr(entry_loc(file, 1), 24);
    file.bytes.replace(entry_loc(file, 0), 24, b);
    file.bytes.replace(entry_loc(file, 1), 24, a);
    EXPECT_CODE(ParseAll(file.bytes), StatusCode::kFormatError);
  }
}

TEST(HostileTest, DataLengthDisagreesWithDtypeAndShape) {
  const size_t length_at = 73 + 2 + 1 + 1 + 1 + 3 + 1 + 8 + 16;
  for (uint64_t len : {1u, 20u, 23u, 25u, 48u}) {
    SCOPED_TRACE(len);
    std::string file = GoldenFile();
    PutLE<uint64_t>(file, length_at, len);
    EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
  }
  // A shape whose byte count overflows 64 bits.
  std::string file = GoldenFile();
  PutLE<uint32_t>(file, 73 + 9, 0xFFFFFFFFu);
  PutLE<uint32_t>(file, 73 + 13, 0xFFFFFFFFu);
  EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
}

TEST(HostileTest, UnparseableDtypeInTheIndex) {
  std::string file = GoldenFile();
  file[73 + 6] = 'x';  // "<x4"
  EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
}

TEST(HostileTest, AbsurdNameLength) {
  for (uint16_t len : {uint16_t{2}, uint16_t{1000}, uint16_t{0xFFFF}}) {
    SCOPED_TRACE(len);
    BuiltFile file = BuildFile(GoldenBlueprint(std::nullopt));
    PutLE<uint16_t>(file.bytes, 73, len);
    EXPECT_CODE(ParseAll(file.bytes), StatusCode::kFormatError);
  }
  std::string header = Unhex(kGoldenHeader);
  PutLE<uint16_t>(header, 11, 0xFFFF);
  EXPECT_CODE(ParseTensorHeader(U8(header), header.size(), false, false), StatusCode::kFormatError);
}

TEST(HostileTest, TensorHeaderSizeMismatch) {
  std::string header = Unhex(kGoldenHeader);
  for (uint64_t size : {uint64_t{0}, uint64_t{77}, uint64_t{79}, uint64_t{1} << 40}) {
    SCOPED_TRACE(size);
    std::string h = header;
    PutLE<uint64_t>(h, 0, size);
    EXPECT_CODE(ParseTensorHeader(U8(h), h.size(), false, false), StatusCode::kFormatError);
  }
  // Too short to hold a size at all.
  EXPECT_CODE(ParseTensorHeader(U8(header), 7, false, false), StatusCode::kFormatError);
  // Every prefix of the header is refused, none reads past it.
  for (size_t n = 0; n < header.size(); ++n) {
    std::string h = header.substr(0, n);
    if (n >= 8) PutLE<uint64_t>(h, 0, n);
    EXPECT_FALSE(ParseTensorHeader(U8(h), n, false, false).ok()) << n;
  }
}

TEST(HostileTest, UnknownHashType) {
  for (uint8_t type : {uint8_t{2}, uint8_t{3}, uint8_t{0xFF}}) {
    SCOPED_TRACE(type);
    std::string header = Unhex(kGoldenHeader);
    header[36] = static_cast<char>(type);  // the SHA-256 entry's type byte
    EXPECT_CODE(ParseTensorHeader(U8(header), header.size(), false, false),
                StatusCode::kFormatError);
  }
}

TEST(HostileTest, MalformedHashSection) {
  {
    SCOPED_TRACE("CRC32 with 32 bytes");
    std::string header = Unhex(kGoldenHeader);
    header[31] = 32;
    EXPECT_CODE(ParseTensorHeader(U8(header), header.size(), false, false),
                StatusCode::kFormatError);
  }
  {
    SCOPED_TRACE("section length disagrees with the entries");
    std::string header = Unhex(kGoldenHeader);
    PutLE<uint16_t>(header, 27, 40);
    EXPECT_CODE(ParseTensorHeader(U8(header), header.size(), false, false),
                StatusCode::kFormatError);
  }
  {
    SCOPED_TRACE("more hashes than bytes");
    std::string header = Unhex(kGoldenHeader);
    header[29] = static_cast<char>(200);
    EXPECT_CODE(ParseTensorHeader(U8(header), header.size(), false, false),
                StatusCode::kFormatError);
  }
}

TEST(HostileTest, UnknownTensorType) {
  for (uint8_t type : {uint8_t{3}, uint8_t{0xFF}}) {
    SCOPED_TRACE(type);
    std::string file = GoldenFile();
    file[73 + 3] = static_cast<char>(type);  // metadata entry
    EXPECT_CODE(ParseAll(file), StatusCode::kFormatError);
    std::string header = Unhex(kGoldenHeader);
    header[10] = static_cast<char>(type);  // tensor header
    EXPECT_CODE(ParseTensorHeader(U8(header), header.size(), false, false),
                StatusCode::kFormatError);
  }
}

TEST(HostileTest, CryptInfoLengthOverrun) {
  FileBlueprint bp = GoldenBlueprint(std::nullopt);
  bp.version = 3;
  BuiltFile file = BuildFile(bp);
  const BuiltRecord& r = file.records[0];
  std::string header = file.bytes.substr(r.header_offset, r.header_length);
  ASSERT_TRUE(ParseTensorHeader(U8(header), header.size(), false, true).ok());
  const size_t crypt_at = 70;  // after the hash section
  ASSERT_EQ(GetLE<uint64_t>(header, crypt_at), 2u);
  for (uint64_t len :
       {uint64_t{3}, uint64_t{11}, uint64_t{1} << 32, ~uint64_t{0}, ~uint64_t{0} - 7}) {
    SCOPED_TRACE(len);
    std::string h = header;
    PutLE<uint64_t>(h, crypt_at, len);
    EXPECT_CODE(ParseTensorHeader(U8(h), h.size(), false, true), StatusCode::kFormatError);
  }
  // The same header read as if the file had no crypt info: trailing bytes are
  // allowed (tensorizer takes the data length from the last 8 bytes).
  auto plain = ParseTensorHeader(U8(header), header.size(), false, false);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->data_length, 24);
}

TEST(HostileTest, HeaderDisagreesWithItsEntry) {
  auto index = ParseAll(GoldenFile());
  ASSERT_TRUE(index.ok());
  std::string golden = Unhex(kGoldenHeader);
  auto check = [&](std::string h) {
    auto parsed = ParseTensorHeader(U8(h), h.size(), false, false);
    EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
    if (parsed.ok()) {
      EXPECT_EQ(CheckHeaderMatchesEntry(*parsed, index->entries[0]).code(),
                StatusCode::kFormatError);
    }
  };
  std::string h = golden;
  h[13] = 'b';  // name
  check(h);
  h = golden;
  h[17] = '8';  // dtype "<f8"
  check(h);
  h = golden;
  h[19] = 6;  // shape (6, 3)
  check(h);
  h = golden;
  h[10] = 0;  // type PARAM
  check(h);
  h = golden;
  PutLE<int64_t>(h, 70, -24);  // negative data length
  check(h);
  h = golden;
  PutLE<int64_t>(h, 70, 12);
  check(h);
}

// --- The loader's rules (issue 12 #23) ----------------------------------------
// tensorizer verify and the Python loader disagreed: these files passed
// ParseIndex (so the CLI said OK) while the Python loader refused them. The
// rules now live in ParseIndex, which both use.

Result<Index> ParseBlueprint(std::vector<TensorBlueprint> tensors) {
  FileBlueprint bp;
  bp.version = 2;
  bp.tensors = std::move(tensors);
  BuiltFile file = BuildFile(bp);
  return ParseIndex(file.data(), file.size(), file.size());
}

TensorBlueprint Tensor(std::string name, std::string dtype = "<f4") {
  TensorBlueprint t;
  t.name = std::move(name);
  t.dtype = std::move(dtype);
  t.shape = {1};
  auto info = ParseDtype(t.dtype);
  t.data.assign(info.ok() ? info->itemsize : 4, '\0');
  return t;
}

TEST(LoadableRulesTest, RefusesWhatThePythonLoaderRefuses) {
  struct Case {
    const char* what;
    std::vector<TensorBlueprint> tensors;
    const char* message;
  };
  TensorBlueprint param = Tensor("\x1e[\"a\",0]");
  param.type = TensorType::kParam;
  std::string nested = "\x1e" + std::string(2000, '[') + std::string(2000, ']');
  const Case cases[] = {
      {"empty name", {Tensor("")}, "empty tensor name"},
      {"non-UTF-8 name", {Tensor("w\xff")}, "not valid UTF-8"},
      {"duplicate", {Tensor("a"), Tensor("a")}, "'a' is already used"},
      {"path equal to a plain name", {Tensor("a"), Tensor("\x1e[\"a\"]")}, "already used"},
      {"tensor and prefix", {Tensor("a"), Tensor("\x1e[\"a\",\"b\"]")}, "both a tensor and a prefix"},
      {"mixed key types", {Tensor("\x1e[\"a\",0]"), Tensor("\x1e[\"a\",\"b\"]")}, "mixes key types"},
      {"nested path", {Tensor(nested)}, "nested array"},
      {"float component", {Tensor("\x1e[1.5]")}, "component: 1.5"},
      {"negative index", {Tensor("\x1e[-1]")}, "component: -1"},
      {"empty path", {Tensor("\x1e[]")}, "non-empty array"},
      {"newline", {Tensor("\x1e[\n\"a\"]")}, "newline"},
      {"not an array", {Tensor("\x1e{}x]")}, "non-array"},
      {"structured param", {param}, "not a state_dict entry"},
      {"numpy dtype torch has not", {Tensor("a", "<f16")}, "unsupported dtype string"},
      {"void without a torch name", {Tensor("a", "|V4")}, "unsupported dtype string"},
      {"bool of 4 bytes", {Tensor("a", "<b4")}, "unsupported dtype string"},
      {"unknown torch dtype", {Tensor("a", std::string("<V2\0torch.nosuch", 16))}, "unknown torch"},
      {"wrong width", {Tensor("a", std::string("<V4\0torch.bfloat16", 18))}, "wrong width"},
      {"width numpy lacks", {Tensor("a", std::string("<V3\0torch.bfloat16", 18))}, "wrong width"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto index = ParseBlueprint(c.tensors);
    ASSERT_FALSE(index.ok());
    EXPECT_EQ(index.status().code(), StatusCode::kFormatError);
    EXPECT_NE(index.status().message().find(c.message), std::string::npos)
        << index.status().message();
    EXPECT_NE(index.status().message().find("index entry"), std::string::npos);
  }
}

TEST(LoadableRulesTest, AcceptsWhatThePythonLoaderAccepts) {
  auto index = ParseBlueprint({Tensor("a.b"), Tensor("\x1e[\"m\",0,\"w\"]"),
                               Tensor("\x1e[\"m\",1,\"w\"]"), Tensor("\x1e[\"z\", -0]"),
                               Tensor("\x1e[\"big\",123456789012345678901234567890]"),
                               Tensor("\xc3\xa9\x01"), Tensor("b", std::string("<V2\0torch.half", 14)),
                               Tensor("c", std::string("|V1\0torch.float8_e4m3fn", 23)),
                               Tensor("d", "?"), Tensor("e", "<c16")});
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->entries.size(), 10u);
}

TEST(LoadableRulesTest, DecodeTensorName) {
  auto plain = DecodeTensorName("\x1e" "a");
  EXPECT_FALSE(plain.ok());
  auto p = DecodeTensorName("\x1e[\"layers\", 0 ,\"w\\u0041\",18446744073709551616]");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(p->size(), 4u);
  EXPECT_EQ((*p)[0], (PathComponent{false, "layers"}));
  EXPECT_EQ((*p)[1], (PathComponent{true, "0"}));
  EXPECT_EQ((*p)[2], (PathComponent{false, "wA"}));
  EXPECT_EQ((*p)[3], (PathComponent{true, "18446744073709551616"}));
  auto one = DecodeTensorName("weight");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, (std::vector<PathComponent>{{false, "weight"}}));
  // Python cannot read integers of more than 4300 digits.
  EXPECT_FALSE(DecodeTensorName("\x1e[" + std::string(4301, '7') + "]").ok());
  EXPECT_FALSE(DecodeTensorName("\x1e[true]").ok());
  EXPECT_FALSE(DecodeTensorName("\x1e[null]").ok());
  EXPECT_FALSE(DecodeTensorName("\x1e[1e3]").ok());
  EXPECT_FALSE(DecodeTensorName("\x1e[\"a\"][\"b\"]").ok());
}

TEST(LoadableRulesTest, MessagesEscapeControlCharacters) {
  auto index = ParseBlueprint({Tensor("a\x01\x1b[2J", "|V4")});
  ASSERT_FALSE(index.ok());
  const std::string& m = index.status().message();
  EXPECT_NE(m.find("a\\x01\\x1b[2J"), std::string::npos) << m;
  EXPECT_EQ(m.find('\x1b'), std::string::npos);
}

}  // namespace
}  // namespace tensorizer
