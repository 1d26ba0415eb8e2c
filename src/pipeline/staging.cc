// The staging ring and its copy stage: see staging_ring.h.
//
// The copy stage issues every submitted batch before it waits on anything,
// so the device always has the queued batches to work on; it then waits on
// the oldest fence in flight (the streams are filled round-robin, so the
// oldest is the likeliest to be done) and frees that buffer. Waiting blocks
// in the device (an event synchronize), so an idle copy stage burns no core.
#include <algorithm>
#include <chrono>

#include "pipeline/staging_ring.h"

namespace tensorizer::internal {

namespace {

constexpr uint64_t kDefaultBufferBytes = 8ull << 20;
constexpr uint64_t kMaxRingBytes = 1ull << 30;
constexpr std::chrono::milliseconds kAcquireSlice{10};

struct InFlight {
  uint32_t buffer;
  uint64_t fence;
  uint64_t bytes;
  std::vector<uint32_t> tensors;
};

}  // namespace

RingShape ChooseRingShape(const StagingOptions& options, int workers, uint64_t load_bytes) {
  uint64_t bytes = options.buffer_bytes != 0 ? options.buffer_bytes : kDefaultBufferBytes;
  // Two per worker (one filling, one copying) and two more so the device
  // has queued work while every worker is reading.
  uint64_t count = options.buffer_count != 0 ? options.buffer_count
                                             : 2 * static_cast<uint64_t>(std::max(workers, 1)) + 2;
  if (options.buffer_count == 0) {
    count = std::min(count, std::max<uint64_t>(kMaxRingBytes / bytes, 2));
    // A small load needs no more buffers than its bytes fill.
    count = std::min(count, std::max<uint64_t>((load_bytes + bytes - 1) / bytes, 1));
  }
  return RingShape{static_cast<uint32_t>(std::max<uint64_t>(count, 1)), bytes};
}

StagingRing::StagingRing(std::shared_ptr<CopyDevice> device, uint8_t* memory, uint32_t count,
                         uint64_t buffer_bytes, size_t producers)
    : device_(std::move(device)),
      memory_(memory),
      count_(count),
      buffer_bytes_(buffer_bytes),
      producers_left_(producers) {
  for (uint32_t b = count; b > 0; --b) free_.push_back(b - 1);
}

Result<std::unique_ptr<StagingRing>> StagingRing::Create(std::shared_ptr<CopyDevice> device,
                                                         uint32_t count, uint64_t buffer_bytes,
                                                         size_t producers) {
  uint64_t total = 0;
  if (count == 0 || buffer_bytes == 0 || __builtin_mul_overflow(uint64_t{count}, buffer_bytes, &total)) {
    return Status::InvalidArgument("staging ring of " + std::to_string(count) + " buffers of " +
                                   std::to_string(buffer_bytes) + " bytes");
  }
  auto memory = device->AllocateHost(total);
  if (!memory.ok()) {
    return memory.status().WithContext("allocating a " + std::to_string(total) +
                                       "-byte staging ring for " + device->name());
  }
  return std::unique_ptr<StagingRing>(
      new StagingRing(std::move(device), *memory, count, buffer_bytes, producers));
}

StagingRing::~StagingRing() { device_->FreeHost(memory_, count_ * buffer_bytes_); }

Result<uint32_t> StagingRing::Acquire(const CancelFlag& cancel) {
  std::unique_lock<std::mutex> lock(mu_);
  while (free_.empty()) {
    if (cancel.cancelled()) return CancelledStatus("waiting for a staging buffer");
    freed_.wait_for(lock, kAcquireSlice);
  }
  uint32_t b = free_.back();
  free_.pop_back();
  peak_in_use_ = std::max(peak_in_use_, ++in_use_);
  return b;
}

void StagingRing::ToFreeList(uint32_t buffer) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(buffer);
  --in_use_;
  freed_.notify_one();
}

void StagingRing::Release(uint32_t buffer) { ToFreeList(buffer); }

void StagingRing::Submit(StagedBatch batch) {
  std::lock_guard<std::mutex> lock(mu_);
  submitted_.push_back(std::move(batch));
  submitted_cv_.notify_one();
}

void StagingRing::ProducerDone() {
  std::lock_guard<std::mutex> lock(mu_);
  --producers_left_;
  submitted_cv_.notify_one();
}

Status StagingRing::RunCopies(const CancelFlag& cancel,
                              const std::function<void(const std::vector<uint32_t>&)>& on_copied) {
  Status first = device_->Open();
  const bool opened = first.ok();
  std::deque<InFlight> in_flight;
  int next_stream = 0;
  for (;;) {
    StagedBatch batch;
    bool have_batch = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (in_flight.empty()) {
        submitted_cv_.wait(lock, [&] { return !submitted_.empty() || producers_left_ == 0; });
        if (submitted_.empty()) break;  // every producer done, nothing left
      }
      if (!submitted_.empty()) {
        batch = std::move(submitted_.front());
        submitted_.pop_front();
        have_batch = true;
      }
    }
    if (have_batch) {
      if (!first.ok() || cancel.cancelled()) {
        ToFreeList(batch.buffer);  // dropped: nothing of it was queued
        continue;
      }
      const int stream = next_stream;
      next_stream = (next_stream + 1) % device_->stream_count();
      uint64_t bytes = 0;
      Status st;
      for (const CopyRegion& r : batch.regions) {
        st = device_->CopyAsync(stream, r.dst, data(batch.buffer) + r.src_offset, r.bytes);
        if (!st.ok()) break;
        bytes += r.bytes;
      }
      Result<uint64_t> fence = st.ok() ? device_->Record(stream) : Result<uint64_t>(st);
      if (!fence.ok()) {
        // Some copies may be queued from this buffer: let them run out. The
        // first error is the one to report; a failed synchronize adds none.
        first = fence.status().WithContext("copying to " + device_->name());
        static_cast<void>(device_->Synchronize());
        ToFreeList(batch.buffer);
        continue;
      }
      in_flight.push_back(InFlight{batch.buffer, *fence, bytes, std::move(batch.tensors)});
      continue;
    }
    InFlight f = std::move(in_flight.front());
    in_flight.pop_front();
    Status st = device_->Wait(f.fence);
    if (!st.ok()) {
      if (first.ok()) first = st.WithContext("copying to " + device_->name());
      static_cast<void>(device_->Synchronize());
    }
    if (st.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        bytes_copied_ += f.bytes;
      }
      if (first.ok()) on_copied(f.tensors);
    }
    ToFreeList(f.buffer);
  }
  if (opened) device_->Close();
  return first;
}

StagingStats StagingRing::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return StagingStats{count_, buffer_bytes_, peak_in_use_, bytes_copied_};
}

}  // namespace tensorizer::internal
