// CopyDevice over the CUDA or HIP runtime, loaded with dlopen.
//
// Why dlopen: the wheel is built where there is no CUDA toolkit and must
// drive the GPU wherever torch has one, with the runtime torch ships (a
// second, different libcudart in the process would be a second runtime).
// The Python layer passes the path of the runtime torch loaded (found in
// /proc/self/maps); RTLD_NOLOAD takes that very copy. The HIP runtime has
// the same calls under a "hip" prefix, with the same argument lists, flag
// values and "not ready" code for everything used here, so one table of
// function pointers serves both.
//
// Per copy stage: `streams` non-blocking streams (they do not wait on the
// legacy default stream torch's work may be on), and a pool of events made
// with blocking sync (a waiting copy stage sleeps instead of spinning).
// Pinned host memory: cudaHostAlloc(Portable), so it is pinned for every
// context; the last block freed is kept for the next load.
#include <dlfcn.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "device/host_block_cache.h"
#include "tensorizer/staging.h"

namespace tensorizer {

namespace {

using GpuError = int;
constexpr GpuError kSuccess = 0;
constexpr int kMemcpyHostToDevice = 1;
constexpr unsigned kHostAllocPortable = 1;
constexpr unsigned kStreamNonBlocking = 1;
constexpr unsigned kEventBlockingSyncDisableTiming = 1 | 2;

struct GpuRuntime {
  GpuError (*set_device)(int);
  GpuError (*host_alloc)(void**, size_t, unsigned);
  GpuError (*free_host)(void*);
  GpuError (*stream_create)(void**, unsigned);
  GpuError (*stream_destroy)(void*);
  GpuError (*stream_synchronize)(void*);
  GpuError (*memcpy_async)(void*, const void*, size_t, int, void*);
  GpuError (*event_create)(void**, unsigned);
  GpuError (*event_destroy)(void*);
  GpuError (*event_record)(void*, void*);
  GpuError (*event_synchronize)(void*);
  const char* (*error_string)(GpuError);
};

template <typename F>
bool Bind(void* lib, const std::string& name, F* out) {
  *out = reinterpret_cast<F>(::dlsym(lib, name.c_str()));
  return *out != nullptr;
}

Result<GpuRuntime> LoadRuntime(const std::string& path, const std::string& prefix) {
  void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (lib == nullptr) lib = ::dlopen(path.c_str(), RTLD_NOW);
  if (lib == nullptr) {
    const char* why = ::dlerror();
    return Status::IoError("cannot load the GPU runtime " + path + ": " +
                           (why != nullptr ? why : "dlopen failed"));
  }
  // Never dlclose'd: the framework holds the same library for the process.
  GpuRuntime rt{};
  const std::string host_alloc = prefix == "hip" ? "hipHostMalloc" : "cudaHostAlloc";
  const std::string free_host = prefix == "hip" ? "hipHostFree" : "cudaFreeHost";
  std::string missing;
  auto need = [&](bool ok, const std::string& name) {
    if (!ok && missing.empty()) missing = name;
  };
  need(Bind(lib, prefix + "SetDevice", &rt.set_device), prefix + "SetDevice");
  need(Bind(lib, host_alloc, &rt.host_alloc), host_alloc);
  need(Bind(lib, free_host, &rt.free_host), free_host);
  need(Bind(lib, prefix + "StreamCreateWithFlags", &rt.stream_create), prefix + "StreamCreateWithFlags");
  need(Bind(lib, prefix + "StreamDestroy", &rt.stream_destroy), prefix + "StreamDestroy");
  need(Bind(lib, prefix + "StreamSynchronize", &rt.stream_synchronize), prefix + "StreamSynchronize");
  need(Bind(lib, prefix + "MemcpyAsync", &rt.memcpy_async), prefix + "MemcpyAsync");
  need(Bind(lib, prefix + "EventCreateWithFlags", &rt.event_create), prefix + "EventCreateWithFlags");
  need(Bind(lib, prefix + "EventDestroy", &rt.event_destroy), prefix + "EventDestroy");
  need(Bind(lib, prefix + "EventRecord", &rt.event_record), prefix + "EventRecord");
  need(Bind(lib, prefix + "EventSynchronize", &rt.event_synchronize), prefix + "EventSynchronize");
  need(Bind(lib, prefix + "GetErrorString", &rt.error_string), prefix + "GetErrorString");
  if (!missing.empty()) {
    return Status::IoError("the GPU runtime " + path + " has no function " + missing);
  }
  return rt;
}

class GpuCopyDevice final : public CopyDevice {
 public:
  GpuCopyDevice(GpuRuntime rt, std::string name, int device, int streams)
      : rt_(rt), name_(std::move(name)), device_(device), stream_count_(std::max(streams, 1)) {}

