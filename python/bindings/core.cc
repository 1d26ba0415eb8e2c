// The _core extension: a thin, mechanical layer over the C++ engine.
//
// It releases the GIL around all I/O and hashing, hands the load arena to
// Python as a NumPy uint8 array whose owner keeps the arena alive (torch wraps
// it zero-copy with torch.from_numpy), and raises errors through a factory the
// Python package installs (tensorizer/_errors.py), so the mapping from status
// codes to exception types lives in one place, in Python.
//
// Ctrl-C: Python runs signal handlers only on the main thread, between
// bytecodes, so a thread blocked in the engine would hold a KeyboardInterrupt
// back until the engine returned. Every call that may wait (I/O, key
// derivation, load waits) therefore waits in slices of kSignalPollMs and
// calls PyErr_CheckSignals between them. When a handler raises, the work is
// cancelled (tensorizer/cancel.h), the call waits for the engine to unwind
// (threads joined, buffers freed, a save aborted) and the exception
// propagates. Calls without a natural wait run on a helper thread for this.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "format/hash.h"
#include "storage/http_source.h"
#include "storage/parsed_uri.h"
#include "storage/registry.h"
#include "tensorizer/cancel.h"
#include "tensorizer/crypto.h"
#include "tensorizer/format.h"
#include "tensorizer/load.h"
#include "tensorizer/machine.h"
#include "tensorizer/mapped.h"
#include "tensorizer/source.h"
#include "tensorizer/staging.h"
#include "tensorizer/uri.h"
#include "tensorizer/write.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace tensorizer {
namespace {

nb::object& ErrorFactory() {
  static nb::object* factory = new nb::object();  // leaked: outlives interpreter teardown order
  return *factory;
}

[[noreturn]] void Raise(const Status& st) {
  nb::object& f = ErrorFactory();
  if (!f.is_valid()) throw std::runtime_error(st.ToString());
  nb::object exc = f(StatusCodeName(st.code()), st.message(), st.sys_errno());
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw nb::python_error();
}

void Check(const Status& st) {
  if (!st.ok()) Raise(st);
}

template <typename T>
T Take(Result<T>&& r) {
  if (!r.ok()) Raise(r.status());
  return std::move(r).value();
}

constexpr std::chrono::milliseconds kSignalPollMs{50};

// Runs fn() (engine work that touches no Python object) on a helper thread
// under a fresh cancel flag, with the GIL released, and waits for it in
// slices, checking for signals (see the file comment). Returns fn()'s value.
template <typename F>
auto Interruptible(F fn) -> decltype(fn()) {
  using R = decltype(fn());
  auto flag = std::make_shared<CancelFlag>();
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::optional<R> result;
  std::exception_ptr thrown;
  std::thread worker;
  {
    nb::gil_scoped_release release;
    worker = std::thread([&] {
      CancelScope scope(flag);
      std::optional<R> r;
      std::exception_ptr e;
      try {
        r.emplace(fn());
      } catch (...) {
        e = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mu);
      result = std::move(r);
      thrown = e;
      done = true;
      cv.notify_all();
    });
  }
  while (true) {
    bool finished;
    {
      nb::gil_scoped_release release;
      std::unique_lock<std::mutex> lock(mu);
      finished = cv.wait_for(lock, kSignalPollMs, [&] { return done; });
    }
    if (finished) break;
    if (PyErr_CheckSignals() != 0) {
      flag->Cancel();
      {
        nb::gil_scoped_release release;
        worker.join();
      }
      throw nb::python_error();
    }
  }
  {
    nb::gil_scoped_release release;
    worker.join();
  }
  if (thrown) std::rethrow_exception(thrown);
  return std::move(*result);
}

// A load wait (`wait(timeout)`: Load::WaitFor or WaitTensorFor) in slices,
// checking for signals; a signal cancels the load and waits for its workers
// to stop before the exception propagates.
template <typename W>
Status InterruptibleWait(Load& load, W wait) {
  while (true) {
    std::optional<Status> st;
    {
      nb::gil_scoped_release release;
      st = wait(kSignalPollMs);
    }
    if (st) return *st;
    if (PyErr_CheckSignals() != 0) {
      load.Cancel();
      {
        nb::gil_scoped_release release;
        (void)load.Wait();
      }
      throw nb::python_error();
    }
  }
}

nb::bytes Bytes(const std::string& s) { return nb::bytes(s.data(), s.size()); }

CryptKey KeyArg(const nb::bytes& b) {
  if (b.size() != kKeyBytes) throw nb::value_error("encryption keys are 32 bytes");
  CryptKey key;
  std::memcpy(key.data(), b.c_str(), kKeyBytes);
  return key;
}

// Writer options from (num_threads, key or None, (opslimit, memlimit, salt) or
// None, data alignment in bytes).
WriterOptions WriterArgs(int num_threads, std::optional<nb::bytes> key,
                         std::optional<nb::tuple> kdf, uint64_t align) {
  WriterOptions o;
  o.num_threads = num_threads;
  o.data_alignment_bytes = align;
  if (!key) return o;
  WriterEncryption e;
  e.key = KeyArg(*key);
  if (kdf) {
    KeyDerivationChunk k;
    k.pwhash.opslimit = nb::cast<uint64_t>((*kdf)[0]);
    k.pwhash.memlimit = nb::cast<uint64_t>((*kdf)[1]);
    nb::bytes salt = nb::cast<nb::bytes>((*kdf)[2]);
    k.pwhash.salt = std::string(salt.c_str(), salt.size());
    e.key_derivation = k;
  }
  o.encryption = std::move(e);
  return o;
}

// Remote-backend options from a dict of {name: value}; unknown names are an
// error so a typo never silently falls back to a default. Python builds the
// dict (stream_io.HttpOptions, CAInfo, the s3_* arguments).
template <typename T>
bool TakeOpt(nb::dict& d, const char* name, T* out) {
  if (!d.contains(name)) return false;
  nb::object v = d[name];
  nb::del(d[name]);
  if (v.is_none()) return false;
  *out = nb::cast<T>(v);
  return true;
}

template <typename T>
void TakeOpt(nb::dict& d, const char* name, std::optional<T>* out) {
  T v;
  if (TakeOpt(d, name, &v)) *out = std::move(v);
}

void ParseRemoteOptions(nb::dict options, HttpOptions* http, S3Options* s3,
                        S3UploadOptions* upload) {
  nb::dict d = nb::steal<nb::dict>(PyDict_Copy(options.ptr()));
  TakeOpt(d, "connect_timeout_ms", &http->connect_timeout_ms);
  TakeOpt(d, "low_speed_timeout_ms", &http->low_speed_timeout_ms);
  TakeOpt(d, "min_speed_bytes_per_s", &http->min_speed_bytes_per_s);
  TakeOpt(d, "deadline_ms", &http->deadline_ms);
  TakeOpt(d, "throttle_retry_ms", &http->throttle_retry_ms);
  TakeOpt(d, "ca_file", &http->ca_file);
  TakeOpt(d, "ca_path", &http->ca_path);
  TakeOpt(d, "verify_tls", &http->verify_tls);
  TakeOpt(d, "max_retries", &http->max_retries);
  TakeOpt(d, "retry_base_delay_ms", &http->retry_base_delay_ms);
  TakeOpt(d, "retry_max_delay_ms", &http->retry_max_delay_ms);
  TakeOpt(d, "s3_access_key_id", &s3->access_key_id);
  TakeOpt(d, "s3_secret_access_key", &s3->secret_access_key);
  TakeOpt(d, "s3_session_token", &s3->session_token);
  TakeOpt(d, "s3_endpoint", &s3->endpoint);
  TakeOpt(d, "s3_region", &s3->region);
  TakeOpt(d, "s3_config_path", &s3->s3cfg_path);
  TakeOpt(d, "s3_profile", &s3->profile);
  TakeOpt(d, "force_http", &s3->force_http);
  std::string addressing;
  if (TakeOpt(d, "s3_addressing", &addressing)) {
    if (addressing == "path") {
      s3->addressing = S3Options::Addressing::kPath;
    } else if (addressing == "virtual") {
      s3->addressing = S3Options::Addressing::kVirtual;
    } else if (addressing != "auto") {
      throw nb::value_error("s3_addressing must be 'auto', 'path' or 'virtual'");
    }
  }
  if (upload) {
    TakeOpt(d, "s3_part_bytes", &upload->part_bytes);
    TakeOpt(d, "s3_parallel_uploads", &upload->parallel_uploads);
    TakeOpt(d, "s3_max_queued_parts", &upload->max_queued_parts);
    TakeOpt(d, "s3_parts_per_size_step", &upload->parts_per_size_step);
  }
  if (d.size() != 0) {
    std::string names;
    for (auto [k, v] : d) names += (names.empty() ? "" : ", ") + nb::cast<std::string>(k);
    throw nb::value_error(("unknown remote options: " + names).c_str());
  }
}

// "auto" / "on" / "off", as the Python layer spells FileOptions::direct_io.
FileOptions FileArgs(const std::string& direct_io) {
  FileOptions o;
  if (direct_io == "on") {
    o.direct_io = DirectIo::kOn;
  } else if (direct_io == "off") {
    o.direct_io = DirectIo::kOff;
  } else if (direct_io != "auto") {
    throw nb::value_error("direct_io must be 'auto', 'on' or 'off'");
  }
  return o;
}

// An open byte source (any scheme), for stream_io's engine-backed streams and
// for TensorDeserializer.
class PySource {
 public:
  explicit PySource(std::shared_ptr<const Source> s) : s_(std::move(s)) {}
  const std::shared_ptr<const Source>& get() const { return s_; }

