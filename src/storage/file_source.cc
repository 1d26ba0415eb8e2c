// Local files: buffered preadv on one descriptor, and optionally direct
// reads on a second one opened with O_DIRECT.
//
// A direct read widens the request to the file's direct-I/O block and reads
// the whole window with one preadv (storage/direct_read.h): buffers whose
// address lines up with the file's blocks get their aligned middle straight
// from the device; heads, tails and unaligned buffers land in a staging
// buffer and are copied out. Staging buffers are pooled, one per concurrent
// reader, and kept for the source's life. Every worker thread calls ReadAtV
// on the same descriptors, so the load's workers are the requests in flight.
//
// The mode is decided per read (DirectIo::kAuto): mincore over the range's
// pages on a PROT_READ mapping of the file (never touched, so it populates
// nothing) tells how much is in the page cache. A direct read that the file
// system refuses (EINVAL) turns direct reads off for the source and is
// redone buffered.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "storage/direct_read.h"
#include "storage/local_file.h"
#include "storage/read_range.h"
#include "storage/registry.h"
#include "tensorizer/source.h"
#include "util/thread_annotations.h"

namespace tensorizer {

namespace {

using internal::AlignDown;
using internal::ByteRange;
using internal::CheckReadRange;
using internal::DirectReadPlan;
using internal::ScatterReadSource;

// A buffer's aligned middle shorter than this is staged with its neighbours
// rather than read as a piece of its own.
constexpr uint64_t kMinDirectPieceBytes = 64 << 10;
// Where statx cannot tell the direct-I/O alignment: the largest logical
// block in common use.
constexpr uint32_t kFallbackBlockBytes = 4096;
constexpr size_t kStagingAlign = 2 << 20;  // huge-page aligned, advised for THP

// Fills iov (iovcnt buffers, `total` bytes) from fd at `offset`. preadv may
// stop short (signals, huge requests); advance through the vector and retry
// until every byte is in place.
Status PreadvAll(int fd, uint64_t offset, uint64_t total, const struct iovec* iov, int iovcnt,
                 const std::string& uri) {
  std::vector<struct iovec> rest(iov, iov + iovcnt);
  size_t first = 0;
  uint64_t done = 0;
  while (done < total) {
    int count = static_cast<int>(std::min<size_t>(rest.size() - first, IOV_MAX));
    ssize_t n = ::preadv(fd, rest.data() + first, count, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("reading " + uri + " " + ByteRange(offset + done, total - done),
                               errno);
    }
    if (n == 0) {
      return Status::FormatError("reading " + uri + " " + ByteRange(offset, total) +
                                 ": file ended at byte " + std::to_string(offset + done) +
                                 " (was it truncated while loading?)");
    }
    done += static_cast<uint64_t>(n);
    auto left = static_cast<size_t>(n);
    while (first < rest.size() && left >= rest[first].iov_len) {
      left -= rest[first].iov_len;
      ++first;
    }
    if (first < rest.size()) {
      rest[first].iov_base = static_cast<char*>(rest[first].iov_base) + left;
      rest[first].iov_len -= left;
    }
  }
  return Status::Ok();
}

// Block-aligned scratch memory for direct reads, reused across reads.
class StagingPool {
 public:
  ~StagingPool() {
    for (auto& b : free_) std::free(b.data);
  }
  struct Buffer {
    uint8_t* data = nullptr;
    size_t capacity = 0;
  };
  Result<Buffer> Acquire(size_t bytes) {
    Buffer b;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        b = free_.back();
        free_.pop_back();
      }
    }
    if (b.capacity >= bytes) return b;
    std::free(b.data);
    const size_t capacity =
        (std::max<size_t>(bytes, 1) + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
    void* p = nullptr;
    if (::posix_memalign(&p, kStagingAlign, capacity) != 0) {
      return Status::ResourceExhausted("cannot allocate a " + std::to_string(capacity) +
                                       "-byte direct-read staging buffer");
    }
    ::madvise(p, capacity, MADV_HUGEPAGE);  // advisory
    return Buffer{static_cast<uint8_t*>(p), capacity};
  }
  void Release(Buffer b) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(b);
  }

 private:
  std::mutex mu_;
  std::vector<Buffer> free_ TZR_GUARDED_BY(mu_);
};