  ~GpuCopyDevice() override { Close(); }

  std::string name() const override { return name_; }

  Result<uint8_t*> AllocateHost(uint64_t bytes) override {
    if (uint8_t* kept = kept_.Take(bytes)) return kept;
    TZR_RETURN_IF_ERROR(Check(rt_.set_device(device_), "selecting the device"));
    void* p = nullptr;
    TZR_RETURN_IF_ERROR(Check(rt_.host_alloc(&p, bytes, kHostAllocPortable), "pinning host memory"));
    return static_cast<uint8_t*>(p);
  }

  void FreeHost(uint8_t* data, uint64_t bytes) override { kept_.Put(data, bytes); }

  Status Open() override {
    TZR_RETURN_IF_ERROR(Check(rt_.set_device(device_), "selecting the device"));
    for (int i = 0; i < stream_count_; ++i) {
      void* s = nullptr;
      TZR_RETURN_IF_ERROR(Check(rt_.stream_create(&s, kStreamNonBlocking), "creating a stream"));
      streams_.push_back(s);
    }
    return Status::Ok();
  }

  void Close() override {
    for (void* e : events_) rt_.event_destroy(e);
    events_.clear();
    free_events_.clear();
    for (void* s : streams_) {
      rt_.stream_synchronize(s);
      rt_.stream_destroy(s);
    }
    streams_.clear();
  }

  int stream_count() const override { return stream_count_; }

  Status CopyAsync(int stream, uint64_t dst, const uint8_t* src, uint64_t bytes) override {
    return Check(rt_.memcpy_async(reinterpret_cast<void*>(dst), src, bytes, kMemcpyHostToDevice,
                                  streams_[static_cast<size_t>(stream)]),
                 "queueing a host-to-device copy");
  }

  Result<uint64_t> Record(int stream) override {
    uint64_t slot;
    if (!free_events_.empty()) {
      slot = free_events_.back();
      free_events_.pop_back();
    } else {
      void* e = nullptr;
      TZR_RETURN_IF_ERROR(
          Check(rt_.event_create(&e, kEventBlockingSyncDisableTiming), "creating an event"));
      slot = events_.size();
      events_.push_back(e);
    }
    Status st = Check(rt_.event_record(events_[slot], streams_[static_cast<size_t>(stream)]),
                      "recording an event");
    if (!st.ok()) {
      free_events_.push_back(slot);
      return st;
    }
    return slot;
  }

  Status Wait(uint64_t fence) override {
    Status st = Check(rt_.event_synchronize(events_[fence]), "waiting for copies");
    free_events_.push_back(fence);
    return st;
  }

  Status Synchronize() override {
    for (void* s : streams_) {
      TZR_RETURN_IF_ERROR(Check(rt_.stream_synchronize(s), "waiting for copies"));
    }
    return Status::Ok();
  }

 private:
  Status Check(GpuError e, const char* what) const {
    if (e == kSuccess) return Status::Ok();
    const char* msg = rt_.error_string(e);
    return Status::IoError(name_ + ": " + what + ": " + (msg != nullptr ? msg : "error") + " (" +
                           std::to_string(e) + ")");
  }

  const GpuRuntime rt_;
  const std::string name_;
  const int device_;
  const int stream_count_;
  // Copy-stage thread only.
  std::vector<void*> streams_;
  std::vector<void*> events_;
  std::vector<uint64_t> free_events_;
  // After rt_: released while the runtime is still loaded.
  internal::HostBlockCache kept_{[this](uint8_t* p, uint64_t) { rt_.free_host(p); }};
};

}  // namespace

Result<std::shared_ptr<CopyDevice>> OpenGpuCopyDevice(const std::string& runtime_path,
                                                      int device_index, int streams) {
  const bool hip = runtime_path.find("amdhip") != std::string::npos;
  auto rt = LoadRuntime(runtime_path, hip ? "hip" : "cuda");
  if (!rt.ok()) return rt.status();
  std::string name = (hip ? "hip:" : "cuda:") + std::to_string(device_index);
  return std::shared_ptr<CopyDevice>(
      std::make_shared<GpuCopyDevice>(*rt, std::move(name), device_index, streams));
}

}  // namespace tensorizer
