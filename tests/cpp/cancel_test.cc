// Cancellation (tensorizer/cancel.h): the flag and its scopes, then each
// place the engine must give way: the load pipeline's workers, a save, a key
// derivation and a libcurl transfer.
//
// The load tests read through SlowSource, a source that takes 10 s for each
// read unless its thread's cancel flag is set: a load that returns within a
// second proves the flag reached the worker threads. (A fake, because the
// point is a read that outlasts the test; the Python suite cancels real
// transfers from a trickling HTTP server.)
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tensorizer/cancel.h"
#include "tensorizer/crypto.h"
#include "tensorizer/load.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"

namespace tensorizer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Cancels `flag` after `delay` on a thread of its own.
std::thread CancelLater(std::shared_ptr<CancelFlag> flag, milliseconds delay) {
  return std::thread([flag, delay] {
    std::this_thread::sleep_for(delay);
    flag->Cancel();
  });
}

TEST(CancelFlagTest, ChildrenFollowTheirParent) {
  auto parent = std::make_shared<CancelFlag>();
  auto child = std::make_shared<CancelFlag>(parent);
  CancelFlag grandchild(child);
  EXPECT_FALSE(grandchild.cancelled());
  child->Cancel();
  EXPECT_TRUE(grandchild.cancelled());
  EXPECT_FALSE(parent->cancelled());  // cancelling goes down, never up
  CancelFlag other(parent);
  parent->Cancel();
  EXPECT_TRUE(other.cancelled());
}

TEST(CancelFlagTest, ScopesNestAndAShieldHidesTheFlag) {
  EXPECT_FALSE(CancelRequested());
  EXPECT_EQ(CurrentCancelFlag(), nullptr);
  auto outer = std::make_shared<CancelFlag>();
  outer->Cancel();
  {
    CancelScope a(outer);
    EXPECT_TRUE(CancelRequested());
    {
      CancelScope shield(nullptr);
      EXPECT_FALSE(CancelRequested());
    }
    EXPECT_TRUE(CancelRequested());
    // Another thread has its own current flag.
    bool there = true;
    std::thread([&] { there = CancelRequested(); }).join();
    EXPECT_FALSE(there);
  }
  EXPECT_FALSE(CancelRequested());
}

// Each read takes 10 s unless the reading thread is cancelled first; counts
// the reads that saw the cancellation.
class SlowSource final : public Source {
 public:
  explicit SlowSource(std::shared_ptr<const Source> inner) : inner_(std::move(inner)) {}
  uint64_t size() const override { return inner_->size(); }
  const std::string& uri() const override { return inner_->uri(); }
  Status ReadAt(uint64_t offset, void* dst, uint64_t length) const override {
    // The index is read at full speed; the tensors slowly.
    if (offset > 0) {
      const auto end = Clock::now() + std::chrono::seconds(10);
      while (Clock::now() < end) {
        if (CancelRequested()) {
          ++cancelled_reads;
          return CancelledStatus("slow read");
        }
        std::this_thread::sleep_for(milliseconds(5));
      }
    }
    return inner_->ReadAt(offset, dst, length);
  }
  mutable std::atomic<int> cancelled_reads{0};

 private:
  std::shared_ptr<const Source> inner_;
};

class CancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "tensorizer_cancel_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    data_.assign(64 << 10, '\x5a');
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string PathOf(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::vector<TensorWrite> Tensors(int count) const {
    std::vector<TensorWrite> out;
    for (int i = 0; i < count; ++i) {
      TensorWrite w;
      w.name = "t" + std::to_string(i);
      w.dtype = "<f4";
      w.shape = {data_.size() / 4};
      w.data = reinterpret_cast<const uint8_t*>(data_.data());
      w.data_length = data_.size();
      out.push_back(w);
    }
    return out;
  }

  // A four-tensor file behind a SlowSource, and its index.
  void OpenSlow(std::shared_ptr<SlowSource>* source, std::shared_ptr<const Index>* index) {
    auto sink = CreateFileSink(PathOf("m.tensors"));
    ASSERT_TRUE(sink.ok());
    auto writer = Writer::Create(std::move(sink).value(), {});
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Write(Tensors(4)).ok());
    ASSERT_TRUE((*writer)->Close().ok());
    auto file = OpenFileSource(PathOf("m.tensors"));
    ASSERT_TRUE(file.ok());
    *source = std::make_shared<SlowSource>(std::move(file).value());
    auto parsed = ReadIndex(**source);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    *index = std::make_shared<const Index>(std::move(parsed).value());
  }

  static LoadOptions TwoWorkers() {
    LoadOptions o;
    o.num_threads = 2;
    o.chunk_bytes = 16 << 10;
    return o;
  }

  std::string dir_;
  std::string data_;
};

TEST_F(CancelTest, TheStartingThreadsFlagReachesTheWorkers) {
  std::shared_ptr<SlowSource> source;
  std::shared_ptr<const Index> index;
  OpenSlow(&source, &index);
  auto flag = std::make_shared<CancelFlag>();
  std::unique_ptr<Load> load;
  {
    CancelScope scope(flag);
    auto started = Load::Start(source, index, {0, 1, 2, 3}, TwoWorkers());
    ASSERT_TRUE(started.ok());
    load = std::move(started).value();
  }
  // Not this thread's flag any more: cancelling it still stops the workers.
  EXPECT_FALSE(load->WaitFor(milliseconds(100)).has_value());
  const auto t0 = Clock::now();
  std::thread canceller = CancelLater(flag, milliseconds(50));
  Status st = load->Wait();
  canceller.join();
  EXPECT_EQ(st.code(), StatusCode::kCancelled) << st.ToString();
  EXPECT_LT(SecondsSince(t0), 2.0);
  EXPECT_GE(source->cancelled_reads.load(), 1);
  EXPECT_EQ(load->WaitTensor(3).code(), StatusCode::kCancelled);
}

TEST_F(CancelTest, CancelStopsTheLoadAndItsWaiters) {
  std::shared_ptr<SlowSource> source;
  std::shared_ptr<const Index> index;
  OpenSlow(&source, &index);
  auto started = Load::Start(source, index, {0, 1, 2, 3}, TwoWorkers());
  ASSERT_TRUE(started.ok());
  std::unique_ptr<Load> load = std::move(started).value();
  EXPECT_FALSE(load->WaitTensorFor(0, milliseconds(50)).has_value());
  const auto t0 = Clock::now();
  std::thread canceller([&] {
    std::this_thread::sleep_for(milliseconds(50));
    load->Cancel();
  });
  Status st = load->WaitTensor(0);
  canceller.join();
  EXPECT_EQ(st.code(), StatusCode::kCancelled) << st.ToString();
  EXPECT_NE(st.message().find(source->uri()), std::string::npos) << st.message();
  std::optional<Status> all = load->WaitFor(milliseconds(2000));
  ASSERT_TRUE(all.has_value());
  EXPECT_EQ(all->code(), StatusCode::kCancelled);
  EXPECT_LT(SecondsSince(t0), 2.0);
  // Both workers were stopped mid-read, not after their 10 s.
  EXPECT_EQ(source->cancelled_reads.load(), 2);
}

TEST_F(CancelTest, DestroyingALoadStopsItsReadsInFlight) {
  std::shared_ptr<SlowSource> source;
  std::shared_ptr<const Index> index;
  OpenSlow(&source, &index);
  auto started = Load::Start(source, index, {0, 1, 2, 3}, TwoWorkers());
  ASSERT_TRUE(started.ok());
  std::this_thread::sleep_for(milliseconds(50));
  const auto t0 = Clock::now();
  started = Status::Ok();  // destroys the Load
  EXPECT_LT(SecondsSince(t0), 2.0);
  EXPECT_EQ(source->cancelled_reads.load(), 2);
}

