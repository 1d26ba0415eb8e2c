// pread_limit: the machine's own ceiling for loading (or saving) a file into
// (or from) CPU memory, printed beside every result of bench_load.py.
//
// Read mode (default), the limit for a CPU load:
//   1. mmap an anonymous arena of the file's size rounded up to 2 MiB and
//      madvise(MADV_HUGEPAGE) it, so the kernel faults it in 2 MiB at a time
//      (DESIGN.md: this, not the read itself, decides a CPU load's speed);
//   2. `threads` workers take contiguous chunks of `chunk_bytes` from an
//      atomic counter and pread each straight into its place in the arena.
//   The arena's creation and faulting are inside the timing: a real load pays
//   them too. Unmapping is outside: a real load keeps the arena.
//
// --direct: the same reads on a descriptor opened with O_DIRECT, each chunk
// rounded up to 4096 bytes (the last one stops at the end of the file), into
// the same arena: the device's own limit, with `threads` requests in flight
// and no page cache (bench_cold.py).
//
// Write mode (--write OUT), the limit for a save:
//   the same number of bytes, from an already-faulted huge-page buffer, are
//   pwritten in chunks of `chunk_bytes` (handed out by the same atomic
//   counter) to OUT, created fresh for each repetition. The timing covers
//   open(O_CREAT|O_TRUNC) through close() and does NOT include fsync: the data
//   lands in the page cache and is written back later. bench_load.py measures
//   the project's and the reference's saves the same way (neither fsyncs), so
//   this is the like-for-like ceiling. OUT is removed at the end.
//
// Prefault mode (--prefault-mib N): touch N MiB of fresh huge-page memory
// and free it, then exit. bench_load.py runs it before every measured load:
// on a virtual machine, memory the guest has not touched recently can fault
// in 10x slower (the hypervisor backs it on first touch), which would make
// each fresh process's arena cost a lottery. After this, the kernel hands out
// recently used pages, as on a host that has been running a while.
//
// Each repetition starts from scratch (fresh arena / fresh output file); the
// best repetition is reported as one JSON line:
//   {"mode":..., "bytes":..., "seconds":..., "gbps":..., ...}
// where gbps is 1e9 bytes per second.
//
// Build: c++ -O2 -std=c++17 -pthread -o pread_limit pread_limit.cc

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr uint64_t kHugePageBytes = 2ull << 20;

struct Options {
  std::string path;
  std::string write_path;  // empty: read mode
  unsigned threads = 0;    // 0: one per core
  uint64_t chunk_bytes = 8ull << 20;
  int repetitions = 5;
  uint64_t prefault_bytes = 0;  // > 0: prefault mode
  bool direct = false;           // read with O_DIRECT
};

constexpr uint64_t kDirectAlign = 4096;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "pread_limit: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

[[noreturn]] void Usage() {
  std::fprintf(stderr,
               "usage: pread_limit [--write OUT] [--direct] [--reps N] [--chunk-mib M] "
               "FILE [threads]\n"
               "  read mode: pread FILE into a fresh huge-page arena\n"
               "  --direct: read with O_DIRECT (4096-aligned requests)\n"
               "  --write OUT: pwrite FILE's size in bytes to OUT (no fsync)\n"
               "  --prefault-mib N: touch and free N MiB of memory, then exit\n");
  std::exit(2);
}

Options ParseArgs(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Usage();
      return argv[++i];
    };
    if (arg == "--write") {
      options.write_path = next();
    } else if (arg == "--prefault-mib") {
      options.prefault_bytes = std::strtoull(next().c_str(), nullptr, 10) << 20;
    } else if (arg == "--direct") {
      options.direct = true;
    } else if (arg == "--reps") {
      options.repetitions = std::max(1, std::atoi(next().c_str()));
    } else if (arg == "--chunk-mib") {
      options.chunk_bytes = std::max<uint64_t>(1, std::strtoull(next().c_str(), nullptr, 10)) << 20;
    } else if (arg == "-h" || arg == "--help") {
      Usage();
    } else {
      positional.push_back(arg);
    }
  }
  if (options.prefault_bytes > 0 && positional.empty()) return options;
  if (positional.empty() || positional.size() > 2) Usage();
  options.path = positional[0];
  if (positional.size() == 2) {
    options.threads = static_cast<unsigned>(std::atoi(positional[1].c_str()));
  }
  if (options.threads == 0) {
    options.threads = std::max(1u, std::thread::hardware_concurrency());
  }
  return options;
}

// An anonymous mapping asked to be backed by transparent huge pages.
char* MapHugeArena(uint64_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) Die("mmap arena");
  // Not fatal: without THP the result is merely slower, which is worth seeing.
  if (madvise(p, bytes, MADV_HUGEPAGE) != 0) {
    std::fprintf(stderr, "pread_limit: madvise(MADV_HUGEPAGE): %s\n", std::strerror(errno));
  }
  return static_cast<char*>(p);
}

