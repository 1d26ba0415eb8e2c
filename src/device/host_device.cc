// The host stand-in for a GPU: the copy stage's CopyAsync queues memcpy's
// to a thread per stream, as a GPU queues copies to its copy engines, and a
// fence is a position in a stream's queue. With bytes_per_second set each
// stream sleeps after each piece so that it copies no faster than that: a
// slow device for tests of back-pressure.
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "device/host_block_cache.h"
#include "tensorizer/staging.h"
#include "util/thread_annotations.h"

namespace tensorizer {

namespace {

constexpr uint64_t kThrottlePieceBytes = 1ull << 20;
constexpr int kFenceStreamShift = 48;

class HostCopyDevice final : public CopyDevice {
 public:
  explicit HostCopyDevice(const HostCopyDeviceOptions& options)
      : options_(options), streams_(static_cast<size_t>(std::max(options.streams, 1))) {}

  ~HostCopyDevice() override { Close(); }

  std::string name() const override { return "host"; }

  Result<uint8_t*> AllocateHost(uint64_t bytes) override {
    if (uint8_t* kept = kept_.Take(bytes)) return kept;
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return Status::ResourceExhausted(std::strerror(errno));
    return static_cast<uint8_t*>(p);
  }

  void FreeHost(uint8_t* data, uint64_t bytes) override { kept_.Put(data, bytes); }

  Status Open() override {
    for (Stream& s : streams_) {
      s.stop = false;
      s.thread = std::thread([this, &s] { Run(s); });
    }
    return Status::Ok();
  }

  void Close() override {
    for (Stream& s : streams_) {
      if (!s.thread.joinable()) continue;
      {
        std::lock_guard<std::mutex> lock(s.mu);
        s.stop = true;
      }
      s.cv.notify_all();
      s.thread.join();
    }
  }

  int stream_count() const override { return static_cast<int>(streams_.size()); }

  Status CopyAsync(int stream, uint64_t dst, const uint8_t* src, uint64_t bytes) override {
    Stream& s = streams_[static_cast<size_t>(stream)];
    std::lock_guard<std::mutex> lock(s.mu);
    s.queue.push_back(Copy{reinterpret_cast<uint8_t*>(dst), src, bytes});
    ++s.queued;
    s.cv.notify_all();
    return Status::Ok();
  }

  Result<uint64_t> Record(int stream) override {
    Stream& s = streams_[static_cast<size_t>(stream)];
    std::lock_guard<std::mutex> lock(s.mu);
    return (uint64_t{static_cast<uint32_t>(stream)} << kFenceStreamShift) | s.queued;
  }

  Status Wait(uint64_t fence) override {
    Stream& s = streams_[fence >> kFenceStreamShift];
    const uint64_t target = fence & ((uint64_t{1} << kFenceStreamShift) - 1);
    std::unique_lock<std::mutex> lock(s.mu);
    s.cv.wait(lock, [&] { return s.done >= target; });
    return Status::Ok();
  }

  Status Synchronize() override {
    for (size_t i = 0; i < streams_.size(); ++i) {
      auto fence = Record(static_cast<int>(i));
      TZR_RETURN_IF_ERROR(Wait(*fence));
    }
    return Status::Ok();
  }

 private:
  struct Copy {
    uint8_t* dst;
    const uint8_t* src;
    uint64_t bytes;
  };
  struct Stream {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Copy> queue TZR_GUARDED_BY(mu);
    uint64_t queued TZR_GUARDED_BY(mu) = 0;
    uint64_t done TZR_GUARDED_BY(mu) = 0;
    bool stop TZR_GUARDED_BY(mu) = false;
    std::thread thread;
  };

  void Run(Stream& s) {
    std::unique_lock<std::mutex> lock(s.mu);
    for (;;) {
      s.cv.wait(lock, [&] { return s.stop || !s.queue.empty(); });
      if (s.queue.empty()) return;  // stopped with nothing queued
      Copy c = s.queue.front();
      lock.unlock();
      CopyThrottled(c);
      lock.lock();
      s.queue.pop_front();
      ++s.done;
      s.cv.notify_all();
    }
  }

  void CopyThrottled(const Copy& c) const {
    if (options_.bytes_per_second == 0) {
      std::memcpy(c.dst, c.src, c.bytes);
      return;
    }
    for (uint64_t at = 0; at < c.bytes; at += kThrottlePieceBytes) {
      const uint64_t n = std::min(kThrottlePieceBytes, c.bytes - at);
      std::memcpy(c.dst + at, c.src + at, n);
      std::this_thread::sleep_for(
          std::chrono::microseconds(n * 1000000 / options_.bytes_per_second));
    }
  }

  const HostCopyDeviceOptions options_;
  std::deque<Stream> streams_;
  internal::HostBlockCache kept_{[](uint8_t* p, uint64_t bytes) { ::munmap(p, bytes); }};
};

}  // namespace

std::shared_ptr<CopyDevice> OpenHostCopyDevice(const HostCopyDeviceOptions& options) {
  return std::make_shared<HostCopyDevice>(options);
}

}  // namespace tensorizer