 private:
  std::shared_ptr<const Source> s_;
};

using WritableBytes = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// A sink for stream_io's write streams of raw bytes.
class PySink {
 public:
  explicit PySink(std::unique_ptr<Sink> s) : s_(std::move(s)) {}
  Sink& get() {
    if (!s_) throw nb::value_error("the sink is closed");
    return *s_;
  }
  void Finish(bool commit) {
    if (!s_) return;
    std::unique_ptr<Sink> s = std::move(s_);
    if (commit) {
      Check(Interruptible([&] { return s->Commit(); }));
    } else {
      nb::gil_scoped_release release;
      s->Abort();
    }
  }

 private:
  std::unique_ptr<Sink> s_;
};

// An open .tensors file: its source and parsed index.
class PyReader {
 public:
  explicit PyReader(std::shared_ptr<const Source> source) : source_(std::move(source)) {
    Result<Index> index = Interruptible([&] { return ReadIndex(*source_); });
    index_ = std::make_shared<const Index>(Take(std::move(index)));
  }

  const std::string& uri() const { return source_->uri(); }
  uint64_t file_size() const { return source_->size(); }
  const Index& index() const { return *index_; }
  const Source& source() const { return *source_; }

  nb::list entries() const {
    nb::list out;
    for (const TensorEntry& e : index_->entries) {
      nb::tuple shape = nb::steal<nb::tuple>(PyTuple_New(static_cast<Py_ssize_t>(e.shape.size())));
      for (size_t i = 0; i < e.shape.size(); ++i) {
        PyTuple_SET_ITEM(shape.ptr(), i, PyLong_FromUnsignedLongLong(e.shape[i]));
      }
      out.append(nb::make_tuple(Bytes(e.name), static_cast<int>(e.type), Bytes(e.dtype), shape,
                                e.header_offset, e.data_offset, e.data_length, e.metadata_version));
    }
    return out;
  }

