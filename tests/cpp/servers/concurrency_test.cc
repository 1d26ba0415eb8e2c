// Many threads through one remote source or sink, against real servers on
// loopback: nginx (ranged GETs, and a location without range support),
// redis-server and SeaweedFS's S3 gateway. What is shared is what TSan must
// see used concurrently: the idle-connection pools and backoff generator of
// the HTTP, S3 and Redis sources, the HTTP source's one-time whole-object
// fill, and the S3 uploader's part queue fed by the writer's threads.
//
// Run it through run_with_servers.py (ctest does), which starts the servers
// and passes their addresses in TZR_TEST_* variables; scripts/sanitizers.sh
// runs it under TSan and ASan. Without those variables every test fails.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "storage/redis_protocol.h"
#include "tensorizer/format.h"
#include "tensorizer/load.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"

namespace tensorizer {
namespace {

namespace fs = std::filesystem;

constexpr int kConcurrentLoads = 3;
constexpr int kThreadsPerLoad = 4;
// Small reads: every load makes many requests, so connections go back to
// the pool and come out again while the other loads use it.
constexpr uint64_t kChunkBytes = 256 << 10;

struct Sample {
  std::string name;
  std::string data;  // float32 values
};

// About 14 MiB in 3 S3 parts of 5 MiB: two large tensors and many small
// ones, so tensors are published while other reads are in flight.
const std::vector<Sample>& Samples() {
  static const std::vector<Sample> samples = [] {
    std::mt19937_64 rng(42);
    auto bytes = [&](size_t n) {
      std::string s(n, '\0');
      for (char& c : s) c = static_cast<char>(rng());
      return s;
    };
    std::vector<Sample> v;
    v.push_back({"embed.weight", bytes(9u << 20)});
    v.push_back({"head.weight", bytes(4u << 20)});
    for (int i = 0; i < 24; ++i) v.push_back({"layer." + std::to_string(i) + ".bias", bytes(4096)});
    return v;
  }();
  return samples;
}

TensorWrite ToWrite(const Sample& s) {
  TensorWrite w;
  w.name = s.name;
  w.dtype = "<f4";
  w.shape = {s.data.size() / 4};
  w.data = reinterpret_cast<const uint8_t*>(s.data.data());
  w.data_length = s.data.size();
  return w;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// Writes the samples in two batches, so the writer's threads fill parts of
// the sink while earlier parts may still be uploading.
Status WriteSamples(std::unique_ptr<Sink> sink) {
  WriterOptions options;
  options.num_threads = 4;
  options.chunk_bytes = 1 << 20;
  TZR_ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer, Writer::Create(std::move(sink), options));
  std::vector<TensorWrite> writes;
  for (const Sample& s : Samples()) writes.push_back(ToWrite(s));
  const std::vector<TensorWrite> first(writes.begin(), writes.begin() + 1);
  const std::vector<TensorWrite> rest(writes.begin() + 1, writes.end());
  TZR_RETURN_IF_ERROR(writer->Write(first));
  TZR_RETURN_IF_ERROR(writer->Write(rest));
  return writer->Close();
}

// One load of every tensor with full hash verification; the bytes must be
// the samples'.
::testing::AssertionResult LoadAndCheck(const std::shared_ptr<const Source>& source) {
  auto index = ReadIndex(*source);
  if (!index.ok()) return ::testing::AssertionFailure() << index.status().ToString();
  auto shared = std::make_shared<const Index>(std::move(index).value());
  std::vector<size_t> all(shared->entries.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  LoadOptions options;
  options.num_threads = kThreadsPerLoad;
  options.chunk_bytes = kChunkBytes;
  options.verify = HashCheck::kAll;
  auto load = Load::Start(source, shared, all, options);
  if (!load.ok()) return ::testing::AssertionFailure() << load.status().ToString();
  Status st = (*load)->Wait();
  if (!st.ok()) return ::testing::AssertionFailure() << st.ToString();
  const std::vector<Sample>& samples = Samples();
  if ((*load)->tensor_count() != samples.size()) {
    return ::testing::AssertionFailure() << (*load)->tensor_count() << " tensors";
  }
  for (size_t i = 0; i < samples.size(); ++i) {
    const uint8_t* at = (*load)->arena()->data() + (*load)->arena_offset(i);
    if ((*load)->entry(i).name != samples[i].name ||
        std::string(reinterpret_cast<const char*>(at), (*load)->arena_bytes(i)) !=
            samples[i].data) {
      return ::testing::AssertionFailure() << "tensor " << samples[i].name << " differs";
    }
  }
  return ::testing::AssertionSuccess();
}

// kConcurrentLoads loads at once through the one source.
void LoadConcurrently(const std::shared_ptr<const Source>& source) {
  std::vector<::testing::AssertionResult> results(kConcurrentLoads,
                                                  ::testing::AssertionSuccess());
  std::vector<std::thread> loaders;
  for (int i = 0; i < kConcurrentLoads; ++i) {
    loaders.emplace_back([&, i] { results[i] = LoadAndCheck(source); });
  }
  for (auto& t : loaders) t.join();
  for (int i = 0; i < kConcurrentLoads; ++i) EXPECT_TRUE(results[i]) << "load " << i;
}

class ServersTest : public ::testing::Test {
 protected:
  // The variable's value; the test fails when the driver did not set it.
  static std::string Need(const char* name) {
    std::string v = Env(name);
    EXPECT_FALSE(v.empty()) << name << " is not set: run this binary through "
                            << "tests/cpp/servers/run_with_servers.py";
    return v;
  }

  // Writes the sample file into nginx's root at `relative`.
  static void WriteIntoNginxRoot(const std::string& relative) {
    const fs::path path = fs::path(Need("TZR_TEST_HTTP_ROOT")) / relative;
    fs::create_directories(path.parent_path());
    auto sink = CreateFileSink(path.string());
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    Status st = WriteSamples(std::move(sink).value());
    ASSERT_TRUE(st.ok()) << st.ToString();
  }

  static S3Options S3() {
    S3Options o;
    o.endpoint = Need("TZR_TEST_S3_ENDPOINT");
    o.access_key_id = Need("TZR_TEST_S3_ACCESS_KEY");
    o.secret_access_key = Need("TZR_TEST_S3_SECRET_KEY");
    o.region = Need("TZR_TEST_S3_REGION");
    o.addressing = S3Options::Addressing::kPath;
    return o;
  }

  static S3UploadOptions Upload() {
    S3UploadOptions o;
    o.part_bytes = 5 << 20;  // S3's minimum: three parts
    o.parallel_uploads = 3;
    o.max_queued_parts = 1;  // the writer's threads wait for upload slots
    return o;
  }
};

TEST_F(ServersTest, HttpConnectionPoolSharedByConcurrentLoads) {
  WriteIntoNginxRoot("ranged/model.tensors");
  auto source = OpenHttpSource(Need("TZR_TEST_HTTP_URL") + "/ranged/model.tensors", HttpOptions());
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  LoadConcurrently(std::move(source).value());
}

// nginx's `max_ranges 0` there: every GET answers 200 with the whole file,
// so the source streams it to the readers that wait for its bytes (a reader
// that falls behind the stream's window costs a GET from byte 0).
TEST_F(ServersTest, HttpWholeObjectFilledOnceForConcurrentLoads) {
  WriteIntoNginxRoot("whole/model.tensors");
  auto source = OpenHttpSource(Need("TZR_TEST_HTTP_URL") + "/whole/model.tensors", HttpOptions());
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  LoadConcurrently(std::move(source).value());
}

// SETs the file's keys in tensorizer's to_redis layout (redis_protocol.h):
// the header and metadata block, then each tensor's header and data.
void PutIntoRedis(int port, const std::string& prefix, const std::string& file) {
  auto source = MakeMemorySource(file, "sample");
  auto index = ReadIndex(*source);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  std::string commands =
      redis::EncodeCommand({"SET", prefix + ":header:0", file.substr(0, index->prefix_length())});
  size_t count = 1;
  for (const TensorEntry& e : index->entries) {
    commands += redis::EncodeCommand({"SET", prefix + ":" + e.name + ":" +
                                                 std::to_string(e.header_offset),
                                      file.substr(e.header_offset, e.header_length())});
    commands += redis::EncodeCommand({"SET", prefix + ":" + e.name + ":" +
                                                 std::to_string(e.data_offset),
                                      file.substr(e.data_offset, e.data_length)});
    count += 2;
  }
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  for (size_t sent = 0; sent < commands.size();) {
    ssize_t n = ::send(fd, commands.data() + sent, commands.size() - sent, MSG_NOSIGNAL);
    ASSERT_GT(n, 0);
    sent += static_cast<size_t>(n);
  }
  std::string want, got;
  for (size_t i = 0; i < count; ++i) want += "+OK\r\n";
  char buf[4096];
  while (got.size() < want.size()) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0) << "redis-server closed the connection after " << got;
    got.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  ASSERT_EQ(got, want);
}

TEST_F(ServersTest, RedisConnectionPoolSharedByConcurrentLoads) {
  const std::string port = Need("TZR_TEST_REDIS_PORT");
  // Written locally first: the keys are slices of the file.
  const std::string path = (fs::path(Need("TZR_TEST_HTTP_ROOT")) / "redis.tensors").string();
  {
    auto sink = CreateFileSink(path);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    Status st = WriteSamples(std::move(sink).value());
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  auto file = OpenFileSource(path);
  ASSERT_TRUE(file.ok());
  std::string bytes((*file)->size(), '\0');
  ASSERT_TRUE((*file)->ReadAt(0, bytes.data(), bytes.size()).ok());
  fs::remove(path);
  PutIntoRedis(std::stoi(port), "concurrency", bytes);
  auto source = OpenRedisSource("redis://127.0.0.1:" + port + "/concurrency");
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  LoadConcurrently(std::move(source).value());
}

TEST_F(ServersTest, S3UploadOfParallelPartsThenConcurrentLoads) {
  const std::string uri = "s3://" + Need("TZR_TEST_S3_BUCKET") + "/concurrency/model.tensors";
  auto sink = CreateS3Sink(uri, S3(), HttpOptions(), Upload());
  ASSERT_TRUE(sink.ok()) << sink.status().ToString();
  Status st = WriteSamples(std::move(sink).value());
  ASSERT_TRUE(st.ok()) << st.ToString();
  auto source = OpenS3Source(uri, S3(), HttpOptions());
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  LoadConcurrently(std::move(source).value());
}

// A writer dropped after its first batch: the uploaders stop with parts
// queued or in flight, and no object appears.
TEST_F(ServersTest, S3UploadAbortedWithPartsInFlight) {
  const std::string uri = "s3://" + Need("TZR_TEST_S3_BUCKET") + "/concurrency/aborted.tensors";
  {
    auto sink = CreateS3Sink(uri, S3(), HttpOptions(), Upload());
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    WriterOptions options;
    options.num_threads = 4;
    options.chunk_bytes = 1 << 20;
    auto writer = Writer::Create(std::move(sink).value(), options);
    ASSERT_TRUE(writer.ok()) << writer.status().ToString();
    // The two large tensors: part 2 is complete and queued or uploading,
    // parts 1 and 3 are still in memory.
    ASSERT_TRUE((*writer)->Write({ToWrite(Samples()[0]), ToWrite(Samples()[1])}).ok());
  }  // ~Writer aborts
  auto source = OpenS3Source(uri, S3(), HttpOptions());
  EXPECT_FALSE(source.ok()) << "an aborted upload left an object";
}

}  // namespace
}  // namespace tensorizer
