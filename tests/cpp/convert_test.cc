// safetensors headers as the safetensors package writes them (golden bytes
// from safetensors 0.8.0), the dtype and key mappings, and ConvertFile /
// CopyFile on real files: round trips, batching, and failures that must leave
// no output behind.
#include "tensorizer/convert.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tensorizer/crypto.h"
#include "tensorizer/write.h"

namespace tensorizer {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;

const char kBf16[] = "<V2\0torch.bfloat16";
const std::string kBf16Dtype(kBf16, sizeof kBf16 - 1);
const char kE4m3[] = "|V1\0torch.float8_e4m3fn";
const std::string kE4m3Dtype(kE4m3, sizeof kE4m3 - 1);

std::string Opaque(const std::string& prefix, const std::string& torch_name) {
  return prefix + '\0' + torch_name;
}

// What safetensors.torch.save writes for these tensors (its JSON; the u64
// length and the padding are checked separately):
//   {"b": zeros(3), "a": zeros(2), "c": zeros(5, bool), "z": zeros(1, f64),
//    "h": zeros(3, bf16), 'q"\\\n\x01é\x7f\t/': zeros(1), "empty": zeros(0),
//    "scalar": tensor(0.), "e4": zeros(2, 1, float8_e4m3fn), "u8": zeros(2, u8)}
const char kGoldenJson[] =
    "{\"z\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
    "\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[16,28]},"
    "\"empty\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[28,28]},"
    "\"q\\\"\\\\\\n\\u0001\xc3"
    "\xa9"
    "\x7f"
    "\\t/\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[28,32]},"
    "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[32,36]},"
    "\"h\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[36,42]},"
    "\"e4\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,1],\"data_offsets\":[42,44]},"
    "\"u8\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[44,46]},"
    "\"c\":{\"dtype\":\"BOOL\",\"shape\":[5],\"data_offsets\":[46,51]}}";

std::vector<SafetensorsTensor> GoldenTensors() {
  // Deliberately not in the package's order.
  return {
      {"b", "<f4", {3}},     {"a", "<f4", {2}},      {"c", "|b1", {5}},
      {"z", "<f8", {1}},     {"h", kBf16Dtype, {3}}, {"q\"\\\n\x01\xc3\xa9\x7f\t/", "<f4", {1}},
      {"empty", "<f4", {0}}, {"scalar", "<f4", {}},  {"e4", kE4m3Dtype, {2, 1}},
      {"u8", "|u1", {2}},
  };
}

uint64_t LengthPrefix(const std::string& header) {
  uint64_t n;
  std::memcpy(&n, header.data(), 8);
  return n;
}

TEST(EncodeSafetensorsHeaderTest, MatchesTheSafetensorsPackageByteForByte) {
  auto layout = EncodeSafetensorsHeader(GoldenTensors());
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  const std::string json(kGoldenJson);
  // 583 bytes of JSON, padded with one space to 584, as the package does.
  ASSERT_EQ(json.size(), 583u);
  EXPECT_EQ(LengthPrefix(layout->header), 584u);
  EXPECT_EQ(layout->header.substr(8), json + " ");
  EXPECT_EQ(layout->file_size, 8u + 584u + 51u);
  // Data order and offsets follow the header.
  const std::vector<size_t> order = {3, 1, 0, 6, 5, 7, 4, 8, 9, 2};
  EXPECT_EQ(layout->order, order);
  const uint64_t base = 8 + 584;
  EXPECT_EQ(layout->data_offsets[3], base + 0);   // z
  EXPECT_EQ(layout->data_offsets[0], base + 16);  // b
  EXPECT_EQ(layout->data_offsets[2], base + 46);  // c
  EXPECT_EQ(layout->data_lengths[2], 5u);
  EXPECT_EQ(layout->data_lengths[6], 0u);
}

TEST(EncodeSafetensorsHeaderTest, PadsWithSpacesToAMultipleOfEight) {
  for (size_t len = 1; len <= 9; ++len) {
    auto layout = EncodeSafetensorsHeader({{std::string(len, 'x'), "<f4", {1}}});
    ASSERT_TRUE(layout.ok());
    uint64_t n = LengthPrefix(layout->header);
    EXPECT_EQ(n % 8, 0u);
    EXPECT_EQ(layout->header.size(), 8 + n);
    std::string json = layout->header.substr(8);
    size_t end = json.find_last_not_of(' ');
    EXPECT_EQ(json[end], '}');
    EXPECT_LT(n - (end + 1), 8u);
  }
}

TEST(EncodeSafetensorsHeaderTest, EmptyFileAndMetadata) {
  // save({}) and save({}, metadata={"a": "b"}) and metadata={}.
  auto empty = EncodeSafetensorsHeader({});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->header, "\x08\0\0\0\0\0\0\0{}      "s);
  auto meta = EncodeSafetensorsHeader({}, std::map<std::string, std::string>{{"a", "b"}});
  ASSERT_TRUE(meta.ok());
  EXPECT_EQ(meta->header.substr(8), "{\"__metadata__\":{\"a\":\"b\"}}      ");
  auto none = EncodeSafetensorsHeader({{"x", "<f4", {1}}}, std::map<std::string, std::string>{});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->header.substr(8),
            "{\"__metadata__\":{},\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
  // Entries sorted by key (the package's order is its hash map's).
  auto sorted = EncodeSafetensorsHeader(
      {}, std::map<std::string, std::string>{{"z", "1"}, {"a", "2"}, {"m", "\n"}});
  ASSERT_TRUE(sorted.ok());
  EXPECT_EQ(sorted->header.substr(8, 43),
            "{\"__metadata__\":{\"a\":\"2\",\"m\":\"\\n\",\"z\":\"1\"}}");
}