  // verify: 0 none, 1 fast (CRC32 where stored), 2 all stored hashes.
  std::unique_ptr<Load> StartLoad(const std::vector<size_t>& selected, int verify, int num_threads,
                                  uint64_t chunk_bytes, bool huge_pages,
                                  std::optional<nb::bytes> key,
                                  std::optional<nb::bytes> passphrase,
                                  uint64_t max_pwhash_opslimit, uint64_t max_pwhash_memlimit,
                                  std::shared_ptr<CopyDevice> staging_device,
                                  std::vector<uint64_t> destinations, uint32_t buffer_count,
                                  uint64_t buffer_bytes) {
    LoadOptions o;
    if (staging_device) {
      StagingOptions so;
      so.device = std::move(staging_device);
      so.destinations = std::move(destinations);
      so.buffer_count = buffer_count;
      so.buffer_bytes = buffer_bytes;
      o.staging = std::move(so);
    }
    if (key || passphrase) {
      DecryptionOptions d;
      if (key) d.key = KeyArg(*key);
      if (passphrase) d.passphrase = std::string(passphrase->c_str(), passphrase->size());
      d.max_pwhash_opslimit = max_pwhash_opslimit;
      d.max_pwhash_memlimit = max_pwhash_memlimit;
      d.derived_keys = derived_keys_;  // lazy loads of one file derive each key once
      o.decryption = std::move(d);
    }
    o.verify = static_cast<HashCheck>(std::clamp(verify, 0, 2));
    o.num_threads = num_threads;
    o.chunk_bytes = chunk_bytes;
    o.huge_pages = huge_pages;
    Result<std::unique_ptr<Load>> load = [&] {
      nb::gil_scoped_release release;
      return Load::Start(source_, index_, selected, o);
    }();
    return Take(std::move(load));
  }

