// The one host block a copy device keeps back from FreeHost for the next
// load's AllocateHost of the same size: pinning (cudaHostAlloc) or mapping
// a ring costs milliseconds per GiB, and the loads of one deserializer (a
// lazy load's batches) ask for the same ring again.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>

namespace tensorizer::internal {

class HostBlockCache {
 public:
  // release(data, bytes) gives a block back to where it came from.
  explicit HostBlockCache(std::function<void(uint8_t*, uint64_t)> release)
      : release_(std::move(release)) {}
  ~HostBlockCache() {
    if (data_ != nullptr) release_(data_, bytes_);
  }
  HostBlockCache(const HostBlockCache&) = delete;
  HostBlockCache& operator=(const HostBlockCache&) = delete;

  // The kept block if it has `bytes`, else nullptr (the caller allocates).
  uint8_t* Take(uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (data_ == nullptr || bytes_ != bytes) return nullptr;
    return std::exchange(data_, nullptr);
  }

  // Keeps `data` for the next Take, releasing the block kept before.
  void Put(uint8_t* data, uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (data_ != nullptr) release_(data_, bytes_);
    data_ = data;
    bytes_ = bytes;
  }

 private:
  const std::function<void(uint8_t*, uint64_t)> release_;
  std::mutex mu_;
  uint8_t* data_ = nullptr;
  uint64_t bytes_ = 0;
};

}  // namespace tensorizer::internal
