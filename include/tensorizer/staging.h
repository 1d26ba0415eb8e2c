// Staged loads: source -> bounded ring of pinned host buffers -> device.
//
// A load with LoadOptions::staging set reads no arena. Each worker takes a
// buffer from a ring of `buffer_count` buffers of `buffer_bytes` each, reads
// a range into it, checks hashes and decrypts there (while the bytes are in
// cache), and submits it to the copy stage. The copy stage, one thread,
// issues the buffer's copies into the destinations (one device address per
// selected tensor, owned by the caller) asynchronously on one of the
// device's streams, records a fence, and puts the buffer back in the ring
// only once the fence has passed. A tensor is published (Load::WaitTensor)
// when every copy of its bytes has completed on the device.
//
// Invariants: at most buffer_count buffers exist, whatever the speed of
// either side: a worker that finds the ring empty waits (back-pressure),
// and host memory of the load is the ring plus the tensor headers. On an
// error or a cancel the workers stop, copies not yet issued are dropped,
// copies in flight are waited for, and Load's destructor frees the ring; no
// thread of the load outlives it. Bytes already copied into a destination
// of a failed load are left there: the destinations belong to the caller,
// which discards them.
//
// CopyDevice is where the copies go: the CUDA (or HIP) runtime, loaded at
// run time from the library the framework already has in the process (so
// the engine builds without a CUDA toolkit), or a host stand-in that runs
// the same ring and copy stage with memcpy on its own threads, for machines
// without a GPU and for tests (it can be throttled to play a slow device).
//
// Thread-safety: a CopyDevice is used by one load at a time; AllocateHost
// and FreeHost are called from the thread that starts and destroys the load,
// everything else from the load's copy stage.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensorizer/status.h"

namespace tensorizer {

class CopyDevice {
 public:
  virtual ~CopyDevice() = default;
  // "cuda:0", "hip:1", "host": for messages.
  virtual std::string name() const = 0;
  // Host memory the device copies from asynchronously (page-locked for a
  // GPU). A device may keep a freed block and hand it out again, so a
  // series of loads (lazy_load) pins memory once.
  virtual Result<uint8_t*> AllocateHost(uint64_t bytes) = 0;
  virtual void FreeHost(uint8_t* data, uint64_t bytes) = 0;
  // Called on the copy stage's thread before its first copy and after its
  // last: bind the device, make and destroy streams and fences.
  virtual Status Open() = 0;
  virtual void Close() = 0;
  virtual int stream_count() const = 0;
  // Queues a copy of `bytes` from `src` (inside AllocateHost memory) to the
  // device address `dst` on `stream`; returns before it has run.
  virtual Status CopyAsync(int stream, uint64_t dst, const uint8_t* src, uint64_t bytes) = 0;
  // A fence that passes once every copy queued on `stream` so far has run.
  virtual Result<uint64_t> Record(int stream) = 0;
  // Blocks until `fence` has passed, then forgets it.
  virtual Status Wait(uint64_t fence) = 0;
  // Blocks until every copy queued on any stream has run (after a failed
  // CopyAsync or Record, before the buffer may be reused).
  virtual Status Synchronize() = 0;
};

// The CUDA or HIP runtime library at `runtime_path` (libcudart.so.N or
// libamdhip64.so.N, the one the framework loaded: it is looked up among the
// loaded libraries first, RTLD_NOLOAD, then loaded), device `device_index`,
// `streams` copy streams. Fails (kIoError) naming the library when it cannot
// be loaded or lacks a function, and with the runtime's message when the
// device cannot be used.
Result<std::shared_ptr<CopyDevice>> OpenGpuCopyDevice(const std::string& runtime_path,
                                                      int device_index, int streams);

struct HostCopyDeviceOptions {
  int streams = 2;
  // Throttle: each stream copies at most this many bytes per second (0: as
  // fast as memcpy), to stand in for a slow device in tests.
  uint64_t bytes_per_second = 0;
};

// The host stand-in: destinations are host addresses; each stream is a
// thread that memcpy's its queue in order.
std::shared_ptr<CopyDevice> OpenHostCopyDevice(const HostCopyDeviceOptions& options);

struct StagingOptions {
  std::shared_ptr<CopyDevice> device;
  // Where each selected tensor's data goes (position in `selected`), a
  // device address with room for its data_length bytes. Meta tensors
  // (stored without data) are not written: the caller zeroes them.
  std::vector<uint64_t> destinations;
  // 0: defaults. buffer_bytes: 8 MiB. buffer_count: two per worker plus
  // two, at most 1 GiB in all, and no more than the load's bytes need.
  uint32_t buffer_count = 0;
  uint64_t buffer_bytes = 0;
};

// What a staged load did with its ring (Load::staging_stats).
struct StagingStats {
  uint32_t buffer_count = 0;
  uint64_t buffer_bytes = 0;
  uint32_t peak_buffers_in_use = 0;  // most buffers out of the ring at once
  uint64_t bytes_copied = 0;
};

}  // namespace tensorizer
