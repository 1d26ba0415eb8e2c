// Mapped loads (tensorizer/mapped.h) and the aligned writer
// (WriterOptions::data_alignment_bytes): files written both ways load
// bit-exact mapped; unaligned tensors are copied and counted; hashes are
// checked on the mapped bytes; a file that shrank since it was opened is
// refused before it is mapped; writes to the mapping never reach the file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/load.h"
#include "tensorizer/mapped.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"

namespace tensorizer {
namespace {

namespace fs = std::filesystem;

struct Sample {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::string data;
  bool meta = false;
};

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Names of lengths 1..9 put the data at every offset modulo 8.
std::vector<Sample> Samples() {
  std::vector<Sample> out;
  const char* dtypes[] = {"<f4", "<f2", "<i8", "|i1", "<c16", "|b1"};
  const uint64_t sizes[] = {4, 2, 8, 1, 16, 1};
  for (int i = 0; i < 18; ++i) {
    Sample s;
    s.name = std::string(1 + i % 9, 'n') + std::to_string(i);
    s.dtype = dtypes[i % 6];
    s.shape = {static_cast<uint64_t>(3 + i)};
    s.data = RandomBytes(sizes[i % 6] * s.shape[0], i);
    if (s.dtype == "|b1") {
      for (char& c : s.data) c = static_cast<char>(c & 1);
    }
    out.push_back(s);
  }
  out.push_back({"bf", std::string("<V2\0torch.bfloat16", 18), {3, 5}, RandomBytes(30, 99)});
  out.push_back({"meta", "<f4", {4, 4}, std::string(64, '\0'), true});
  out.push_back({"empty", "<f4", {0, 3}, ""});
  return out;
}

class MappedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "tensorizer_mapped_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/m.tensors";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  Status Write(const std::vector<Sample>& samples, uint64_t align) {
    WriterOptions o;
    o.data_alignment_bytes = align;
    auto sink = CreateFileSink(path_);
    if (!sink.ok()) return sink.status();
    auto w = Writer::Create(std::move(sink).value(), o);
    if (!w.ok()) return w.status();
    std::vector<TensorWrite> batch;
    for (const Sample& s : samples) {
      TensorWrite t;
      t.name = s.name;
      t.type = TensorType::kStateDict;
      t.dtype = s.dtype;
      t.shape = s.shape;
      t.meta = s.meta;
      t.data = reinterpret_cast<const uint8_t*>(s.data.data());
      t.data_length = s.meta ? 0 : s.data.size();
      batch.push_back(t);
    }
    TZR_RETURN_IF_ERROR((*w)->Write(batch));
    return (*w)->Close();
  }

  struct Opened {
    std::shared_ptr<const Source> source;
    Index index;
  };
  Opened Open() {
    auto source = OpenFileSource(path_);
    EXPECT_TRUE(source.ok()) << source.status().ToString();
    Opened o{std::move(source).value(), {}};
    auto index = ReadIndex(*o.source);
    EXPECT_TRUE(index.ok()) << index.status().ToString();
    o.index = std::move(index).value();
    return o;
  }