  // The file's copy-on-write mapping, made on first use and shared by every
  // mapped load of this reader (a lazy load maps the file once).
  const std::shared_ptr<FileMapping>& Map() {
    if (!mapping_) {
      Result<std::shared_ptr<FileMapping>> m = [&] {
        nb::gil_scoped_release release;
        return FileMapping::Map(*source_);
      }();
      mapping_ = Take(std::move(m));
    }
    return mapping_;
  }

  MappedLoad StartMappedLoad(const std::vector<size_t>& selected, int verify, int num_threads,
                             bool huge_pages) {
    MappedLoadOptions o;
    o.verify = static_cast<HashCheck>(std::clamp(verify, 0, 2));
    o.num_threads = num_threads;
    o.huge_pages = huge_pages;
    std::shared_ptr<FileMapping> mapping = Map();
    Result<MappedLoad> load = Interruptible(
        [&] { return MappedLoad::Run(*source_, *index_, mapping, selected, o); });
    return Take(std::move(load));
  }

 private:
  std::shared_ptr<const Source> source_;
  std::shared_ptr<const Index> index_;
  std::shared_ptr<FileMapping> mapping_;
  std::shared_ptr<DerivedKeyCache> derived_keys_ = std::make_shared<DerivedKeyCache>();
};

using ArenaArray = nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>;

// A NumPy uint8 array over memory whose owner keeps `keep` (an arena or a
// file mapping) alive.
template <typename T>
ArenaArray OwnedView(const std::shared_ptr<T>& memory) {
  auto* keep = new std::shared_ptr<T>(memory);
  nb::capsule owner(keep, [](void* p) noexcept { delete static_cast<std::shared_ptr<T>*>(p); });
  size_t shape[1] = {static_cast<size_t>(memory->size())};
  return ArenaArray(memory->data(), 1, shape, owner);
}

nb::list HashList(const TensorHeader& h) {
  nb::list hashes;
  for (const StoredHash& sh : h.hashes) {
    hashes.append(nb::make_tuple(static_cast<int>(sh.type), Bytes(sh.value)));
  }
  return hashes;
}

nb::tuple TensorInfo(const Load& load, size_t i) {
  const TensorHeader& h = load.header(i);
  return nb::make_tuple(load.arena_offset(i), load.arena_bytes(i), h.module_idx, HashList(h),
                        Bytes(load.hashed_header(i)));
}

std::string BytesArg(nb::handle h) {
  nb::bytes b = nb::cast<nb::bytes>(h);
  return std::string(b.c_str(), b.size());
}

using ByteArray = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

struct PendingTensor {
  TensorWrite write;
};

class PyWriter {
 public:
  explicit PyWriter(std::unique_ptr<Writer> w) : w_(std::move(w)) {}

  // tensors: list of (name: bytes, type: int, module_idx: int, dtype: bytes,
  // shape: tuple[int], data: uint8 array or None for a meta tensor).
  void Write(nb::list tensors) {
    std::vector<TensorWrite> batch;
    batch.reserve(tensors.size());
    for (nb::handle item : tensors) {
      nb::tuple t = nb::borrow<nb::tuple>(item);
      TensorWrite w;
      w.name = BytesArg(t[0]);
      w.type = static_cast<TensorType>(nb::cast<int>(t[1]));
      w.module_idx = nb::cast<uint16_t>(t[2]);
      w.dtype = BytesArg(t[3]);
      w.shape = nb::cast<std::vector<uint64_t>>(t[4]);
      if (t[5].is_none()) {
        w.meta = true;
      } else {
        ByteArray data = nb::cast<ByteArray>(t[5]);
        w.data = data.data();
        w.data_length = data.shape(0);
      }
      batch.push_back(std::move(w));
    }
    Check(Interruptible([&] { return w_->Write(batch); }));
  }

  void Close() { Check(Interruptible([&] { return w_->Close(); })); }

  Writer& writer() { return *w_; }

