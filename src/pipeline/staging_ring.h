// The staging ring and its copy stage (see include/tensorizer/staging.h for
// the contract). Workers Acquire a free buffer (blocking while none is free:
// that is the back-pressure), fill it, and Submit it with its copies; the
// copy stage (RunCopies, on its own thread) issues each submitted batch on
// the next stream, records a fence, and releases the buffer to the free list
// once the fence has passed, oldest first. Invariant: a buffer is in exactly
// one of free list, a worker's hands, the submitted queue, or in flight.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "tensorizer/cancel.h"
#include "tensorizer/staging.h"
#include "tensorizer/status.h"
#include "util/thread_annotations.h"

namespace tensorizer::internal {

struct CopyRegion {
  uint64_t src_offset = 0;  // in the buffer
  uint64_t dst = 0;         // device address
  uint64_t bytes = 0;
};

struct StagedBatch {
  uint32_t buffer = 0;
  std::vector<CopyRegion> regions;
  // Tensors to count as copied once every region has landed.
  std::vector<uint32_t> tensors;
};

class StagingRing {
 public:
  // `producers`: how many threads will Submit (each calls ProducerDone).
  static Result<std::unique_ptr<StagingRing>> Create(std::shared_ptr<CopyDevice> device,
                                                     uint32_t count, uint64_t buffer_bytes,
                                                     size_t producers);
  ~StagingRing();  // call only once RunCopies has returned (or never ran)
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  uint64_t buffer_bytes() const { return buffer_bytes_; }
  uint8_t* data(uint32_t buffer) const { return memory_ + buffer * buffer_bytes_; }
  const CopyDevice& device() const { return *device_; }

  // A free buffer; waits while none is. kCancelled once `cancel` is set.
  Result<uint32_t> Acquire(const CancelFlag& cancel);
  // Back to the free list unsubmitted (the worker failed while filling it).
  void Release(uint32_t buffer);
  void Submit(StagedBatch batch);
  void ProducerDone();

  // The copy stage: runs until every producer is done and every batch has
  // landed or been dropped. Batches submitted after `cancel` is set or
  // after a device error are dropped; on_copied(tensors) runs on this thread
  // for each batch that landed. Returns the first device error.
  Status RunCopies(const CancelFlag& cancel,
                   const std::function<void(const std::vector<uint32_t>&)>& on_copied);

  StagingStats stats() const;

 private:
  StagingRing(std::shared_ptr<CopyDevice> device, uint8_t* memory, uint32_t count,
              uint64_t buffer_bytes, size_t producers);
  void ToFreeList(uint32_t buffer);

  const std::shared_ptr<CopyDevice> device_;
  uint8_t* const memory_;
  const uint32_t count_;
  const uint64_t buffer_bytes_;
  mutable std::mutex mu_;
  std::condition_variable freed_;     // a buffer came back
  std::condition_variable submitted_cv_;  // a batch came, or a producer ended
  std::vector<uint32_t> free_ TZR_GUARDED_BY(mu_);
  std::deque<StagedBatch> submitted_ TZR_GUARDED_BY(mu_);
  size_t producers_left_ TZR_GUARDED_BY(mu_);
  uint32_t in_use_ TZR_GUARDED_BY(mu_) = 0;
  uint32_t peak_in_use_ TZR_GUARDED_BY(mu_) = 0;
  uint64_t bytes_copied_ TZR_GUARDED_BY(mu_) = 0;
};

// The ring's shape for a load: options (0: defaults, see StagingOptions)
// fitted to `workers` and to the `load_bytes` the load stages.
struct RingShape {
  uint32_t count;
  uint64_t buffer_bytes;
};
RingShape ChooseRingShape(const StagingOptions& options, int workers, uint64_t load_bytes);

}  // namespace tensorizer::internal
