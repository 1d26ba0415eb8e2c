// See include/tensorizer/machine.h.
#include "tensorizer/machine.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tensorizer/cancel.h"
#include "tensorizer/load.h"

namespace tensorizer {

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

namespace {

// CPUs a cgroup v2 "cpu.max" line allows ("max 100000": no limit), rounded
// up; 0 for no limit or a line that does not parse.
int CpusAllowed(const std::string& line) {
  std::istringstream in(line);
  std::string quota;
  uint64_t period = 0;
  if (!(in >> quota >> period) || quota == "max" || period == 0) return 0;
  uint64_t q = 0;
  auto [end, ec] = std::from_chars(quota.data(), quota.data() + quota.size(), q);
  if (ec != std::errc() || end != quota.data() + quota.size() || q == 0) return 0;
  return static_cast<int>(std::min<uint64_t>((q + period - 1) / period, 1u << 20));
}

// The cpu.max lines of this process's cgroup and its ancestors, innermost
// first (cgroup v2 only; v1 and unreadable files give none).
std::vector<std::string> CgroupCpuMaxLines() {
  std::ifstream self("/proc/self/cgroup");
  std::string entry, path;
  while (std::getline(self, entry)) {
    if (entry.rfind("0::", 0) == 0) path = entry.substr(3);
  }
  std::vector<std::string> lines;
  if (path.empty() || path[0] != '/') return lines;
  for (;;) {
    std::ifstream file("/sys/fs/cgroup" + (path == "/" ? std::string() : path) + "/cpu.max");
    std::string line;
    if (std::getline(file, line)) lines.push_back(line);
    if (path == "/") break;
    size_t slash = path.rfind('/');
    path = slash == 0 ? "/" : path.substr(0, slash);
  }
  return lines;
}

}  // namespace

int AvailableCoresFrom(int affinity_cpus, const std::vector<std::string>& cpu_max_lines) {
  int cores = std::max(1, affinity_cpus);
  for (const std::string& line : cpu_max_lines) {
    int allowed = CpusAllowed(line);
    if (allowed > 0) cores = std::min(cores, allowed);
  }
  return cores;
}

// Not cached: the affinity can change while the process runs
// (sched_setaffinity), and a few small reads per load cost nothing.
int AvailableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int affinity = sched_getaffinity(0, sizeof set, &set) == 0
                     ? CPU_COUNT(&set)
                     : static_cast<int>(std::thread::hardware_concurrency());
  return AvailableCoresFrom(affinity, CgroupCpuMaxLines());
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

}  // namespace tensorizer
