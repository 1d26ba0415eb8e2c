// Cancellation: stopping a load, a save or a key derivation from outside.
//
// A CancelFlag is a one-way switch: once Cancel() is called, cancelled() is
// true for good, for the flag and for every flag made with it as parent.
// Engine calls do not take a flag as an argument; they consult the calling
// thread's current flag, which a CancelScope installs for its lifetime:
//
//   auto flag = std::make_shared<tensorizer::CancelFlag>();
//   // on another thread, later: flag->Cancel();
//   tensorizer::CancelScope scope(flag);
//   Status st = writer->Write(batch);  // kCancelled soon after Cancel()
//
// Threads the engine starts for a call (the load workers, the writer's
// hashing threads) inherit the flag current where the work was started, so a
// Load started under a scope is cancelled with it (Load::Cancel() also stops
// one load alone). What is checked, and how soon a cancelled call returns:
// between the reads of a load and the records of a save; inside every libcurl
// transfer (its progress callback, which libcurl calls for each arrival and
// about once a second when nothing arrives); in retry backoff sleeps and
// Redis receives (50 ms slices); around key derivation (Argon2id cannot be
// stopped: see DeriveKey in crypto.h). A cancelled call returns kCancelled,
// after freeing what it allocated and aborting what it started (a save
// leaves nothing at its destination, an S3 upload is aborted).
//
// Thread-safety: CancelFlag may be cancelled and read from any thread. A
// CancelScope belongs to the thread that made it and must be destroyed there,
// scopes nesting like blocks.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "tensorizer/status.h"

namespace tensorizer {

class CancelFlag {
 public:
  CancelFlag() = default;
  // Cancelled when `parent` is, as well as by its own Cancel().
  explicit CancelFlag(std::shared_ptr<const CancelFlag> parent) : parent_(std::move(parent)) {}
  CancelFlag(const CancelFlag&) = delete;
  CancelFlag& operator=(const CancelFlag&) = delete;

  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const {
    return cancelled_.load(std::memory_order_relaxed) || (parent_ && parent_->cancelled());
  }

 private:
  std::atomic<bool> cancelled_{false};
  const std::shared_ptr<const CancelFlag> parent_;
};

// Makes `flag` the calling thread's current flag until destroyed, then
// restores the previous one. A null flag shields the block from any
// cancellation: cleanup that must run to the end (aborting an S3 upload,
// removing a temporary file) runs under CancelScope(nullptr).
class CancelScope {
 public:
  explicit CancelScope(std::shared_ptr<const CancelFlag> flag);
  ~CancelScope();
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  std::shared_ptr<const CancelFlag> previous_;
};

// The calling thread's current flag (null: none).
const std::shared_ptr<const CancelFlag>& CurrentCancelFlag();

// Whether the calling thread's current flag is cancelled.
bool CancelRequested();

// The status a cancelled call returns: kCancelled, "<what>: cancelled".
Status CancelledStatus(const std::string& what);

}  // namespace tensorizer