// What OpenDirect found: a descriptor with O_DIRECT and its block, or why
// the file is read buffered only.
struct DirectSetup {
  int fd = -1;
  uint32_t block = 0;
  void* map = nullptr;  // kAuto: the probe mapping (size bytes)
  std::string reason;
};

DirectSetup OpenDirect(int fd, const struct stat& st, const std::string& reopen_path,
                       DirectIo mode) {
  DirectSetup d;
  if (mode == DirectIo::kOff) {
    d.reason = "direct I/O off";
    return d;
  }
  if (!S_ISREG(st.st_mode)) {
    d.reason = "not a regular file";
    return d;
  }
  if (st.st_size == 0) {
    d.reason = "empty file";
    return d;
  }
  struct statfs fs {};
  if (::fstatfs(fd, &fs) == 0 && (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC)) {
    // tmpfs accepts O_DIRECT on recent kernels but reads from memory anyway.
    d.reason = "tmpfs has no direct I/O";
    return d;
  }
  uint32_t block = kFallbackBlockBytes;
  struct statx sx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
    if (sx.stx_dio_offset_align == 0) {
      d.reason = "the file system has no direct I/O for this file";
      return d;
    }
    // Any multiple of the block is aligned too; 512 keeps the planner's
    // 64-byte slots a divisor of it.
    block = std::max({sx.stx_dio_offset_align, sx.stx_dio_mem_align, 512u});
  }
  if ((block & (block - 1)) != 0) {
    d.reason = "direct-I/O alignment " + std::to_string(block) + " is not a power of two";
    return d;
  }
  if (mode == DirectIo::kAuto) {
    // The kernel reports page-cache residency only of files this process
    // owns or may write (mm/mincore.c can_do_mincore); elsewhere every page
    // would look cold, and warm files would go direct.
    const bool visible = st.st_uid == ::geteuid() || ::geteuid() == 0 ||
                         ::faccessat(AT_FDCWD, reopen_path.c_str(), W_OK, AT_EACCESS) == 0;
    if (!visible) {
      d.reason = "auto: the page cache of a file this process neither owns nor may write is "
                 "hidden from it";
      return d;
    }
    void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
      d.reason = std::string("auto: cannot map the file to probe the page cache: ") +
                 std::strerror(errno);
      return d;
    }
    d.map = map;
  }
  int dfd = ::open(reopen_path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC | O_NOCTTY);
  struct stat dst {};
  if (dfd < 0 || ::fstat(dfd, &dst) != 0 || dst.st_dev != st.st_dev || dst.st_ino != st.st_ino) {
    d.reason = dfd < 0 ? std::string("opening with O_DIRECT: ") + std::strerror(errno)
                       : std::string("the path no longer names the opened file");
    if (dfd >= 0) ::close(dfd);
    if (d.map) ::munmap(d.map, static_cast<size_t>(st.st_size));
    d.map = nullptr;
    return d;
  }
  d.fd = dfd;
  d.block = block;
  return d;
}

class FileSource final : public ScatterReadSource {
 public:
  FileSource(int fd, uint64_t size, std::string uri, DirectIo mode, DirectSetup direct)
      : fd_(fd),
        size_(size),
        uri_(std::move(uri)),
        mode_(mode),
        direct_fd_(direct.fd),
        block_(direct.block),
        map_(static_cast<uint8_t*>(direct.map)),
        reason_(std::move(direct.reason)) {
    direct_on_ = direct_fd_ >= 0;
  }
  ~FileSource() override {
    ::close(fd_);
    if (direct_fd_ >= 0) ::close(direct_fd_);
    if (map_) ::munmap(map_, size_);
  }

  uint64_t size() const override { return size_; }
  const std::string& uri() const override { return uri_; }
  // A worker waiting on a direct read holds no core.
  int concurrency_hint() const override { return direct_on_ ? kMinRequestsInFlight : 0; }
  int fd() const { return fd_; }

  FileReadStats stats() const {
    FileReadStats s;
    std::lock_guard<std::mutex> lock(mu_);
    s.direct_block_bytes = direct_on_ ? block_ : 0;
    s.buffered_reason = direct_on_ ? std::string() : reason_;
    s.direct_bytes = direct_bytes_;
    s.in_place_bytes = in_place_bytes_;
    s.buffered_bytes = buffered_bytes_;
    return s;
  }

