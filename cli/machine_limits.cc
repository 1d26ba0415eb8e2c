// See machine_limits.h.
#include "machine_limits.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "tensorizer/cancel.h"
#include "tensorizer/load.h"

namespace tensorizer::cli {

Result<double> TimeReadIntoArena(const Source& source, int threads, uint64_t chunk_bytes) {
  const uint64_t size = source.size();
  const uint64_t chunks = (size + chunk_bytes - 1) / chunk_bytes;
  auto start = std::chrono::steady_clock::now();
  auto arena = Arena::Allocate(size, /*huge_pages=*/true);
  if (!arena.ok()) return arena.status();
  uint8_t* dst = (*arena)->data();
  std::atomic<uint64_t> next{0};
  std::mutex mu;
  Status error;
  // The pool's reads stop with the caller's (a Ctrl-C: interrupt.h).
  const std::shared_ptr<const CancelFlag> cancel = CurrentCancelFlag();
  auto work = [&] {
    CancelScope scope(cancel);
    for (uint64_t c = next++; c < chunks; c = next++) {
      uint64_t offset = c * chunk_bytes;
      Status st = source.ReadAt(offset, dst + offset, std::min(chunk_bytes, size - offset));
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (error.ok()) error = st;
        next = chunks;
      }
    }
  };
  int n = static_cast<int>(std::max<uint64_t>(1, std::min<uint64_t>(threads, chunks)));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  auto end = std::chrono::steady_clock::now();
  if (!error.ok()) return error;
  return std::chrono::duration<double>(end - start).count();
}

int AvailableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

std::optional<double> PageCacheResidency(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
    ::close(fd);
    return std::nullopt;
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return std::nullopt;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  std::optional<double> out;
  if (::mincore(map, size, resident.data()) == 0) {
    size_t in = 0;
    for (unsigned char r : resident) in += r & 1;
    out = static_cast<double>(in) / static_cast<double>(resident.size());
  }
  ::munmap(map, size);
  return out;
}

std::string TransparentHugePageMode() {
  // The file reads like "always [madvise] never": the bracketed word is set.
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(in, line)) return "unknown";
  size_t open = line.find('['), close = line.find(']');
  if (open == std::string::npos || close == std::string::npos || close < open) return "unknown";
  return line.substr(open + 1, close - open - 1);
}

}  // namespace tensorizer::cli
