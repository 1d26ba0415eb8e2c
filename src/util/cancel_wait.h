// Internal: waiting that gives way to cancellation (see tensorizer/cancel.h).
// Each wait sleeps in slices of kCancelPollMs and checks the calling thread's
// cancel flag between them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "tensorizer/cancel.h"

namespace tensorizer::internal {

inline constexpr uint32_t kCancelPollMs = 50;

// Sleeps for `ms`, or less if cancelled: returns false when cancelled.
bool SleepUnlessCancelled(uint64_t ms);

// cv.wait(lock, ready), returning false (with the lock held) as soon as the
// calling thread is cancelled instead.
template <typename Ready>
bool WaitUnlessCancelled(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                         Ready ready) {
  while (!ready()) {
    if (CancelRequested()) return false;
    cv.wait_for(lock, std::chrono::milliseconds(kCancelPollMs));
  }
  return true;
}

}  // namespace tensorizer::internal