// Runs `body(offset, length)` over [0, total) in chunks handed out by an
// atomic counter, on `threads` threads (the caller's thread is one of them).
template <typename Body>
void ForEachChunk(uint64_t total, uint64_t chunk_bytes, unsigned threads, Body body) {
  std::atomic<uint64_t> next_chunk{0};
  auto worker = [&]() {
    for (;;) {
      uint64_t offset = next_chunk.fetch_add(1) * chunk_bytes;
      if (offset >= total) return;
      body(offset, std::min(chunk_bytes, total - offset));
    }
  };
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

// Reads [offset, offset + length) or up to file_end, whichever is first.
void PreadFully(int fd, char* dst, uint64_t length, uint64_t offset,
                uint64_t file_end = UINT64_MAX) {
  while (length > 0 && offset < file_end) {
    ssize_t n = pread(fd, dst, length, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Die("pread");
    if (n == 0) {
      errno = EIO;
      Die("pread: unexpected end of file");
    }
    dst += n;
    offset += static_cast<uint64_t>(n);
    length -= static_cast<uint64_t>(n);
  }
}

void PwriteFully(int fd, const char* src, uint64_t length, uint64_t offset) {
  while (length > 0) {
    ssize_t n = pwrite(fd, src, length, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Die("pwrite");
    src += n;
    offset += static_cast<uint64_t>(n);
    length -= static_cast<uint64_t>(n);
  }
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double ReadOnce(const Options& options, int fd, uint64_t bytes) {
  uint64_t arena_bytes = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  auto start = std::chrono::steady_clock::now();
  char* arena = MapHugeArena(arena_bytes);
  ForEachChunk(bytes, options.chunk_bytes, options.threads, [&](uint64_t offset, uint64_t length) {
    if (options.direct) length = (length + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
    PreadFully(fd, arena + offset, length, offset, bytes);
  });
  double seconds = Seconds(start);
  munmap(arena, arena_bytes);
  return seconds;
}

double WriteOnce(const Options& options, const char* source, uint64_t bytes) {
  unlink(options.write_path.c_str());  // untimed: drop the previous copy
  auto start = std::chrono::steady_clock::now();
  int fd = open(options.write_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) Die("open " + options.write_path);
  ForEachChunk(bytes, options.chunk_bytes, options.threads, [&](uint64_t offset, uint64_t length) {
    PwriteFully(fd, source + offset, length, offset);
  });
  if (close(fd) != 0) Die("close " + options.write_path);
  return Seconds(start);
}

std::string TransparentHugePageMode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(in, line);
  auto open = line.find('['), close = line.find(']');
  if (open == std::string::npos || close == std::string::npos) return "unknown";
  return line.substr(open + 1, close - open - 1);
}

}  // namespace

int main(int argc, char** argv) {
  Options options = ParseArgs(argc, argv);
  if (options.prefault_bytes > 0) {
    char* arena = MapHugeArena(options.prefault_bytes);
    std::memset(arena, 1, options.prefault_bytes);
    munmap(arena, options.prefault_bytes);
    std::printf("{\"mode\":\"prefault\",\"bytes\":%llu}\n",
                static_cast<unsigned long long>(options.prefault_bytes));
    return 0;
  }
  int fd = open(options.path.c_str(), O_RDONLY | (options.direct ? O_DIRECT : 0));
  if (fd < 0) Die("open " + options.path);
  if (options.direct && options.chunk_bytes % kDirectAlign != 0) {
    errno = EINVAL;
    Die("--direct needs whole MiB chunks");
  }
  struct stat st;
  if (fstat(fd, &st) != 0) Die("fstat " + options.path);
  uint64_t bytes = static_cast<uint64_t>(st.st_size);
  if (bytes == 0) {
    errno = EINVAL;
    Die(options.path + " is empty");
  }
  bool write_mode = !options.write_path.empty();

  // Write mode: the source is prepared (and faulted in) before any timing,
  // as a save's tensors already sit in memory. Filled from FILE so the bytes
  // are real data rather than zero pages.
  char* source = nullptr;
  uint64_t source_bytes = 0;
  if (write_mode) {
    source_bytes = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    source = MapHugeArena(source_bytes);
    ForEachChunk(
        bytes, options.chunk_bytes, options.threads,
        [&](uint64_t offset, uint64_t length) { PreadFully(fd, source + offset, length, offset); });
  }

  double best = 0;
  for (int rep = 0; rep < options.repetitions; ++rep) {
    double seconds = write_mode ? WriteOnce(options, source, bytes) : ReadOnce(options, fd, bytes);
    if (rep == 0 || seconds < best) best = seconds;
  }
  if (write_mode) {
    unlink(options.write_path.c_str());
    munmap(source, source_bytes);
  }
  close(fd);

  std::printf(
      "{\"mode\":\"%s\",\"direct\":%s,\"bytes\":%llu,\"seconds\":%.6f,\"gbps\":%.4f,"
      "\"threads\":%u,\"chunk_bytes\":%llu,\"repetitions\":%d,"
      "\"fsync\":false,\"thp\":\"%s\"}\n",
      write_mode ? "write" : "read", options.direct ? "true" : "false",
      static_cast<unsigned long long>(bytes), best,
      static_cast<double>(bytes) / best / 1e9, options.threads,
      static_cast<unsigned long long>(options.chunk_bytes), options.repetitions,
      TransparentHugePageMode().c_str());
  return 0;
}
