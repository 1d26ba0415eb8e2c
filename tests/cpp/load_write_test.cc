// End to end in C++: Writer to a file in a temporary directory, then
// ReadIndex + Load back, with and without hash verification, many threads
// and chunk sizes small enough to split every record. Then damaged files:
// flipped bytes, truncation, a metadata block that overflows.
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <mutex>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/load.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"
#include "test_files.h"

// Whether a save syncs its data before the rename cannot be seen from the
// file system, and no real component fails fsync on demand. So this binary
// interposes fsync and rename (its definitions win over libc's for the
// statically linked library): while `recording` is set they log each call
// with the paths involved and can fail fsync with `fail_fsync_errno`; they
// always forward to libc otherwise.
namespace syscall_log {
std::mutex mu;
bool recording = false;
int fail_fsync_errno = 0;
std::vector<std::string> events;

std::string PathOfFd(int fd) {
  char buf[4096];
  ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
}
}  // namespace syscall_log

extern "C" int fsync(int fd) {
  static auto* real = reinterpret_cast<int (*)(int)>(::dlsym(RTLD_NEXT, "fsync"));
  {
    std::lock_guard<std::mutex> lock(syscall_log::mu);
    if (syscall_log::recording) {
      syscall_log::events.push_back("fsync " + syscall_log::PathOfFd(fd));
      if (syscall_log::fail_fsync_errno != 0) {
        errno = syscall_log::fail_fsync_errno;
        return -1;
      }
    }
  }
  return real(fd);
}

extern "C" int rename(const char* from, const char* to) noexcept {
  static auto* real =
      reinterpret_cast<int (*)(const char*, const char*)>(::dlsym(RTLD_NEXT, "rename"));
  {
    std::lock_guard<std::mutex> lock(syscall_log::mu);
    if (syscall_log::recording) {
      syscall_log::events.push_back(std::string("rename ") + from + " " + to);
    }
  }
  return real(from, to);
}