TEST_F(CancelTest, CancellingAFinishedLoadChangesNothing) {
  std::shared_ptr<SlowSource> slow;
  std::shared_ptr<const Index> index;
  OpenSlow(&slow, &index);
  auto file = OpenFileSource(PathOf("m.tensors"));
  ASSERT_TRUE(file.ok());
  auto started = Load::Start(std::move(file).value(), index, {0, 1, 2, 3}, TwoWorkers());
  ASSERT_TRUE(started.ok());
  ASSERT_TRUE((*started)->Wait().ok());
  (*started)->Cancel();
  EXPECT_TRUE((*started)->Wait().ok());
}

TEST_F(CancelTest, ACancelledSaveLeavesNothing) {
  auto sink = CreateFileSink(PathOf("saved.tensors"));
  ASSERT_TRUE(sink.ok());
  WriterOptions o;
  o.num_threads = 2;
  auto writer = Writer::Create(std::move(sink).value(), o);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Write(Tensors(2)).ok());
  auto flag = std::make_shared<CancelFlag>();
  flag->Cancel();
  {
    CancelScope scope(flag);
    Status st = (*writer)->Write(Tensors(8));
    EXPECT_EQ(st.code(), StatusCode::kCancelled) << st.ToString();
  }
  EXPECT_TRUE((*writer)->closed());  // aborted, as after any failed write
  EXPECT_TRUE(fs::is_empty(dir_)) << "the temporary file was left";
}

TEST(CancelKdfTest, ADerivationReturnsWhenCancelled) {
  PwhashParams p;
  p.salt = std::string(kSaltBytes, '\x01');
  p.memlimit = 8 << 20;
  p.opslimit = 3;
  auto plain = DeriveKey("passphrase", p);
  ASSERT_TRUE(plain.ok());
  auto flag = std::make_shared<CancelFlag>();
  {
    // Under a flag nobody cancels, the helper thread gives the same key.
    CancelScope scope(flag);
    auto helped = DeriveKey("passphrase", p);
    ASSERT_TRUE(helped.ok());
    EXPECT_EQ(*helped, *plain);
  }
  // About 2 s of work (and as long for the abandoned helper to finish in
  // the background); cancelled after 50 ms.
  p.opslimit = 1000;
  p.memlimit = 8 << 20;
  const auto t0 = Clock::now();
  std::thread canceller = CancelLater(flag, milliseconds(50));
  Result<CryptKey> key = [&] {
    CancelScope scope(flag);
    return DeriveKey("passphrase", p);
  }();
  canceller.join();
  EXPECT_EQ(key.status().code(), StatusCode::kCancelled) << key.status().ToString();
  EXPECT_LT(SecondsSince(t0), 0.5);
}

// A TCP listener that never accepts: the kernel completes the handshake, the
// request is sent, and no answer ever comes.
class SilentListener {
 public:
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 8);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~SilentListener() { ::close(fd_); }
  int port() const { return port_; }

 private:
  int fd_;
  int port_;
};

TEST(CancelHttpTest, ATransferWaitingForAnAnswerStops) {
  SilentListener server;
  auto flag = std::make_shared<CancelFlag>();
  HttpOptions o;
  o.low_speed_timeout_ms = 0;  // no stall rule: only the cancellation ends it
  o.max_retries = 0;
  const auto t0 = Clock::now();
  std::thread canceller = CancelLater(flag, milliseconds(200));
  Result<std::unique_ptr<Source>> source = [&] {
    CancelScope scope(flag);
    return OpenHttpSource("http://127.0.0.1:" + std::to_string(server.port()) + "/m.tensors", o);
  }();
  canceller.join();
  EXPECT_EQ(source.status().code(), StatusCode::kCancelled) << source.status().ToString();
  // libcurl calls its progress callback about once a second while idle.
  EXPECT_LT(SecondsSince(t0), 2.0);
}

}  // namespace
}  // namespace tensorizer
