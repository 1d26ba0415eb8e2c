// CopyFile: see include/tensorizer/convert.h for the contract.
//
// A few workers each take the next chunk of the source, read it with
// ReadAt and write it with WriteAt at the same offset (both positional, so
// the chunks need no ordering), while the calling thread reports progress.
// The sink writes a temporary file and renames it over the destination only
// when every chunk has been written; the first error stops the workers and
// abandons the temporary file. Copying goes through Source and Sink, not
// copy_file_range, so other backends slot in when they exist.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tensorizer/convert.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"

namespace tensorizer {

namespace {

Status CheckLocal(const std::string& uri) {
  if (!IsRemoteUri(uri)) return Status::Ok();
  std::string scheme = uri.substr(0, uri.find("://"));
  return Status::InvalidArgument("copying to or from " + scheme +
                                 ":// URIs is not supported yet (local paths and file:// URIs "
                                 "only): " +
                                 uri);
}

std::string StripFileScheme(const std::string& uri) {
  return uri.rfind("file://", 0) == 0 ? uri.substr(7) : uri;
}

std::string BaseName(const std::string& path) {
  size_t end = path.find_last_not_of('/');
  if (end == std::string::npos) return path;
  size_t slash = path.rfind('/', end);
  return path.substr(slash == std::string::npos ? 0 : slash + 1,
                     end - (slash == std::string::npos ? 0 : slash + 1) + 1);
}

}  // namespace

Result<uint64_t> CopyFile(const std::string& source_uri, const std::string& dest_uri,
                          const CopyOptions& options) {
  TZR_RETURN_IF_ERROR(CheckLocal(source_uri));
  TZR_RETURN_IF_ERROR(CheckLocal(dest_uri));
  if (options.chunk_bytes == 0) return Status::InvalidArgument("chunk_bytes must be positive");
  TZR_ASSIGN_OR_RETURN(std::unique_ptr<Source> source, OpenSource(source_uri));
  std::string dest = StripFileScheme(dest_uri);
  struct stat st;
  if (::stat(dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    dest += (dest.empty() || dest.back() == '/' ? "" : "/") + BaseName(StripFileScheme(source_uri));
  }
  TZR_ASSIGN_OR_RETURN(std::unique_ptr<Sink> sink, CreateFileSink(dest));

  const uint64_t total = source->size();
  const uint64_t chunks = total == 0 ? 0 : (total - 1) / options.chunk_bytes + 1;
  sink->Preallocate(0, total);

  std::atomic<uint64_t> next_chunk{0};
  std::atomic<uint64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
  Status first_error;
  size_t running = 0;
  auto work = [&] {
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