namespace tensorizer {
namespace {

namespace fs = std::filesystem;

// One tensor to write and what a load must give back.
struct Sample {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::string data;  // what a load returns (zeros for meta tensors)
  bool meta = false;
  TensorType type = TensorType::kStateDict;
  uint16_t module_idx = 0;
};

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

std::vector<Sample> PlainSamples() {
  return {
      {"embed.weight", "<f4", {300, 1000}, RandomBytes(1200000, 1), false, TensorType::kParam, 1},
      {"layer.0.bias", "<f2", {7}, RandomBytes(14, 2), false, TensorType::kParam, 2},
      {"step", "<i8", {}, RandomBytes(8, 3), false, TensorType::kBuffer, 2},
      {"empty", "<f4", {0, 4}, "", false, TensorType::kStateDict, 0},
      {"mask", "|b1", {5}, std::string("\x01\x00\x01\x01\x00", 5)},
      {"z", "<c16", {2}, RandomBytes(32, 4)},
      {"\x1e[\"nested\",0]", "|u1", {100003}, RandomBytes(100003, 5)},
  };
}

Sample OpaqueSample() {
  return {"bf", std::string("<V2\0torch.bfloat16", 18), {3, 5}, RandomBytes(30, 6)};
}

Sample MetaSample() {
  return {"meta.weight", "<f4", {64, 65}, std::string(64 * 65 * 4, '\0'), true};
}

TensorWrite ToWrite(const Sample& s) {
  TensorWrite w;
  w.name = s.name;
  w.type = s.type;
  w.module_idx = s.module_idx;
  w.dtype = s.dtype;
  w.shape = s.shape;
  w.meta = s.meta;
  if (!s.meta) {
    w.data = reinterpret_cast<const uint8_t*>(s.data.data());
    w.data_length = s.data.size();
  }
  return w;
}

std::vector<TensorWrite> ToWrites(const std::vector<Sample>& samples) {
  std::vector<TensorWrite> out;
  for (const Sample& s : samples) out.push_back(ToWrite(s));
  return out;
}

std::vector<size_t> AllOf(const Index& index) {
  std::vector<size_t> v(index.entries.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = i;
  return v;
}

std::string ReadWhole(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void WriteWhole(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

class LoadWriteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "tensorizer_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string PathOf(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::vector<std::string> DirEntries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  // Writes the samples in the given batches and closes the writer.
  Status WriteFile(const std::string& path, const std::vector<std::vector<Sample>>& batches,
                   uint32_t* version = nullptr, WriterOptions options = {}) {
    auto sink = CreateFileSink(path);
    if (!sink.ok()) return sink.status();
    auto writer = Writer::Create(std::move(sink).value(), options);
    if (!writer.ok()) return writer.status();
    for (const auto& batch : batches) TZR_RETURN_IF_ERROR((*writer)->Write(ToWrites(batch)));
    if (version) *version = (*writer)->version();
    return (*writer)->Close();
  }

  struct Loaded {
    std::shared_ptr<const Source> source;
    std::shared_ptr<const Index> index;
    std::unique_ptr<Load> load;
  };

  // Opens the file and starts loading every tensor.
  Result<Loaded> StartLoad(const std::string& path, const LoadOptions& options,
                           const FileOptions& file = FileOptions()) {
    auto source = OpenFileSource(path, file);
    if (!source.ok()) return source.status();
    Loaded out;
    out.source = std::move(source).value();
    auto index = ReadIndex(*out.source);
    if (!index.ok()) return index.status();
    out.index = std::make_shared<const Index>(std::move(index).value());
    auto load = Load::Start(out.source, out.index, AllOf(*out.index), options);
    if (!load.ok()) return load.status();
    out.load = std::move(load).value();
    return out;
  }

  static std::string TensorBytes(const Load& load, size_t i) {
    return std::string(reinterpret_cast<const char*>(load.arena()->data() + load.arena_offset(i)),
                       load.arena_bytes(i));
  }

  std::string dir_;
};

void ExpectSamples(const Load& load, const Index& index, const std::vector<Sample>& samples) {
  ASSERT_EQ(load.tensor_count(), samples.size());
  ASSERT_EQ(index.entries.size(), samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    SCOPED_TRACE(s.name);
    const TensorEntry& e = load.entry(i);
    EXPECT_EQ(e.name, s.name);
    EXPECT_EQ(e.dtype, s.dtype);
    EXPECT_EQ(e.shape, s.shape);
    EXPECT_EQ(e.type, s.type);
    EXPECT_EQ(e.data_length, s.meta ? 0 : s.data.size());
    EXPECT_EQ(load.arena_bytes(i), s.data.size());
    // 64-aligned, or placed for direct reads: congruent to the file offset
    // modulo the direct block (512 here) and aligned to the element size.
    const uint64_t slot = load.arena_offset(i);
    if (slot % 64 != 0) {
      EXPECT_EQ(slot % ParseDtype(e.dtype)->itemsize, 0u);
      EXPECT_EQ((slot - e.data_offset) % 512, 0u);
    }
    EXPECT_EQ(load.header(i).module_idx, s.module_idx);
    EXPECT_EQ(load.header(i).name, s.name);
    const uint8_t* at = load.arena()->data() + load.arena_offset(i);
    const std::string got(reinterpret_cast<const char*>(at), load.arena_bytes(i));
    EXPECT_TRUE(got == s.data) << "tensor bytes differ";
  }
}

// --- Writing ------------------------------------------------------------

TEST_F(LoadWriteTest, VersionIsTheLowestTheContentNeeds) {
  struct Case {
    const char* file;
    std::vector<Sample> samples;
    uint32_t version;
    uint64_t flags;
  };
  Sample long_meta = {"long", "|i1", {uint64_t{1} << 32, 2}, "", true};
  const std::vector<Case> cases = {
      {"plain", PlainSamples(), 1, 0},
      {"opaque", {PlainSamples()[1], OpaqueSample()}, 2, 0},
      {"meta", {PlainSamples()[1], MetaSample()}, 4, 0},
      {"opaque_meta", {OpaqueSample(), MetaSample()}, 4, 0},
      {"long", {PlainSamples()[1], long_meta}, 5, kFlagVersionedMetadata},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    uint32_t version = 0;
    ASSERT_TRUE(WriteFile(PathOf(c.file), {c.samples}, &version).ok());
    EXPECT_EQ(version, c.version);
    std::string bytes = ReadWhole(PathOf(c.file));
    auto index =
        ParseIndex(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size());
    ASSERT_TRUE(index.ok()) << index.status().ToString();
    EXPECT_EQ(index->header.version, c.version);
    EXPECT_EQ(index->header.flags, c.flags);
    EXPECT_EQ(index->header.metadata_length, kMetadataReserve);
    EXPECT_EQ(index->entries.size(), c.samples.size());
    EXPECT_EQ(index->entries[0].header_offset, kFirstTensorOffset);
    uint64_t data_total = 0;
    for (const Sample& s : c.samples) data_total += s.meta ? 0 : s.data.size();
    EXPECT_EQ(index->header.tensor_size, data_total);
    // Records back to back, then the eight-byte terminator.
    EXPECT_EQ(index->entries.back().record_end() + 8, bytes.size());
    EXPECT_EQ(testing::GetLE<uint64_t>(bytes, bytes.size() - 8), 0u);
  }
}

TEST_F(LoadWriteTest, GoldenFileFromTheWriter) {
  std::vector<Sample> golden = {{"a", "<f4", {2, 3}, testing::F32({0, 1, 2, 3, 4, 5})}};
  ASSERT_TRUE(WriteFile(PathOf("golden"), {golden}).ok());
  EXPECT_TRUE(ReadWhole(PathOf("golden")) == testing::BuildFile(testing::GoldenBlueprint()).bytes)
      << "the writer's bytes differ from tensorizer's for the §1.14 example";
}

TEST_F(LoadWriteTest, TargetAppearsOnlyOnClose) {
  const std::string target = PathOf("model.tensors");
  auto sink = CreateFileSink(target);
  ASSERT_TRUE(sink.ok()) << sink.status().ToString();
  auto writer = Writer::Create(std::move(sink).value(), {});
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Write(ToWrites(PlainSamples())).ok());
  EXPECT_FALSE(fs::exists(target));
  ASSERT_EQ(DirEntries().size(), 1u);  // the temporary file, beside the target
  EXPECT_EQ(DirEntries()[0].rfind(".model.tensors.tzr-tmp-", 0), 0u) << DirEntries()[0];
  ASSERT_TRUE((*writer)->Close().ok());
  EXPECT_TRUE((*writer)->closed());
  EXPECT_TRUE(fs::exists(target));
  EXPECT_EQ(DirEntries(), std::vector<std::string>{"model.tensors"});
  EXPECT_TRUE((*writer)->Close().ok());  // a second Close is harmless
  EXPECT_EQ((*writer)->Write(ToWrites(PlainSamples())).code(), StatusCode::kInvalidArgument);
}

TEST_F(LoadWriteTest, ReplacesAnExistingFileOnlyOnClose) {
  const std::string target = PathOf("model.tensors");
  WriteWhole(target, "old contents");
  auto sink = CreateFileSink(target);
  ASSERT_TRUE(sink.ok());
  auto w = Writer::Create(std::move(sink).value(), {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Write(ToWrites(PlainSamples())).ok());
  EXPECT_EQ(ReadWhole(target), "old contents");
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_NE(ReadWhole(target), "old contents");
  EXPECT_EQ(DirEntries(), std::vector<std::string>{"model.tensors"});
}

TEST_F(LoadWriteTest, AbortLeavesNothing) {
  const std::string target = PathOf("model.tensors");
  {
    auto w = Writer::Create(CreateFileSink(target).value(), {});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write(ToWrites(PlainSamples())).ok());
    (*w)->Abort();
    EXPECT_TRUE((*w)->closed());
    EXPECT_TRUE(DirEntries().empty());
    EXPECT_FALSE((*w)->Close().ok() && fs::exists(target)) << "Close after Abort saved a file";
  }
  EXPECT_TRUE(DirEntries().empty());
  {
    // Dropped without Close: the same as Abort.
    auto w = Writer::Create(CreateFileSink(target).value(), {});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write(ToWrites(PlainSamples())).ok());
  }
  EXPECT_TRUE(DirEntries().empty());
}

TEST_F(LoadWriteTest, SinkInAMissingDirectoryIsAnIoError) {
  auto sink = CreateFileSink(PathOf("no/such/dir/model.tensors"));
  ASSERT_FALSE(sink.ok());
  EXPECT_EQ(sink.status().code(), StatusCode::kIoError);
  EXPECT_EQ(sink.status().sys_errno(), ENOENT);
}

// Records fsync/rename (see syscall_log) for the life of the object.
class RecordSyscalls {
 public:
  explicit RecordSyscalls(int fail_fsync_errno = 0) {
    std::lock_guard<std::mutex> lock(syscall_log::mu);
    syscall_log::events.clear();
    syscall_log::fail_fsync_errno = fail_fsync_errno;
    syscall_log::recording = true;
  }
  ~RecordSyscalls() {
    std::lock_guard<std::mutex> lock(syscall_log::mu);
    syscall_log::recording = false;
    syscall_log::fail_fsync_errno = 0;
  }
  std::vector<std::string> events() const {
    std::lock_guard<std::mutex> lock(syscall_log::mu);
    return syscall_log::events;
  }
};

Status SaveSamples(const std::string& path) {
  auto sink = CreateFileSink(path);
  if (!sink.ok()) return sink.status();
  auto writer = Writer::Create(std::move(sink).value(), {});
  if (!writer.ok()) return writer.status();
  TZR_RETURN_IF_ERROR((*writer)->Write(ToWrites(PlainSamples())));
  return (*writer)->Close();
}

TEST_F(LoadWriteTest, SyncsTheDataBeforeTheRenameAndTheDirectoryAfter) {
  const std::string target = PathOf("model.tensors");
  std::vector<std::string> events;
  {
    RecordSyscalls record;
    ASSERT_TRUE(SaveSamples(target).ok());
    events = record.events();
  }
  const std::string dir = fs::canonical(dir_).string();
  ASSERT_EQ(events.size(), 3u) << ::testing::PrintToString(events);
  const std::string temp = events[0].substr(6);
  EXPECT_EQ(events[0].rfind("fsync " + dir + "/.model.tensors.tzr-tmp-", 0), 0u) << events[0];
  EXPECT_EQ(events[1], "rename " + temp + " " + target);
  EXPECT_EQ(events[2], "fsync " + dir);
}

TEST_F(LoadWriteTest, FailedSyncKeepsTheOldFile) {
  const std::string target = PathOf("model.tensors");
  WriteWhole(target, "old contents");
  Status st;
  {
    RecordSyscalls record(EIO);
    st = SaveSamples(target);
  }
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st.ToString();
  EXPECT_EQ(st.sys_errno(), EIO);
  EXPECT_NE(st.message().find("syncing " + target), std::string::npos) << st.message();
  EXPECT_EQ(ReadWhole(target), "old contents");
  EXPECT_EQ(DirEntries(), std::vector<std::string>{"model.tensors"});
}

TEST_F(LoadWriteTest, RefusesToReplaceAFifoOrASocket) {
  const std::string fifo = PathOf("fifo.tensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string sock = PathOf("sock.tensors");
  int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(s, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(sock.size(), sizeof addr.sun_path);
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock.c_str());
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ::close(s);
  for (const auto& [path, kind] : {std::pair{fifo, "FIFO"}, std::pair{sock, "socket"}}) {
    auto sink = CreateFileSink(path);
    ASSERT_FALSE(sink.ok()) << path << " was opened for saving";
    EXPECT_EQ(sink.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(sink.status().message().find(path), std::string::npos) << sink.status().message();
    EXPECT_NE(sink.status().message().find(kind), std::string::npos) << sink.status().message();
  }
  struct stat st {};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(DirEntries(), (std::vector<std::string>{"fifo.tensors", "sock.tensors"}));
}

TEST_F(LoadWriteTest, ADirectoryTargetIsEisdir) {
  ASSERT_TRUE(fs::create_directory(PathOf("model.tensors")));
  auto sink = CreateFileSink(PathOf("model.tensors"));
  ASSERT_FALSE(sink.ok());
  EXPECT_EQ(sink.status().sys_errno(), EISDIR) << sink.status().ToString();
}

TEST_F(LoadWriteTest, OverwriteKeepsModeAndOwner) {
  const std::string target = PathOf("model.tensors");
  WriteWhole(target, "old contents");
  ASSERT_EQ(::chmod(target.c_str(), 0640), 0);
  // Another user's file, where we may give one away (root, as in CI).
  const bool root = ::geteuid() == 0;
  if (root) ASSERT_EQ(::chown(target.c_str(), 12345, 12346), 0);
  ASSERT_TRUE(SaveSamples(target).ok());
  struct stat st {};
  ASSERT_EQ(::stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  if (root) {
    EXPECT_EQ(st.st_uid, 12345u);
    EXPECT_EQ(st.st_gid, 12346u);
  }
  EXPECT_NE(ReadWhole(target), "old contents");
  EXPECT_EQ(DirEntries(), std::vector<std::string>{"model.tensors"});
}

TEST_F(LoadWriteTest, NewFileModeFollowsTheUmask) {
  mode_t old = ::umask(027);
  Status saved = SaveSamples(PathOf("model.tensors"));
  ::umask(old);
  ASSERT_TRUE(saved.ok()) << saved.ToString();
  struct stat st {};
  ASSERT_EQ(::stat(PathOf("model.tensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
}

TEST_F(LoadWriteTest, SavingThroughASymlinkReplacesItsTarget) {
  ASSERT_TRUE(fs::create_directory(PathOf("real")));
  WriteWhole(PathOf("real/model.tensors"), "old contents");
  fs::create_symlink("real/model.tensors", PathOf("link.tensors"));
  ASSERT_TRUE(SaveSamples(PathOf("link.tensors")).ok());
  EXPECT_TRUE(fs::is_symlink(PathOf("link.tensors")));
  EXPECT_NE(ReadWhole(PathOf("real/model.tensors")), "old contents");
  EXPECT_EQ(DirEntries(), (std::vector<std::string>{"link.tensors", "real"}));
}

TEST_F(LoadWriteTest, LongestLegalNamesSave) {
  // 255 bytes is NAME_MAX; two such names differ only in their last byte,
  // so their temporaries must not collide either.
  const std::string a = PathOf(std::string(254, 'm') + "a");
  const std::string b = PathOf(std::string(254, 'm') + "b");
  auto sink_a = CreateFileSink(a);
  ASSERT_TRUE(sink_a.ok()) << sink_a.status().ToString();
  auto sink_b = CreateFileSink(b);
  ASSERT_TRUE(sink_b.ok()) << sink_b.status().ToString();
  ASSERT_TRUE((*sink_a)->WriteAt(0, "a", 1).ok());
  ASSERT_TRUE((*sink_b)->WriteAt(0, "b", 1).ok());
  for (const std::string& name : DirEntries()) {
    EXPECT_LE(name.size(), 255u);
    EXPECT_NE(name.find(".tzr-tmp-"), std::string::npos) << name;
  }
  ASSERT_TRUE((*sink_a)->Commit().ok());
  ASSERT_TRUE((*sink_b)->Commit().ok());
  EXPECT_EQ(ReadWhole(a), "a");
  EXPECT_EQ(ReadWhole(b), "b");
  EXPECT_EQ(DirEntries().size(), 2u);
}

TEST_F(LoadWriteTest, OpeningAFifoFailsWithoutWaitingForAWriter) {
  const std::string fifo = PathOf("model.tensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto opened = std::async(std::launch::async, [&] { return OpenFileSource(fifo); });
  if (opened.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    // Give the blocked open() its writer so the test can end.
    int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    opened.wait();
    if (w >= 0) ::close(w);
    FAIL() << "OpenFileSource blocked on a FIFO";
  }
  auto source = opened.get();
  ASSERT_FALSE(source.ok());
  EXPECT_EQ(source.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(source.status().message().find(fifo), std::string::npos);
  EXPECT_NE(source.status().message().find("FIFO"), std::string::npos)
      << source.status().message();
}

TEST_F(LoadWriteTest, MetadataOverflowIsResourceExhausted) {
  // ~96-byte entries: 5000 of them need ~480 KiB, twice the reserve.
  std::vector<Sample> many;
  for (int i = 0; i < 5000; ++i) {
    char name[80];
    snprintf(name, sizeof name, "model.decoder.layers.%05d.self_attention.query_key_value.weight",
             i);
    many.push_back({name, "|u1", {1}, std::string(1, static_cast<char>(i))});
  }
  const std::string target = PathOf("big.tensors");
  {
    auto w = Writer::Create(CreateFileSink(target).value(), {});
    ASSERT_TRUE(w.ok());
    Status st = (*w)->Write(ToWrites(many));
    EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
    EXPECT_FALSE(fs::exists(target));
  }
  EXPECT_TRUE(DirEntries().empty()) << "a failed save left files behind";
  {
    // Overflow in a later batch, after earlier ones were written.
    auto w = Writer::Create(CreateFileSink(target).value(), {});
    ASSERT_TRUE(w.ok());
    std::vector<Sample> first(many.begin(), many.begin() + 1000);
    ASSERT_TRUE((*w)->Write(ToWrites(first)).ok());
    std::vector<Sample> rest(many.begin() + 1000, many.end());
    EXPECT_EQ((*w)->Write(ToWrites(rest)).code(), StatusCode::kResourceExhausted);
  }
  EXPECT_TRUE(DirEntries().empty()) << "a failed save left files behind";
}

TEST_F(LoadWriteTest, WriterRejectsInconsistentTensors) {
  const std::string target = PathOf("bad.tensors");
  auto try_write = [&](TensorWrite t) {
    auto w = Writer::Create(CreateFileSink(target).value(), {});
    EXPECT_TRUE(w.ok());
    return (*w)->Write({t});
  };
  std::string data(24, '\x01');
  TensorWrite t;
  t.name = "t";
  t.dtype = "<f4";
  t.shape = {2, 3};
  t.data = reinterpret_cast<const uint8_t*>(data.data());
  t.data_length = 20;  // the shape needs 24; a reader would refuse the file
  EXPECT_FALSE(try_write(t).ok()) << "wrote data_length 20 for a (2, 3) float32 tensor";
  t.data_length = 24;
  t.dtype = "<x4";
  EXPECT_FALSE(try_write(t).ok());
  t.dtype = "<f4";
  t.name = std::string(70000, 'n');
  EXPECT_EQ(try_write(t).code(), StatusCode::kInvalidArgument);
  t.name = "t";
  t.shape = std::vector<uint64_t>(256, 1);
  t.data_length = 4;
  EXPECT_EQ(try_write(t).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(DirEntries().empty());
}

TEST_F(LoadWriteTest, FdSinkWritesInPlace) {
  const std::string target = PathOf("fd.tensors");
  int fd = ::open(target.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  auto sink = CreateFdSink(fd, target);
  ::close(fd);
  ASSERT_TRUE(sink.ok());
  auto w = Writer::Create(std::move(sink).value(), {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Write(ToWrites(PlainSamples())).ok());
  ASSERT_TRUE((*w)->Close().ok());
  LoadOptions opt;
  opt.verify = HashCheck::kAll;
  auto loaded = StartLoad(target, opt);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->load->Wait().ok());
  ExpectSamples(*loaded->load, *loaded->index, PlainSamples());
}

// --- Reading back --------------------------------------------------------

// Direct reads need a file system with O_DIRECT: /var/tmp is on disk where
// /tmp may be tmpfs.
TEST_F(LoadWriteTest, DirectAndBufferedLoadsAreBitExact) {
  std::string tmpl = "/var/tmp/tensorizer_direct_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const std::string path = tmpl + "/m.tensors";
  std::vector<Sample> samples = PlainSamples();
  // Large tensors at every offset modulo the element size: some are placed
  // for direct reads into the arena, the others go through staging.
  for (int i = 0; i < 5; ++i) {
    const uint64_t n = 70000 + 3 * i;
    samples.push_back({"big" + std::to_string(i), "<f4", {n}, RandomBytes(4 * n, 10 + i)});
    samples.push_back({"odd" + std::to_string(i), "|u1", {n + 1}, RandomBytes(n + 1, 20 + i)});
  }
  samples.push_back(OpaqueSample());  // the file ends with a short record: not a block multiple
  ASSERT_TRUE(WriteFile(path, {samples}).ok());
  ASSERT_NE(fs::file_size(path) % 512, 0u);
  for (HashCheck verify : {HashCheck::kNone, HashCheck::kFast}) {
    for (uint64_t chunk : {uint64_t{16} << 20, uint64_t{65536}, uint64_t{1000}}) {
      SCOPED_TRACE("verify " + std::to_string(static_cast<int>(verify)) + " chunk " +
                   std::to_string(chunk));
      LoadOptions opt;
      opt.verify = verify;
      opt.chunk_bytes = chunk;
      opt.num_threads = 3;
      for (DirectIo mode : {DirectIo::kOn, DirectIo::kOff}) {
        FileOptions file;
        file.direct_io = mode;
        auto loaded = StartLoad(path, opt, file);
        ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
        Status st = loaded->load->Wait();
        ASSERT_TRUE(st.ok()) << st.ToString();
        ExpectSamples(*loaded->load, *loaded->index, samples);
        auto stats = FileReadStatsOf(*loaded->source);
        ASSERT_TRUE(stats.has_value());
        const uint64_t read = loaded->load->bytes_read() + loaded->index->prefix_length();
        if (mode == DirectIo::kOn) {
          EXPECT_GE(stats->direct_block_bytes, 512u) << stats->buffered_reason;
          EXPECT_EQ(stats->direct_bytes, read);
          // The placed tensors' middles (chunks of 1000 bytes have none).
          if (chunk > 65536) EXPECT_GT(stats->in_place_bytes, 4 * 70000u);
          EXPECT_EQ(stats->buffered_bytes, 0u);
        } else {
          EXPECT_EQ(stats->direct_block_bytes, 0u);
          EXPECT_EQ(stats->buffered_reason, "direct I/O off");
          EXPECT_EQ(stats->direct_bytes, 0u);
          EXPECT_EQ(stats->buffered_bytes, read);
        }
      }
    }
  }
  std::error_code ec;
  fs::remove_all(tmpl, ec);
}

std::vector<Sample> EverySample() {
  std::vector<Sample> all = PlainSamples();
  all.insert(all.begin() + 2, MetaSample());
  all.push_back(OpaqueSample());
  return all;
}

TEST_F(LoadWriteTest, ReadsBackBitExact) {
  const std::vector<Sample> samples = EverySample();
  // Two batches, so the metadata block is rewritten once.
  std::vector<Sample> first(samples.begin(), samples.begin() + 3);
  std::vector<Sample> second(samples.begin() + 3, samples.end());
  WriterOptions wopt;
  wopt.num_threads = 3;
  wopt.chunk_bytes = 4096;
  uint32_t version = 0;
  ASSERT_TRUE(WriteFile(PathOf("m.tensors"), {first, second}, &version, wopt).ok());
  EXPECT_EQ(version, 4u);
  for (HashCheck verify : {HashCheck::kNone, HashCheck::kFast, HashCheck::kAll}) {
    for (int threads : {1, 4}) {
      for (uint64_t chunk : {uint64_t{16} << 20, uint64_t{65536}, uint64_t{1000}}) {
        SCOPED_TRACE("verify " + std::to_string(static_cast<int>(verify)) + " threads " +
                     std::to_string(threads) + " chunk " + std::to_string(chunk));
        LoadOptions opt;
        opt.verify = verify;
        opt.num_threads = threads;
        opt.chunk_bytes = chunk;
        opt.huge_pages = threads == 4;
        auto loaded = StartLoad(PathOf("m.tensors"), opt);
        ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
        Status st = loaded->load->Wait();
        ASSERT_TRUE(st.ok()) << st.ToString();
        ExpectSamples(*loaded->load, *loaded->index, samples);
        uint64_t stored = 0;
        for (const TensorEntry& e : loaded->index->entries) {
          stored += e.header_length() + e.data_length;
        }
        EXPECT_EQ(loaded->load->bytes_read(), stored);
      }
    }
  }
}

TEST_F(LoadWriteTest, WaitTensorPublishesEachTensor) {
  const std::vector<Sample> samples = EverySample();
  ASSERT_TRUE(WriteFile(PathOf("m.tensors"), {samples}).ok());
  for (HashCheck verify : {HashCheck::kNone, HashCheck::kAll}) {
    LoadOptions opt;
    opt.verify = verify;
    opt.num_threads = 3;
    opt.chunk_bytes = 4096;
    auto loaded = StartLoad(PathOf("m.tensors"), opt);
    ASSERT_TRUE(loaded.ok());
    // Last first: each wait returns once that tensor is in place.
    for (size_t i = samples.size(); i-- > 0;) {
      ASSERT_TRUE(loaded->load->WaitTensor(i).ok()) << i;
      EXPECT_TRUE(TensorBytes(*loaded->load, i) == samples[i].data) << samples[i].name;
      EXPECT_EQ(loaded->load->header(i).name, samples[i].name);
    }
    EXPECT_TRUE(loaded->load->Wait().ok());
  }
}

TEST_F(LoadWriteTest, SelectedSubset) {
  const std::vector<Sample> samples = EverySample();
  ASSERT_TRUE(WriteFile(PathOf("m.tensors"), {samples}).ok());
  auto source = OpenFileSource(PathOf("m.tensors"));
  ASSERT_TRUE(source.ok());
  std::shared_ptr<const Source> src = std::move(source).value();
  auto index = ReadIndex(*src);
  ASSERT_TRUE(index.ok());
  auto shared = std::make_shared<const Index>(std::move(index).value());
  LoadOptions opt;
  opt.verify = HashCheck::kAll;
  opt.chunk_bytes = 777;
  auto load = Load::Start(src, shared, {1, 2, 7}, opt);
  ASSERT_TRUE(load.ok());
  ASSERT_TRUE((*load)->Wait().ok());
  ASSERT_EQ((*load)->tensor_count(), 3u);
  EXPECT_TRUE(TensorBytes(**load, 0) == samples[1].data);
  EXPECT_TRUE(TensorBytes(**load, 1) == samples[2].data);
  EXPECT_TRUE(TensorBytes(**load, 2) == samples[7].data);
  auto bad = Load::Start(src, shared, {2, 1}, opt);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(LoadWriteTest, ReadsFilesWithCryptInfoButNoCiphertext) {
  // Data version 3 with the empty crypt-info in every header: plain data.
  testing::FileBlueprint bp = testing::GoldenBlueprint(std::nullopt);
  bp.version = 3;
  WriteWhole(PathOf("v3"), testing::BuildFile(bp).bytes);
  LoadOptions opt;
  opt.verify = HashCheck::kAll;
  auto loaded = StartLoad(PathOf("v3"), opt);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->load->Wait().ok());
  EXPECT_TRUE(TensorBytes(*loaded->load, 0) == testing::F32({0, 1, 2, 3, 4, 5}));
}

TEST_F(LoadWriteTest, EncryptedTensorIsACryptographyError) {
  testing::FileBlueprint bp = testing::GoldenBlueprint(std::nullopt);
  bp.version = 3;
  // One XSalsa20Parallel chunk with a made-up nonce and MAC.
  std::string par(2 + 8 + 2 + 8 + 24 + 8 + 16, '\0');
  testing::PutLE<uint16_t>(par, 0, 1);
  testing::PutLE<uint64_t>(par, 2, 58);
  testing::PutLE<uint16_t>(par, 10, 2);
  testing::PutLE<uint64_t>(par, 12, 2 << 20);
  testing::PutLE<uint64_t>(par, 44, 1);
  bp.tensors[0].crypt_info = par;
  WriteWhole(PathOf("enc"), testing::BuildFile(bp).bytes);
  auto loaded = StartLoad(PathOf("enc"), LoadOptions{});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->load->Wait().code(), StatusCode::kCryptography);
  EXPECT_EQ(loaded->load->WaitTensor(0).code(), StatusCode::kCryptography);
}

// --- Damaged files --------------------------------------------------------

class DamagedFileTest : public LoadWriteTest {
 protected:
  void SetUp() override {
    LoadWriteTest::SetUp();
    samples_ = EverySample();
    ASSERT_TRUE(WriteFile(PathOf("m.tensors"), {samples_}).ok());
    bytes_ = ReadWhole(PathOf("m.tensors"));
    auto index =
        ParseIndex(reinterpret_cast<const uint8_t*>(bytes_.data()), bytes_.size(), bytes_.size());
    ASSERT_TRUE(index.ok());
    index_ = *index;
  }

  // Loads `bytes` with the given check; returns the status of Wait().
  Status LoadBytes(const std::string& bytes, HashCheck verify, uint64_t chunk = 4096) {
    WriteWhole(PathOf("damaged.tensors"), bytes);
    LoadOptions opt;
    opt.verify = verify;
    opt.num_threads = 2;
    opt.chunk_bytes = chunk;
    auto loaded = StartLoad(PathOf("damaged.tensors"), opt);
    if (!loaded.ok()) return loaded.status();
    last_ = std::move(loaded).value();
    return last_.load->Wait();
  }

  std::vector<Sample> samples_;
  std::string bytes_;
  Index index_;
  Loaded last_;
};

TEST_F(DamagedFileTest, FlippedDataByteFailsOnlyWithVerification) {
  for (size_t t : {size_t{0}, size_t{7}, size_t{8}}) {
    const TensorEntry& e = index_.entries[t];
    SCOPED_TRACE(samples_[t].name);
    ASSERT_GT(e.data_length, 0u);
    std::string bad = bytes_;
    const uint64_t at = e.data_offset + e.data_length / 2;
    bad[at] = static_cast<char>(bad[at] ^ 0x20);
    for (HashCheck verify : {HashCheck::kFast, HashCheck::kAll}) {
      Status st = LoadBytes(bad, verify);
      EXPECT_EQ(st.code(), StatusCode::kHashMismatch) << st.ToString();
      EXPECT_EQ(last_.load->WaitTensor(t).code(), StatusCode::kHashMismatch);
    }
    Status st = LoadBytes(bad, HashCheck::kNone);
    ASSERT_TRUE(st.ok()) << st.ToString();
    std::string got = TensorBytes(*last_.load, t);
    EXPECT_EQ(got[e.data_length / 2], bad[at]);
  }
}

TEST_F(DamagedFileTest, FlippedHashedHeaderByteFailsWithVerification) {
  // module_idx is covered by the hashes but not compared with the index.
  const TensorEntry& e = index_.entries[1];
  std::string bad = bytes_;
  bad[e.header_offset + 8] = static_cast<char>(bad[e.header_offset + 8] ^ 0x01);
  EXPECT_EQ(LoadBytes(bad, HashCheck::kAll).code(), StatusCode::kHashMismatch);
  EXPECT_TRUE(LoadBytes(bad, HashCheck::kNone).ok());
}

TEST_F(DamagedFileTest, MetaTensorHeaderIsHashedToo) {
  const TensorEntry& e = index_.entries[2];
  ASSERT_EQ(e.data_length, 0u);  // the meta tensor
  std::string bad = bytes_;
  bad[e.header_offset + 8] = static_cast<char>(bad[e.header_offset + 8] ^ 0x01);
  EXPECT_EQ(LoadBytes(bad, HashCheck::kAll).code(), StatusCode::kHashMismatch);
}

TEST_F(DamagedFileTest, StoredSha256OnlyCheckedByFullVerification) {
  const TensorEntry& e = index_.entries[0];
  auto h = ParseTensorHeader(reinterpret_cast<const uint8_t*>(bytes_.data()) + e.header_offset,
                             e.header_length(), false, false);
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(h->hashes.size(), 2u);
  ASSERT_EQ(h->hashes[1].type, HashType::kSha256);
  std::string bad = bytes_;
  bad[e.header_offset + h->hashes[1].offset] ^= 0x01;
  EXPECT_EQ(LoadBytes(bad, HashCheck::kAll).code(), StatusCode::kHashMismatch);
  EXPECT_TRUE(LoadBytes(bad, HashCheck::kFast).ok());
  EXPECT_TRUE(LoadBytes(bad, HashCheck::kNone).ok());
}

TEST_F(DamagedFileTest, HeaderDisagreeingWithTheIndexIsAFormatError) {
  const TensorEntry& e = index_.entries[1];
  std::string bad = bytes_;
  bad[e.header_offset + 13] = 'X';  // first byte of the name
  for (HashCheck verify : {HashCheck::kNone, HashCheck::kAll}) {
    EXPECT_EQ(LoadBytes(bad, verify).code(), StatusCode::kFormatError);
  }
}

TEST_F(DamagedFileTest, TruncatedFilesFailCleanly) {
  const TensorEntry& last = index_.entries.back();
  const TensorEntry& big = index_.entries[0];
  const std::vector<uint64_t> cuts = {
      bytes_.size() - 1,       // inside the terminator
      bytes_.size() - 8,       // terminator gone: data still whole
      last.data_offset + 1,    // inside the last tensor's data
      last.header_offset + 5,  // inside its header
      big.data_offset + big.data_length / 3,
      kFirstTensorOffset,     // nothing after the index
      kMetadataStart + 1000,  // inside the metadata block
      40,                     // inside the file header
      0,
  };
  for (uint64_t n : cuts) {
    SCOPED_TRACE(n);
    for (HashCheck verify : {HashCheck::kNone, HashCheck::kAll}) {
      Status st = LoadBytes(bytes_.substr(0, n), verify);
      if (n >= bytes_.size() - 8) {
        // tensorizer never reads the terminator; all records are intact.
        EXPECT_TRUE(st.ok()) << st.ToString();
      } else {
        EXPECT_EQ(st.code(), StatusCode::kFormatError) << st.ToString();
      }
    }
  }
}

TEST_F(DamagedFileTest, FileTruncatedWhileLoading) {
  const std::string path = PathOf("shrinking.tensors");
  WriteWhole(path, bytes_);
  auto source = OpenFileSource(path);
  ASSERT_TRUE(source.ok());
  std::shared_ptr<const Source> src = std::move(source).value();
  auto index = ReadIndex(*src);
  ASSERT_TRUE(index.ok());
  // The file shrinks after the index was read and checked against its size.
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(index_.entries[0].data_offset + 100)), 0);
  LoadOptions opt;
  opt.chunk_bytes = 65536;
  opt.num_threads = 2;
  auto load = Load::Start(src, std::make_shared<const Index>(*index), AllOf(*index), opt);
  ASSERT_TRUE(load.ok());
  Status st = (*load)->Wait();
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(st.code() == StatusCode::kFormatError || st.code() == StatusCode::kIoError)
      << st.ToString();
  EXPECT_NE(st.message().find(path), std::string::npos) << "error should name the file";
}

TEST_F(DamagedFileTest, MissingFileIsAnIoError) {
  auto source = OpenFileSource(PathOf("absent.tensors"));
  ASSERT_FALSE(source.ok());
  EXPECT_EQ(source.status().code(), StatusCode::kIoError);
  EXPECT_EQ(source.status().sys_errno(), ENOENT);
}

// --- Arena -----------------------------------------------------------------

TEST(ArenaTest, AllocatesAndAligns) {
  for (bool huge : {false, true}) {
    for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{4096}, uint64_t{3} << 20}) {
      auto arena = Arena::Allocate(n, huge);
      ASSERT_TRUE(arena.ok()) << arena.status().ToString();
      EXPECT_EQ((*arena)->size(), n);
      if (n > 0) {
        (*arena)->data()[0] = 1;
        (*arena)->data()[n - 1] = 1;
      }
      if (huge && n >= (uint64_t{2} << 20)) {
        EXPECT_EQ(reinterpret_cast<uintptr_t>((*arena)->data()) % (uint64_t{2} << 20), 0u);
      }
    }
  }
}

TEST(ArenaTest, ImpossibleSizesFail) {
  for (bool huge : {false, true}) {
    for (uint64_t n : {uint64_t{1} << 62, std::numeric_limits<uint64_t>::max() - 100,
                       std::numeric_limits<uint64_t>::max()}) {
      SCOPED_TRACE(std::to_string(n) + (huge ? " huge" : ""));
      auto arena = Arena::Allocate(n, huge);
      EXPECT_FALSE(arena.ok()) << "an arena of " << n << " bytes was 'allocated'";
      if (!arena.ok()) EXPECT_EQ(arena.status().code(), StatusCode::kResourceExhausted);
    }
  }
}

}  // namespace
}  // namespace tensorizer