  static std::vector<size_t> All(const Index& index) {
    std::vector<size_t> v(index.entries.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = i;
    return v;
  }

  static std::string Bytes(const MappedLoad& load, const MappedTensor& t) {
    const uint8_t* base = t.mapped ? load.mapping()->data() : load.arena()->data();
    return std::string(reinterpret_cast<const char*>(base + t.offset), t.bytes);
  }

  Result<MappedLoad> RunMapped(const Opened& o, HashCheck verify = HashCheck::kNone) {
    auto mapping = FileMapping::Map(*o.source);
    if (!mapping.ok()) return mapping.status();
    MappedLoadOptions opts;
    opts.verify = verify;
    opts.num_threads = 3;
    return MappedLoad::Run(*o.source, o.index, *mapping, All(o.index), opts);
  }

  std::string dir_, path_;
};

TEST_F(MappedTest, UnalignedTensorsAreCopiedTheRestMapped) {
  const auto samples = Samples();
  ASSERT_TRUE(Write(samples, 0).ok());
  Opened o = Open();
  auto load = RunMapped(o, HashCheck::kAll);
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  size_t copied = 0, mapped = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const MappedTensor& t = load->tensors()[i];
    const TensorEntry& e = o.index.entries[i];
    SCOPED_TRACE(samples[i].name);
    EXPECT_EQ(Bytes(*load, t), samples[i].data);
    const bool aligned = e.data_offset % MappedAlignment(*ParseDtype(e.dtype)) == 0;
    EXPECT_EQ(t.mapped, aligned && !samples[i].meta);
    if (t.mapped) {
      EXPECT_EQ(t.offset, e.data_offset);
      ++mapped;
    } else if (!samples[i].meta) {
      EXPECT_EQ(t.offset % 64, 0u);
      ++copied;
    }
  }
  EXPECT_GT(copied, 0u);
  EXPECT_GT(mapped, 2u);
  EXPECT_EQ(load->copied_count(), copied);
}

TEST_F(MappedTest, AlignedWriterMapsEveryTensor) {
  const auto samples = Samples();
  ASSERT_TRUE(Write(samples, 64).ok());
  Opened o = Open();
  for (const TensorEntry& e : o.index.entries) EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
  auto load = RunMapped(o, HashCheck::kAll);
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  EXPECT_EQ(load->copied_count(), 0u);
  for (size_t i = 0; i < samples.size(); ++i) {
    EXPECT_EQ(Bytes(*load, load->tensors()[i]), samples[i].data) << samples[i].name;
  }
  // The normal load reads the padded headers too, hashes included.
  LoadOptions lo;
  lo.verify = HashCheck::kAll;
  auto normal = Load::Start(o.source, std::make_shared<const Index>(o.index), All(o.index), lo);
  ASSERT_TRUE(normal.ok());
  ASSERT_TRUE((*normal)->Wait().ok());
}

TEST_F(MappedTest, AlignmentMustBeAPowerOfTwoUpTo4096) {
  for (uint64_t bad : {3ull, 48ull, 8192ull}) {
    Status st = Write(Samples(), bad);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(fs::exists(path_));
}

TEST_F(MappedTest, HashesAreCheckedOnTheMappedBytes) {
  ASSERT_TRUE(Write(Samples(), 64).ok());
  Opened o = Open();
  const TensorEntry& e = o.index.entries[0];
  {
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(e.data_offset + 1));
    f.put('\x7f');
  }
  EXPECT_TRUE(RunMapped(o).ok());
  auto bad = RunMapped(o, HashCheck::kFast);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kHashMismatch);
  EXPECT_NE(bad.status().message().find("CRC32"), std::string::npos);
}

TEST_F(MappedTest, RefusesAFileThatShrankSinceItWasOpened) {
  ASSERT_TRUE(Write(Samples(), 0).ok());
  Opened o = Open();
  ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(o.source->size() - 9)), 0);
  auto mapping = FileMapping::Map(*o.source);
  ASSERT_FALSE(mapping.ok());
  EXPECT_EQ(mapping.status().code(), StatusCode::kFormatError);
  EXPECT_NE(mapping.status().message().find("shrank"), std::string::npos);
}

TEST_F(MappedTest, RefusesSourcesThatAreNotLocalFiles) {
  auto mem = MakeMemorySource("|TZR|", "<memory>");
  auto mapping = FileMapping::Map(*mem);
  ASSERT_FALSE(mapping.ok());
  EXPECT_EQ(mapping.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(MappedTest, WritesStayInTheProcess) {
  const auto samples = Samples();
  ASSERT_TRUE(Write(samples, 64).ok());
  std::ifstream before_f(path_, std::ios::binary);
  const std::string before(std::istreambuf_iterator<char>(before_f), {});
  {
    Opened o = Open();
    auto load = RunMapped(o);
    ASSERT_TRUE(load.ok());
    const MappedTensor& t = load->tensors()[0];
    std::memset(load->mapping()->data() + t.offset, 0xAB, t.bytes);
  }
  std::ifstream after_f(path_, std::ios::binary);
  const std::string after(std::istreambuf_iterator<char>(after_f), {});
  EXPECT_TRUE(before == after);
}

}  // namespace
}  // namespace tensorizer