  bool ReadsDirect(uint64_t offset, uint64_t length) const {
    return direct_on_ && (mode_ == DirectIo::kOn || !MostlyCached(offset, length));
  }

  Status ReadRange(uint64_t offset, uint64_t total, const struct iovec* iov,
                   int iovcnt) const override {
    if (ReadsDirect(offset, total)) {
      Status st = ReadDirect(offset, total, iov, iovcnt);
      if (st.ok()) {
        direct_bytes_ += total;
        return st;
      }
      if (st.sys_errno() != EINVAL) return st;
      std::lock_guard<std::mutex> lock(mu_);
      direct_on_ = false;
      reason_ = "the file system refused a direct read: " + st.message();
    }
    TZR_RETURN_IF_ERROR(PreadvAll(fd_, offset, total, iov, iovcnt, uri_));
    buffered_bytes_ += total;
    return Status::Ok();
  }

 private:
  // Whether at least 3/4 of the pages of [offset, offset + total) are in the
  // page cache. A probe that fails says yes: buffered is today's behaviour.
  bool MostlyCached(uint64_t offset, uint64_t total) const {
    if (map_ == nullptr) return true;
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t first = offset / page;
    const uint64_t pages = (offset + total + page - 1) / page - first;
    thread_local std::vector<unsigned char> vec;
    vec.resize(pages);
    if (::mincore(map_ + first * page, pages * page, vec.data()) != 0) return true;
    uint64_t resident = 0;
    for (unsigned char v : vec) resident += v & 1;
    return resident * 4 >= pages * 3;
  }

  Status ReadDirect(uint64_t offset, uint64_t total, const struct iovec* iov, int iovcnt) const {
    const DirectReadPlan plan =
        internal::PlanDirectRead(offset, iov, iovcnt, block_, kMinDirectPieceBytes);
    auto staging = staging_.Acquire(plan.staging_bytes);
    if (!staging.ok()) return staging.status().WithContext("reading " + uri_);
    std::vector<struct iovec> v(plan.pieces.size());
    std::vector<uint64_t> starts(plan.pieces.size());  // each piece's place in the window
    uint64_t at = 0;
    for (size_t i = 0; i < plan.pieces.size(); ++i) {
      const DirectReadPlan::Piece& p = plan.pieces[i];
      v[i] = {p.staged ? staging->data + p.staging_offset : p.dst, p.length};
      starts[i] = at;
      at += p.length;
    }
    // Bytes of the window that must arrive: up to the request's end (the
    // kernel stops at the end of the file inside the last block).
    const uint64_t need = offset + total - plan.file_offset;
    uint64_t done = 0;
    size_t first = 0;
    Status st;
    while (done < need) {
      int count = static_cast<int>(std::min<size_t>(v.size() - first, IOV_MAX));
      const auto at = static_cast<off_t>(plan.file_offset + done);
      ssize_t n = ::preadv(direct_fd_, v.data() + first, count, at);
      if (n < 0) {
        if (errno == EINTR) continue;
        st = Status::FromErrno("reading " + uri_ + " " + ByteRange(offset, total) + " (direct)",
                               errno);
        break;
      }
      // A short read resumes at the block boundary at or before where it
      // stopped, since direct reads must start on one.
      uint64_t next = done + static_cast<uint64_t>(n);
      if (next < need) next = AlignDown(next, block_);
      if (next <= done) {
        st = Status::FormatError("reading " + uri_ + " " + ByteRange(offset, total) +
                                 ": file ended at byte " +
                                 std::to_string(plan.file_offset + done + n) +
                                 " (was it truncated while loading?)");
        break;
      }
      done = next;
      while (first < v.size() && starts[first] + plan.pieces[first].length <= done) ++first;
      if (first < v.size()) {
        const DirectReadPlan::Piece& p = plan.pieces[first];
        const uint64_t skip = done - starts[first];
        v[first] = {(p.staged ? staging->data + p.staging_offset : p.dst) + skip, p.length - skip};
      }
    }
    if (st.ok()) {
      in_place_bytes_ += plan.direct_bytes;
      for (const DirectReadPlan::Copy& c : plan.copies) {
        std::memcpy(c.dst, staging->data + c.staging_offset, c.length);
      }
    }
    staging_.Release(*staging);
    return st;
  }