 private:
  std::unique_ptr<Writer> w_;
};

struct UriSchemeKind {
  std::string scheme;
  std::optional<std::string> kind;
  bool remote = true;
  bool readable = false;
  bool writable = false;
};

}  // namespace
}  // namespace tensorizer

NB_MODULE(_core, m) {
  using namespace tensorizer;
  m.doc() = "tensorizer C++ engine";

  m.def("_set_error_factory", [](nb::object f) { ErrorFactory() = std::move(f); });

  nb::class_<PyReader>(m, "Reader")
      .def_static(
          "open_path",
          [](const std::string& path, const std::string& direct_io) {
            SourceOptions o;
            o.file = FileArgs(direct_io);
            Result<std::unique_ptr<Source>> s = Interruptible([&] { return OpenSource(path, o); });
            return std::make_unique<PyReader>(std::shared_ptr<const Source>(Take(std::move(s))));
          },
          "path"_a, "direct_io"_a = "auto")
      .def_static("open_source",
                  [](const PySource& s) { return std::make_unique<PyReader>(s.get()); })
      .def_static(
          "open_fd",
          [](int fd, const std::string& name, const std::string& direct_io) {
            FileOptions o = FileArgs(direct_io);
            Result<std::unique_ptr<Source>> s = [&] {
              nb::gil_scoped_release release;
              return OpenFdSource(fd, name, o);
            }();
            return std::make_unique<PyReader>(std::shared_ptr<const Source>(Take(std::move(s))));
          },
          "fd"_a, "name"_a, "direct_io"_a = "auto")
      .def_static("open_bytes",
                  [](nb::bytes data, const std::string& name) {
                    std::string copy(data.c_str(), data.size());
                    return std::make_unique<PyReader>(
                        std::shared_ptr<const Source>(MakeMemorySource(std::move(copy), name)));
                  })
      .def_prop_ro("uri", &PyReader::uri)
      .def_prop_ro("file_size", &PyReader::file_size)
      .def_prop_ro("format",
                   [](const PyReader& r) {
                     return r.index().format == FileFormat::kSafetensors ? "safetensors"
                                                                         : "tensorizer";
                   })
      .def_prop_ro("version", [](const PyReader& r) { return r.index().header.version; })
      .def_prop_ro("flags", [](const PyReader& r) { return r.index().header.flags; })
      .def_prop_ro("tensor_size", [](const PyReader& r) { return r.index().header.tensor_size; })
      .def_prop_ro("tensor_count", [](const PyReader& r) { return r.index().header.tensor_count; })
      .def_prop_ro("has_crypt_info",
                   [](const PyReader& r) { return r.index().header.has_crypt_info(); })
      .def_prop_ro("prefix_length", [](const PyReader& r) { return r.index().prefix_length(); })
      .def("entries", &PyReader::entries)
      // How a local file was read so far: (direct_block_bytes,
      // buffered_reason, direct_bytes, buffered_bytes, in_place_bytes); None
      // for other sources.
      .def_prop_ro("read_stats",
                   [](const PyReader& r) -> std::optional<nb::tuple> {
                     auto s = FileReadStatsOf(r.source());
                     if (!s) return std::nullopt;
                     return nb::make_tuple(s->direct_block_bytes, s->buffered_reason,
                                           s->direct_bytes, s->buffered_bytes,
                                           s->in_place_bytes);
                   })
      // Workers a load runs by default (ResolveLoadOptions: one per core,
      // at least 4 for remote sources and direct reads), before the cap by
      // the plan's jobs.
      .def("default_threads",
           [](const PyReader& r) {
             return ResolveLoadOptions(LoadOptions(), LoadContextOf(r.source(), r.index())).threads;
           })
      // Raw bytes of the file (any source), e.g. for to_redis.
      .def("read",
           [](const PyReader& r, uint64_t offset, uint64_t length) {
             std::string out(length, '\0');
             Check(Interruptible([&] { return r.source().ReadAt(offset, out.data(), length); }));
             return Bytes(out);
           })
      // Maps the file (idempotent); ValueError for sources that are not
      // local files.
      .def("map", [](PyReader& r) { (void)r.Map(); })
      .def("start_mapped_load", &PyReader::StartMappedLoad, "selected"_a, "verify"_a = 0,
           "num_threads"_a = 0, "huge_pages"_a = true)
      .def("start_load", &PyReader::StartLoad, "selected"_a, "verify"_a = 0, "num_threads"_a = 0,
           "chunk_bytes"_a = 16ull << 20, "huge_pages"_a = true, "key"_a = nb::none(),
           "passphrase"_a = nb::none(), "max_pwhash_opslimit"_a = kDefaultMaxPwhashOpsLimit,
           "max_pwhash_memlimit"_a = kDefaultMaxPwhashMemLimit,
           // A staged load (tensorizer/staging.h): the bytes go through a
           // ring of buffers to `destinations` (an address per tensor).
           "staging_device"_a = nb::none(), "destinations"_a = std::vector<uint64_t>(),
           "buffer_count"_a = 0, "buffer_bytes"_a = 0);

  // Where a staged load's copies go: the GPU runtime the framework loaded
  // (its path), or the host stand-in (addresses are host memory).
  nb::class_<CopyDevice>(m, "CopyDevice")
      .def_static(
          "gpu",
          [](const std::string& runtime_path, int device_index, int streams) {
            return Take(OpenGpuCopyDevice(runtime_path, device_index, streams));
          },
          "runtime_path"_a, "device_index"_a, "streams"_a = 2)
      .def_static(
          "host",
          [](int streams, uint64_t bytes_per_second) {
            HostCopyDeviceOptions o;
            o.streams = streams;
            o.bytes_per_second = bytes_per_second;
            return OpenHostCopyDevice(o);
          },
          "streams"_a = 2, "bytes_per_second"_a = 0)
      .def_prop_ro("name", &CopyDevice::name);

  nb::class_<PySource>(m, "Source")
      .def_static(
          "open",
          [](const std::string& uri, nb::dict options) {
            SourceOptions o;
            ParseRemoteOptions(options, &o.http, &o.s3, nullptr);
            Result<std::unique_ptr<Source>> s = Interruptible([&] { return OpenSource(uri, o); });
            return std::make_unique<PySource>(std::shared_ptr<const Source>(Take(std::move(s))));
          },
          "uri"_a, "options"_a = nb::dict())
      .def_prop_ro("size", [](const PySource& s) { return s.get()->size(); })
      .def_prop_ro("uri", [](const PySource& s) { return s.get()->uri(); })
      // [(name, value)] of the HTTP response that opened an http(s):// or
      // s3:// source, as bytes (headers need not be UTF-8); [] for others.
      .def_prop_ro("response_headers",
                   [](const PySource& s) {
                     nb::list out;
                     for (const auto& [name, value] : internal::OpenResponseHeaders(*s.get())) {
                       out.append(nb::make_tuple(nb::bytes(name.data(), name.size()),
                                                 nb::bytes(value.data(), value.size())));
                     }
                     return out;
                   })
      // Fills the whole buffer from `offset` (the caller clips to the size).
      .def("read_into", [](const PySource& s, uint64_t offset, WritableBytes dst) {
        Check(Interruptible([&] { return s.get()->ReadAt(offset, dst.data(), dst.shape(0)); }));
      });

  nb::class_<PySink>(m, "Sink")
      .def_static(
          "create",
          [](const std::string& uri, nb::dict options) {
            SinkOptions o;
            ParseRemoteOptions(options, &o.http, &o.s3, &o.s3_upload);
            Result<std::unique_ptr<Sink>> s = Interruptible([&] { return CreateSink(uri, o); });
            return std::make_unique<PySink>(Take(std::move(s)));
          },
          "uri"_a, "options"_a = nb::dict())
      .def("write_at",
           [](PySink& s, uint64_t offset, ByteArray data) {
             Sink& sink = s.get();
             Check(Interruptible([&] { return sink.WriteAt(offset, data.data(), data.shape(0)); }));
           })
      .def("commit", [](PySink& s) { s.Finish(true); })
      .def("abort", [](PySink& s) { s.Finish(false); })
      .def_prop_ro("uri", [](PySink& s) { return s.get().uri(); });

  nb::class_<Load>(m, "Load")
      .def("wait_tensor",
           [](Load& l, size_t i) {
             if (i >= l.tensor_count()) throw nb::index_error();
             Check(InterruptibleWait(l, [&](auto slice) { return l.WaitTensorFor(i, slice); }));
           })
      .def("wait",
           [](Load& l) {
             Check(InterruptibleWait(l, [&](auto slice) { return l.WaitFor(slice); }));
           })
      .def("cancel", &Load::Cancel)
      // The capsule owns a shared_ptr to the arena: NumPy arrays (and the
      // torch tensors made from them) keep the memory alive, whatever
      // happens to Load.
      .def("arena", [](const Load& l) { return OwnedView(l.arena()); })
      // Where each tensor's bytes will be, known before they arrive, so the
      // caller can build its views while the workers read.
      .def("layout",
           [](const Load& l) {
             nb::list out;
             for (size_t i = 0; i < l.tensor_count(); ++i) {
               out.append(nb::make_tuple(l.arena_offset(i), l.arena_bytes(i)));
             }
             return out;
           })
      .def("tensor_info",
           [](const Load& l, size_t i) {
             if (i >= l.tensor_count()) throw nb::index_error();
             return TensorInfo(l, i);
           })
      .def_prop_ro("tensor_count", &Load::tensor_count)
      .def_prop_ro("bytes_read", &Load::bytes_read)
      // (buffer_count, buffer_bytes, peak_buffers_in_use, bytes_copied)
      .def("staging_stats",
           [](const Load& l) {
             StagingStats s = l.staging_stats();
             return nb::make_tuple(s.buffer_count, s.buffer_bytes, s.peak_buffers_in_use,
                                   s.bytes_copied);
           });

  // A finished mapped load: tensors are views on mapping() (the whole file,
  // at their file offsets) or on arena() (copies), as layout() says.
  nb::class_<MappedLoad>(m, "MappedLoad")
      .def("mapping", [](const MappedLoad& l) { return OwnedView(l.mapping()); })
      .def("arena",
           [](const MappedLoad& l) -> std::optional<ArenaArray> {
             if (!l.arena()) return std::nullopt;
             return OwnedView(l.arena());
           })
      // [(mapped, offset, bytes)] per tensor: offset in the mapping (the
      // file) when mapped, else in the arena.
      .def("layout",
           [](const MappedLoad& l) {
             nb::list out;
             for (const MappedTensor& t : l.tensors()) {
               out.append(nb::make_tuple(t.mapped, t.offset, t.bytes));
             }
             return out;
           })
      .def("tensor_info",
           [](const MappedLoad& l, size_t i) {
             if (i >= l.tensors().size()) throw nb::index_error();
             const MappedTensor& t = l.tensors()[i];
             return nb::make_tuple(t.offset, t.bytes, t.header.module_idx, HashList(t.header),
                                   Bytes(t.hashed_header));
           })
      .def_prop_ro("tensor_count", [](const MappedLoad& l) { return l.tensors().size(); })
      .def_prop_ro("copied_count", &MappedLoad::copied_count)
      .def_prop_ro("copied_bytes", &MappedLoad::copied_bytes)
      .def_prop_ro("mapped_bytes", &MappedLoad::mapped_bytes);

  nb::class_<PyWriter>(m, "Writer")
      .def_static(
          "create",
          [](const std::string& path, int num_threads, std::optional<nb::bytes> key,
             std::optional<nb::tuple> kdf, uint64_t align) {
            WriterOptions o = WriterArgs(num_threads, key, kdf, align);
            auto sink = Take(CreateFileSink(path));
            return std::make_unique<PyWriter>(Take(Writer::Create(std::move(sink), o)));
          },
          "path"_a, "num_threads"_a = 0, "key"_a = nb::none(), "kdf"_a = nb::none(),
          "align"_a = 0)
      .def_static(
          "create_uri",
          [](const std::string& uri, nb::dict options, int num_threads,
             std::optional<nb::bytes> key, std::optional<nb::tuple> kdf, uint64_t align) {
            WriterOptions o = WriterArgs(num_threads, key, kdf, align);
            SinkOptions so;
            ParseRemoteOptions(options, &so.http, &so.s3, &so.s3_upload);
            Result<std::unique_ptr<Sink>> sink = Interruptible([&] { return CreateSink(uri, so); });
            return std::make_unique<PyWriter>(Take(Writer::Create(Take(std::move(sink)), o)));
          },
          "uri"_a, "options"_a, "num_threads"_a = 0, "key"_a = nb::none(), "kdf"_a = nb::none(),
          "align"_a = 0)
      .def_static(
          "from_fd",
          [](int fd, const std::string& name, int num_threads, std::optional<nb::bytes> key,
             std::optional<nb::tuple> kdf, uint64_t align) {
            WriterOptions o = WriterArgs(num_threads, key, kdf, align);
            auto sink = Take(CreateFdSink(fd, name));
            return std::make_unique<PyWriter>(Take(Writer::Create(std::move(sink), o)));
          },
          "fd"_a, "name"_a, "num_threads"_a = 0, "key"_a = nb::none(), "kdf"_a = nb::none(),
          "align"_a = 0)
      .def("write", &PyWriter::Write)
      .def("close", &PyWriter::Close)
      .def("abort", [](PyWriter& w) { w.writer().Abort(); })
      .def_prop_ro("closed", [](PyWriter& w) { return w.writer().closed(); })
      .def_prop_ro("version", [](PyWriter& w) { return w.writer().version(); })
      .def_prop_ro("tensor_size", [](PyWriter& w) { return w.writer().tensor_size(); })
      .def_prop_ro("tensor_count", [](PyWriter& w) { return w.writer().tensor_count(); });

  // Argon2id as tensorizer's EncryptionParams.from_string uses it.
  m.def(
      "derive_key",
      [](nb::bytes passphrase, uint64_t opslimit, uint64_t memlimit, nb::bytes salt) {
        PwhashParams p;
        p.opslimit = opslimit;
        p.memlimit = memlimit;
        p.salt = std::string(salt.c_str(), salt.size());
        std::string pw(passphrase.c_str(), passphrase.size());
        Result<CryptKey> key = Interruptible([&] { return DeriveKey(pw, p); });
        CryptKey k = Take(std::move(key));
        return nb::bytes(reinterpret_cast<const char*>(k.data()), k.size());
      },
      "passphrase"_a, "opslimit"_a, "memlimit"_a, "salt"_a);
  // The one redaction rule for URIs (include/tensorizer/uri.h), for the
  // Python layer's messages and reprs.
  m.def("available_cores", &AvailableCores);
  m.def("redact_uri", [](const std::string& uri) { return RedactUri(uri); }, "uri"_a);

  // The scheme registry's answer (src/storage/registry.h), so Python keeps
  // no scheme list of its own: None for a bare local path, else what the
  // URI's scheme is and whether a backend reads or writes it.
  nb::class_<UriSchemeKind>(m, "UriSchemeKind")
      .def_ro("scheme", &UriSchemeKind::scheme, "the scheme, lowercased")
      .def_ro("kind", &UriSchemeKind::kind,
              "the backend: 'file', 'http', 's3', 'redis'; None for an unknown scheme")
      .def_ro("remote", &UriSchemeKind::remote, "not a local path (file:// is local)")
      .def_ro("readable", &UriSchemeKind::readable)
      .def_ro("writable", &UriSchemeKind::writable)
      .def("__repr__", [](const UriSchemeKind& k) {
        return "UriSchemeKind(scheme=" + k.scheme + ", kind=" + k.kind.value_or("None") + ")";
      });
  m.def(
      "uri_scheme_kind",
      [](const std::string& uri) -> std::optional<UriSchemeKind> {
        std::optional<std::string> scheme = internal::UriScheme(uri);
        if (!scheme) return std::nullopt;
        UriSchemeKind k;
        k.scheme = *scheme;
        const internal::Backend* b = internal::FindBackend(uri);
        k.remote = b == nullptr || !b->local;
        if (b != nullptr) {
          k.kind = b->kind;
          k.readable = b->open_source != nullptr;
          k.writable = b->create_sink != nullptr;
        }
        return k;
      },
      "uri"_a);
  m.def("writable_schemes", [] { return internal::WritableSchemes(); });
  m.def("random_bytes", [](size_t n) {
    std::string out(n, '\0');
    Check(RandomBytes(reinterpret_cast<uint8_t*>(out.data()), n));
    return nb::bytes(out.data(), out.size());
  });

  // CRC32 and SHA-256 of prefix || data, as tensorizer stores them; used by
  // verify_module to hash tensors already in memory.
  m.def("tensor_hashes", [](nb::bytes prefix, ByteArray data) {
    uint32_t crc;
    std::string sha;
    {
      nb::gil_scoped_release release;
      internal::TensorHasher h;
      h.Update(prefix.c_str(), prefix.size());
      h.Update(data.data(), data.shape(0));
      crc = h.crc32();
      sha = h.FinishSha256();
    }
    return nb::make_tuple(crc, nb::bytes(sha.data(), sha.size()));
  });
}