TEST(EncodeSafetensorsHeaderTest, OrdersByDtypeDescendingThenName) {
  // The package's Dtype enum order, all of it we can express.
  std::vector<SafetensorsTensor> tensors = {
      {"bool", "|b1", {1}},
      {"u8", "|u1", {1}},
      {"i8", "|i1", {1}},
      {"e5m2", Opaque("|V1", "torch.float8_e5m2"), {1}},
      {"e4m3", Opaque("|V1", "torch.float8_e4m3fn"), {1}},
      {"e8m0", Opaque("|V1", "torch.float8_e8m0fnu"), {1}},
      {"i16", "<i2", {1}},
      {"u16", "<u2", {1}},
      {"f16", "<f2", {1}},
      {"bf16", kBf16Dtype, {1}},
      {"i32", "<i4", {1}},
      {"u32", "<u4", {1}},
      {"f32", "<f4", {1}},
      {"c64", "<c8", {1}},
      {"f64", "<f8", {1}},
      {"i64", "<i8", {1}},
      {"u64", "<u8", {1}},
  };
  auto layout = EncodeSafetensorsHeader(tensors);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  for (size_t k = 0; k < tensors.size(); ++k) {
    EXPECT_EQ(layout->order[k], tensors.size() - 1 - k) << k;
  }
  // Same dtype: by name, bytewise (uppercase before lowercase, UTF-8 last).
  auto names = EncodeSafetensorsHeader(
      {{"b", "<f4", {1}}, {"\xc3\xa9", "<f4", {1}}, {"B", "<f4", {1}}, {"a", "<f4", {1}}});
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(names->order, (std::vector<size_t>{2, 3, 0, 1}));
  // kAsGiven keeps the input order.
  auto given = EncodeSafetensorsHeader(tensors, std::nullopt, SafetensorsOrder::kAsGiven);
  ASSERT_TRUE(given.ok());
  for (size_t k = 0; k < tensors.size(); ++k) EXPECT_EQ(given->order[k], k);
  EXPECT_EQ(given->data_offsets[0], given->header.size());
}