  int fd_;
  uint64_t size_;
  std::string uri_;
  DirectIo mode_;
  int direct_fd_;
  uint32_t block_;
  uint8_t* map_;
  mutable StagingPool staging_;
  mutable std::atomic<bool> direct_on_{false};
  mutable std::atomic<uint64_t> direct_bytes_{0};
  mutable std::atomic<uint64_t> in_place_bytes_{0};
  mutable std::atomic<uint64_t> buffered_bytes_{0};
  mutable std::mutex mu_;
  mutable std::string reason_ TZR_GUARDED_BY(mu_);
};

class MemorySource final : public Source {
 public:
  MemorySource(std::string bytes, std::string uri)
      : bytes_(std::move(bytes)), uri_(std::move(uri)) {}
  uint64_t size() const override { return bytes_.size(); }
  const std::string& uri() const override { return uri_; }
  Status ReadAt(uint64_t offset, void* dst, uint64_t length) const override {
    TZR_RETURN_IF_ERROR(CheckReadRange(*this, offset, length));
    if (length > 0) std::memcpy(dst, bytes_.data() + offset, length);
    return Status::Ok();
  }

 private:
  std::string bytes_;
  std::string uri_;
};

Result<std::unique_ptr<Source>> FromOwnedFd(int fd, const std::string& name,
                                            const std::string& reopen_path,
                                            const FileOptions& options) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno("stat " + name, err);
  }
  if (S_ISDIR(st.st_mode)) {
    // As read(2) on it would fail, so Python raises IsADirectoryError.
    ::close(fd);
    return Status::FromErrno("opening " + name, EISDIR);
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    ::close(fd);
    const char* kind = S_ISFIFO(st.st_mode)   ? "a FIFO"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "a special file";
    return Status::InvalidArgument(name + " is not a regular file (it is " + kind +
                                   "): a .tensors file must be seekable");
  }
  DirectSetup direct = OpenDirect(fd, st, reopen_path, options.direct_io);
  return std::unique_ptr<Source>(std::make_unique<FileSource>(
      fd, static_cast<uint64_t>(st.st_size), name, options.direct_io, std::move(direct)));
}

}  // namespace

Status Source::ReadAtV(uint64_t offset, const struct iovec* iov, int iovcnt) const {
  for (int i = 0; i < iovcnt; ++i) {
    TZR_RETURN_IF_ERROR(ReadAt(offset, iov[i].iov_base, iov[i].iov_len));
    offset += iov[i].iov_len;
  }
  return Status::Ok();
}

Result<std::unique_ptr<Source>> OpenFileSource(const std::string& path,
                                               const FileOptions& options) {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever;
  // FromOwnedFd then refuses it. Reads stay blocking.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno("opening " + path, errno);
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno("opening " + path, err);
  }
  return FromOwnedFd(fd, path, path, options);
}

Result<std::unique_ptr<Source>> OpenFdSource(int fd, const std::string& name,
                                             const FileOptions& options) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return Status::FromErrno("duplicating descriptor of " + name, errno);
  return FromOwnedFd(dup, name, "/proc/self/fd/" + std::to_string(dup), options);
}

std::optional<FileReadStats> FileReadStatsOf(const Source& source) {
  if (const auto* f = dynamic_cast<const FileSource*>(&source)) return f->stats();
  return std::nullopt;
}

int internal::LocalFileDescriptor(const Source& source) {
  const auto* f = dynamic_cast<const FileSource*>(&source);
  return f != nullptr ? f->fd() : -1;
}

bool WouldReadDirect(const Source& source, uint64_t offset, uint64_t length) {
  const auto* f = dynamic_cast<const FileSource*>(&source);
  return f != nullptr && length > 0 && offset < f->size() && length <= f->size() - offset &&
         f->ReadsDirect(offset, length);
}

std::unique_ptr<Source> MakeMemorySource(std::string bytes, const std::string& name) {
  return std::make_unique<MemorySource>(std::move(bytes), name);
}

Result<std::unique_ptr<Source>> OpenSource(const std::string& uri, const SourceOptions& options) {
  TZR_ASSIGN_OR_RETURN(const internal::Backend* backend, internal::BackendFor(uri));
  return backend->open_source(uri, options);
}

}  // namespace tensorizer
