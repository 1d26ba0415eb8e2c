// Cancellation: see include/tensorizer/cancel.h. The current flag is a
// thread-local shared_ptr, so checking it is one load and no lock.
#include "tensorizer/cancel.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "util/cancel_wait.h"

namespace tensorizer {

namespace {

std::shared_ptr<const CancelFlag>& Current() {
  thread_local std::shared_ptr<const CancelFlag> current;
  return current;
}

}  // namespace

CancelScope::CancelScope(std::shared_ptr<const CancelFlag> flag)
    : previous_(std::exchange(Current(), std::move(flag))) {}

CancelScope::~CancelScope() { Current() = std::move(previous_); }

const std::shared_ptr<const CancelFlag>& CurrentCancelFlag() { return Current(); }

bool CancelRequested() {
  const std::shared_ptr<const CancelFlag>& f = Current();
  return f && f->cancelled();
}

Status CancelledStatus(const std::string& what) { return Status::Cancelled(what + ": cancelled"); }

namespace internal {

bool SleepUnlessCancelled(uint64_t ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (true) {
    if (CancelRequested()) return false;
    auto now = std::chrono::steady_clock::now();
    if (now >= end) return true;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(end - now,
                                                      std::chrono::milliseconds(kCancelPollMs)));
  }
}

}  // namespace internal

}  // namespace tensorizer
