// CopyFile: see include/tensorizer/convert.h for the contract.
//
// A few workers each take the next chunk of the source, read it with
// ReadAt and write it with WriteAt at the same offset (both positional, so
// the chunks need no ordering), while the calling thread reports progress.
// Any Source (file, HTTP(S), S3, Redis) feeds any Sink (a local temporary
// file renamed at the end, or an S3 multipart upload completed at the end);
// the first error stops the workers and abandons the sink, so a failed copy
// publishes nothing. Memory: one chunk buffer per worker, plus what an S3
// sink holds (parts being filled, a few queued; write.h). Each byte is
// written exactly once, which an S3 sink requires.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "storage/parsed_uri.h"
#include "storage/registry.h"
#include "tensorizer/cancel.h"
#include "tensorizer/convert.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"

namespace tensorizer {

namespace {

std::string BaseName(const std::string& path) {
  size_t end = path.find_last_not_of('/');
  if (end == std::string::npos) return "";
  size_t slash = path.rfind('/', end);
  size_t begin = slash == std::string::npos ? 0 : slash + 1;
  return path.substr(begin, end - begin + 1);
}

// The file name a URI's object goes by: the last path component, without an
// HTTP query or fragment ("https://h/a/m.tensors?sig=x" -> "m.tensors").
std::string SourceBaseName(const std::string& source_uri) {
  if (!IsRemoteUri(source_uri)) return BaseName(internal::LocalPath(source_uri));
  Result<internal::ParsedUri> uri = internal::ParseUri(source_uri);
  if (!uri.ok()) return "";
  const internal::Backend* backend = internal::FindBackend(source_uri);
  return BaseName(backend != nullptr && backend->query_ends_name ? uri->path
                                                                 : uri->after_authority);
}

// Where `dest_uri` names a place to copy into rather than a file: an
// existing local directory, or an s3:// URI ending in '/' (a key prefix, as
// `aws s3 cp` takes it). The source's base name is appended there.
Result<std::string> ResolveDestination(const std::string& source_uri, const std::string& dest_uri) {
  bool into = false;
  std::string dest = dest_uri;
  if (IsRemoteUri(dest_uri)) {
    const internal::Backend* backend = internal::FindBackend(dest_uri);
    into = backend != nullptr && backend->copies_into_prefix && dest_uri.back() == '/';
  } else {
    dest = internal::LocalPath(dest_uri);
    struct stat st;
    into = ::stat(dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    if (!into && !dest.empty() && dest.back() == '/') {
      return Status::InvalidArgument("copying into " + dest + ": no such directory");
    }
  }
  if (!into) return dest;
  std::string base = SourceBaseName(source_uri);
  if (base.empty() || base == "." || base == "..") {
    // The source URI is not repeated: a redis:// one may hold a password.
    return Status::InvalidArgument("cannot tell a file name from the source URI to copy into " +
                                   dest_uri + ": name the destination file");
  }
  return dest + (dest.empty() || dest.back() == '/' ? "" : "/") + base;
}

}  // namespace

Result<uint64_t> CopyFile(const std::string& source_uri, const std::string& dest_uri,
                          const CopyOptions& options) {
  if (options.chunk_bytes == 0) return Status::InvalidArgument("chunk_bytes must be positive");
  TZR_ASSIGN_OR_RETURN(std::unique_ptr<Source> source, OpenSource(source_uri, options.source));
  TZR_ASSIGN_OR_RETURN(std::string dest, ResolveDestination(source_uri, dest_uri));
  const uint64_t total = source->size();
  TZR_ASSIGN_OR_RETURN(std::unique_ptr<Sink> sink, CreateSink(dest, options.sink));
  const uint64_t chunks = total == 0 ? 0 : (total - 1) / options.chunk_bytes + 1;
  sink->Preallocate(0, total);

  std::atomic<uint64_t> next_chunk{0};
  std::atomic<uint64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
  Status first_error;
  size_t running = 0;
  // The workers are cancelled with the caller (tensorizer/cancel.h).
  const std::shared_ptr<const CancelFlag> cancel = CurrentCancelFlag();
  auto work = [&] {
    CancelScope scope(cancel);
    std::vector<uint8_t> buffer(std::min<uint64_t>(options.chunk_bytes, total));
    Status st;
    while (st.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!first_error.ok()) break;
      }
      uint64_t c = next_chunk.fetch_add(1);
      if (c >= chunks) break;
      uint64_t offset = c * options.chunk_bytes;
      uint64_t length = std::min(options.chunk_bytes, total - offset);
      st = source->ReadAt(offset, buffer.data(), length);
      if (st.ok()) st = sink->WriteAt(offset, buffer.data(), length);
      if (st.ok()) done += length;
    }
    std::lock_guard<std::mutex> lock(mu);
    if (!st.ok() && first_error.ok()) first_error = st;
    --running;
    cv.notify_all();
  };
  const size_t threads =
      static_cast<size_t>(std::clamp<uint64_t>(chunks, 1, std::max(1, options.num_threads)));
  std::vector<std::thread> pool;
  running = threads;
  for (size_t t = 0; t < threads; ++t) pool.emplace_back(work);
  {
    std::unique_lock<std::mutex> lock(mu);
    const auto interval = std::chrono::milliseconds(std::max(1, options.progress_interval_ms));
    while (running > 0) {
      cv.wait_for(lock, interval, [&] { return running == 0; });
      if (options.progress && running > 0) {
        lock.unlock();
        options.progress(done.load(), total);
        lock.lock();
      }
    }
  }
  for (auto& t : pool) t.join();
  if (!first_error.ok()) {
    sink->Abort();
    return first_error;
  }
  TZR_RETURN_IF_ERROR(sink->Commit());
  if (options.progress) options.progress(total, total);
  return total;
}

}  // namespace tensorizer