TEST(EncodeSafetensorsHeaderTest, RejectsWhatSafetensorsCannotHoldNamingTheTensor) {
  struct Case {
    std::string dtype;
    std::string expect;
  };
  const Case cases[] = {
      {Opaque("<V4", "torch.complex32"), "torch.complex32"},
      {"<c16", "<c16"},
      {Opaque("|V1", "torch.float8_e4m3fnuz"), "torch.float8_e4m3fnuz"},
      {Opaque("|V1", "torch.float8_e5m2fnuz"), "torch.float8_e5m2fnuz"},
      {Opaque("|V1", "torch.bits8"), "torch.bits8"},
      {Opaque("|V1", "torch.int4"), "torch.int4"},
      {Opaque("|V1", "torch.uint3"), "torch.uint3"},
      {">f4", "big-endian"},
      {"<f16", "<f16"},
  };
  for (const Case& c : cases) {
    auto layout = EncodeSafetensorsHeader({{"ok", "<f4", {1}}, {"layer.w", c.dtype, {2}}});
    ASSERT_FALSE(layout.ok()) << c.expect;
    EXPECT_EQ(layout.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(layout.status().message().find("tensor 'layer.w'"), std::string::npos)
        << layout.status().message();
    EXPECT_NE(layout.status().message().find(c.expect), std::string::npos)
        << layout.status().message();
  }
}

TEST(EncodeSafetensorsHeaderTest, RejectsBadNames) {
  auto dup = EncodeSafetensorsHeader({{"a", "<f4", {1}}, {"a", "<i4", {1}}});
  EXPECT_EQ(dup.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dup.status().message().find("'a' appears twice"), std::string::npos);
  auto reserved = EncodeSafetensorsHeader({{"__metadata__", "<f4", {1}}});
  EXPECT_EQ(reserved.status().code(), StatusCode::kInvalidArgument);
  auto utf8 = EncodeSafetensorsHeader({{"bad\xff", "<f4", {1}}});
  EXPECT_EQ(utf8.status().code(), StatusCode::kInvalidArgument);
  auto overflow = EncodeSafetensorsHeader({{"big", "<f8", {1ull << 62, 8}}});
  EXPECT_EQ(overflow.status().code(), StatusCode::kInvalidArgument);
}

TEST(SafetensorsDtypeTest, InverseOfTheReadMapping) {
  const std::pair<std::string, std::string> cases[] = {
      {"<f8", "F64"},  {"<f4", "F32"}, {"<f2", "F16"},          {kBf16Dtype, "BF16"},
      {"<i8", "I64"},  {"<i4", "I32"}, {"<i2", "I16"},          {"|i1", "I8"},
      {"<u8", "U64"},  {"<u4", "U32"}, {"<u2", "U16"},          {"|u1", "U8"},
      {"|b1", "BOOL"}, {"<c8", "C64"}, {kE4m3Dtype, "F8_E4M3"}, {"=f4", "F32"},
      {"<b1", "BOOL"}, {"|i1", "I8"},
  };
  for (const auto& [dtype, expect] : cases) {
    auto st = SafetensorsDtype(dtype);
    ASSERT_TRUE(st.ok()) << dtype << ": " << st.status().ToString();
    EXPECT_EQ(*st, expect);
  }
  EXPECT_EQ(*SafetensorsDtype(Opaque("|V1", "torch.float8_e5m2")), "F8_E5M2");
  EXPECT_EQ(*SafetensorsDtype(Opaque("|V1", "torch.float8_e8m0fnu")), "F8_E8M0");
  // An opaque name with the wrong width is not that type.
  EXPECT_FALSE(SafetensorsDtype(Opaque("<V4", "torch.bfloat16")).ok());
}

TEST(SafetensorsKeyTest, PlainNamesAndPaths) {
  EXPECT_EQ(*SafetensorsKey("model.layer.weight"), "model.layer.weight");
  EXPECT_EQ(*SafetensorsKey("\x1e[\"layers\",0,\"weight\"]"), "layers.0.weight");
  EXPECT_EQ(*SafetensorsKey("\x1e[\"a\"]"), "a");
  EXPECT_EQ(*SafetensorsKey("\x1e[\"\xc3\xa9\",12]"), "\xc3\xa9.12");
  EXPECT_FALSE(SafetensorsKey("").ok());
  EXPECT_FALSE(SafetensorsKey("\xff").ok());
  EXPECT_FALSE(SafetensorsKey("\x1e[]").ok());
  EXPECT_FALSE(SafetensorsKey("\x1e{\"a\":1}").ok());
  EXPECT_FALSE(SafetensorsKey("\x1e[1.5]").ok());
  EXPECT_FALSE(SafetensorsKey("\x1e[-1]").ok());
}

TEST(IsRemoteUriTest, Schemes) {
  EXPECT_TRUE(IsRemoteUri("s3://bucket/key"));
  EXPECT_TRUE(IsRemoteUri("https://host/path"));
  EXPECT_FALSE(IsRemoteUri("file:///tmp/x"));
  EXPECT_FALSE(IsRemoteUri("/tmp/x"));
  EXPECT_FALSE(IsRemoteUri("relative/dir://x"));
  EXPECT_FALSE(IsRemoteUri("://x"));
}

// --- Files ------------------------------------------------------------------

class ConvertFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "tensorizer_convert_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  static std::string Read(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  static void WriteBytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
  }
  std::vector<std::string> Files() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }

  // A safetensors file of several tensors, built with our own encoder.
  std::string MakeSafetensors(const std::string& name, int count) {
    std::vector<SafetensorsTensor> tensors;
    std::vector<std::string> data;
    for (int i = 0; i < count; ++i) {
      tensors.push_back(
          {"t" + std::to_string(i), i % 2 ? "<f4" : "|u1", {static_cast<uint64_t>(10 + i)}});
    }
    auto layout = EncodeSafetensorsHeader(tensors);
    EXPECT_TRUE(layout.ok());
    std::string bytes = layout->header;
    bytes.resize(layout->file_size);
    for (size_t i = 0; i < tensors.size(); ++i) {
      for (uint64_t b = 0; b < layout->data_lengths[i]; ++b) {
        bytes[layout->data_offsets[i] + b] = static_cast<char>(i * 31 + b);
      }
    }
    WriteBytes(Path(name), bytes);
    return Path(name);
  }

  std::string dir_;
};

