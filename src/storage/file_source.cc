#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "storage/read_range.h"
#include "tensorizer/source.h"

namespace tensorizer {

namespace {

using internal::ByteRange;
using internal::CheckReadRange;
using internal::ScatterReadSource;

class FileSource final : public ScatterReadSource {
 public:
  FileSource(int fd, uint64_t size, std::string uri) : fd_(fd), size_(size), uri_(std::move(uri)) {}
  ~FileSource() override { ::close(fd_); }

  uint64_t size() const override { return size_; }
  const std::string& uri() const override { return uri_; }

  Status ReadRange(uint64_t offset, uint64_t total, const struct iovec* iov,
                   int iovcnt) const override {
    // preadv may stop short (signals, huge requests); advance through the
    // vector and retry until every byte is in place.
    std::vector<struct iovec> rest(iov, iov + iovcnt);
    size_t first = 0;
    uint64_t done = 0;
    while (done < total) {
      int count = static_cast<int>(std::min<size_t>(rest.size() - first, IOV_MAX));
      ssize_t n = ::preadv(fd_, rest.data() + first, count, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("reading " + uri_ + " " + ByteRange(offset + done, total - done),
                                 errno);
      }
      if (n == 0) {
        return Status::FormatError("reading " + uri_ + " " + ByteRange(offset, total) +
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

 private:
  int fd_;
  uint64_t size_;
  std::string uri_;
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

Result<std::unique_ptr<Source>> FromOwnedFd(int fd, const std::string& name) {
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
  return std::unique_ptr<Source>(
      std::make_unique<FileSource>(fd, static_cast<uint64_t>(st.st_size), name));
}

}  // namespace

Status Source::ReadAtV(uint64_t offset, const struct iovec* iov, int iovcnt) const {
  for (int i = 0; i < iovcnt; ++i) {
    TZR_RETURN_IF_ERROR(ReadAt(offset, iov[i].iov_base, iov[i].iov_len));
    offset += iov[i].iov_len;
  }
  return Status::Ok();
}

Result<std::unique_ptr<Source>> OpenFileSource(const std::string& path) {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever;
  // FromOwnedFd then refuses it. Reads stay blocking.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno("opening " + path, errno);
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno("opening " + path, err);
  }
  return FromOwnedFd(fd, path);
}

Result<std::unique_ptr<Source>> OpenFdSource(int fd, const std::string& name) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return Status::FromErrno("duplicating descriptor of " + name, errno);
  return FromOwnedFd(dup, name);
}

std::unique_ptr<Source> MakeMemorySource(std::string bytes, const std::string& name) {
  return std::make_unique<MemorySource>(std::move(bytes), name);
}

Result<std::unique_ptr<Source>> OpenSource(const std::string& uri, const SourceOptions& options) {
  auto scheme_end = uri.find("://");
  if (scheme_end != std::string::npos) {
    std::string scheme = uri.substr(0, scheme_end);
    for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme == "file") return OpenFileSource(uri.substr(scheme_end + 3));
    if (scheme == "http" || scheme == "https") return OpenHttpSource(uri, options.http);
    if (scheme == "redis") return OpenRedisSource(uri, options.http);
    if (scheme == "s3") return OpenS3Source(uri, options.s3, options.http);
    return Status::InvalidArgument("unsupported URI scheme '" + scheme + "' in " + uri);
  }
  return OpenFileSource(uri);
}

}  // namespace tensorizer