TEST_F(ConvertFileTest, RoundTripIsByteExactWhateverTheBatchSize) {
  std::string in = MakeSafetensors("in.safetensors", 9);
  std::string whole_tensors;
  for (uint64_t batch : {1ull << 30, 64ull, 1ull}) {
    ConvertOptions to_tensors;
    to_tensors.batch_bytes = batch;
    auto r1 = ConvertFile(in, Path("mid.tensors"), to_tensors);
    ASSERT_TRUE(r1.ok()) << r1.status().ToString();
    EXPECT_EQ(r1->input_format, FileFormat::kSafetensors);
    EXPECT_EQ(r1->output_format, FileFormat::kTensorizer);
    EXPECT_EQ(r1->tensor_count, 9u);
    EXPECT_EQ(r1->output_version, 1u);
    if (batch == 1) EXPECT_EQ(r1->batches, 9u);
    std::string mid = Read(Path("mid.tensors"));
    if (whole_tensors.empty()) whole_tensors = mid;
    EXPECT_EQ(mid, whole_tensors) << "batch " << batch;
    ConvertOptions back;
    back.batch_bytes = batch;
    back.verify = HashCheck::kAll;
    auto r2 = ConvertFile("file://" + Path("mid.tensors"), Path("out.safetensors"), back);
    ASSERT_TRUE(r2.ok()) << r2.status().ToString();
    EXPECT_EQ(Read(Path("out.safetensors")), Read(in));
  }
  EXPECT_EQ(Files(),
            (std::vector<std::string>{"in.safetensors", "mid.tensors", "out.safetensors"}));
}

TEST_F(ConvertFileTest, EncryptedOutputNeedsTheKeyToConvertBack) {
  std::string in = MakeSafetensors("in.safetensors", 3);
  auto key = RandomKey();
  ASSERT_TRUE(key.ok());
  ConvertOptions enc;
  enc.encryption = WriterEncryption{*key, std::nullopt};
  ASSERT_TRUE(ConvertFile(in, Path("enc.tensors"), enc).ok());
  EXPECT_EQ(ConvertFile(Path("enc.tensors"), Path("x.safetensors")).status().code(),
            StatusCode::kCryptography);
  ConvertOptions wrong;
  wrong.decryption = DecryptionOptions{};
  wrong.decryption->key = CryptKey{};
  EXPECT_FALSE(ConvertFile(Path("enc.tensors"), Path("x.safetensors"), wrong).ok());
  EXPECT_FALSE(fs::exists(Path("x.safetensors")));
  ConvertOptions dec;
  dec.decryption = DecryptionOptions{};
  dec.decryption->key = *key;
  ASSERT_TRUE(ConvertFile(Path("enc.tensors"), Path("x.safetensors"), dec).ok());
  EXPECT_EQ(Read(Path("x.safetensors")), Read(in));
  // Decrypting into .tensors gives the file an unencrypted conversion gives.
  ASSERT_TRUE(ConvertFile(Path("enc.tensors"), Path("plain.tensors"), dec).ok());
  ASSERT_TRUE(ConvertFile(in, Path("direct.tensors")).ok());
  EXPECT_EQ(Read(Path("plain.tensors")), Read(Path("direct.tensors")));
  // Encryption and safetensors output do not mix.
  ConvertOptions bad = enc;
  bad.to = ConvertTo::kSafetensors;
  EXPECT_EQ(ConvertFile(in, Path("y"), bad).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(ConvertFileTest, FailuresLeaveNoOutput) {
  // A complex128 tensor: .tensors can hold it, safetensors cannot.
  {
    auto sink = CreateFileSink(Path("c.tensors"));
    ASSERT_TRUE(sink.ok());
    auto w = Writer::Create(std::move(sink).value(), {});
    ASSERT_TRUE(w.ok());
    std::string data(32, '\1');
    TensorWrite a{
        "fine", TensorType::kParam, 0, "<f4", {2}, reinterpret_cast<const uint8_t*>(data.data()),
        8};
    TensorWrite c{
        "z", TensorType::kParam, 0, "<c16", {2}, reinterpret_cast<const uint8_t*>(data.data()), 32};
    ASSERT_TRUE((*w)->Write({a, c}).ok());
    ASSERT_TRUE((*w)->Close().ok());
  }
  auto r = ConvertFile(Path("c.tensors"), Path("c.safetensors"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("tensor 'z'"), std::string::npos) << r.status().message();
  // A flipped data byte fails a verified conversion, in the last batch.
  std::string bytes = Read(Path("c.tensors"));
  bytes[bytes.size() - 9] ^= 1;
  WriteBytes(Path("flipped.tensors"), bytes);
  ConvertOptions verify;
  verify.verify = HashCheck::kFast;
  verify.batch_bytes = 1;
  verify.to = ConvertTo::kTensors;
  auto h = ConvertFile(Path("flipped.tensors"), Path("out.tensors"), verify);
  EXPECT_EQ(h.status().code(), StatusCode::kHashMismatch) << h.status().ToString();
  // Missing input; an output scheme no sink writes.
  EXPECT_EQ(ConvertFile(Path("nope"), Path("out.tensors")).status().code(), StatusCode::kIoError);
  EXPECT_EQ(ConvertFile(Path("c.tensors"), "https://host/out.tensors").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Files(), (std::vector<std::string>{"c.tensors", "flipped.tensors"}));
}

TEST_F(ConvertFileTest, CopyFileCopiesInChunksAndReportsProgress) {
  std::string bytes(1000003, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + i / 251);
  WriteBytes(Path("src.bin"), bytes);
  CopyOptions options;
  options.chunk_bytes = 4096;
  options.num_threads = 3;
  uint64_t last = 0, calls = 0;
  options.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_EQ(total, bytes.size());
    EXPECT_GE(done, last);
    last = done;
    ++calls;
  };
  auto n = CopyFile(Path("src.bin"), "file://" + Path("dst.bin"), options);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, bytes.size());
  EXPECT_EQ(last, bytes.size());
  EXPECT_GE(calls, 1u);
  EXPECT_EQ(Read(Path("dst.bin")), bytes);
  // Into a directory, under the source's name; empty files too.
  fs::create_directory(Path("sub"));
  WriteBytes(Path("empty"), "");
  ASSERT_TRUE(CopyFile(Path("src.bin"), Path("sub")).ok());
  ASSERT_TRUE(CopyFile(Path("empty"), Path("sub/")).ok());
  EXPECT_EQ(Read(Path("sub/src.bin")), bytes);
  EXPECT_TRUE(fs::exists(Path("sub/empty")));
  // Schemes with no sink or no source are refused, naming the scheme (s3://
  // and http(s):// are covered against real servers in tests/test_cli.py);
  // a missing source leaves nothing.
  auto http = CopyFile(Path("src.bin"), "https://host/key");
  EXPECT_EQ(http.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(http.status().message().find("'https'"), std::string::npos) << http.status().message();
  EXPECT_EQ(CopyFile("ftp://h/x", Path("y")).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(CopyFile(Path("nope"), Path("y")).ok());
  EXPECT_FALSE(fs::exists(Path("y")));
}

}  // namespace
}  // namespace tensorizer
