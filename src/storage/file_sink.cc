#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <random>

#include "tensorizer/write.h"

namespace tensorizer {

namespace {

class FileSink final : public Sink {
 public:
  FileSink(int fd, std::string uri, std::string temp_path)
      : fd_(fd), uri_(std::move(uri)), temp_(std::move(temp_path)) {}
  ~FileSink() override {
    if (fd_ >= 0) Abort();
  }

  Status WriteAt(uint64_t offset, const void* data, uint64_t length) override {
    const auto* p = static_cast<const uint8_t*>(data);
    while (length > 0) {
      // Linux caps one write at ~2 GiB; loop until everything is written.
      ssize_t n = ::pwrite(fd_, p, length, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("writing " + uri_ + " at byte " + std::to_string(offset), errno);
      }
      p += n;
      offset += static_cast<uint64_t>(n);
      length -= static_cast<uint64_t>(n);
    }
    return Status::Ok();
  }

  void Preallocate(uint64_t offset, uint64_t length) override {
    // Only a hint for the filesystem; unsupported filesystems just say no.
    (void)::fallocate(fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(length));
  }

  Status Commit() override {
    if (fd_ < 0) return Status::InvalidArgument(uri_ + " is already closed");
    if (::close(fd_) != 0) {
      int err = errno;
      fd_ = -1;
      if (!temp_.empty()) ::unlink(temp_.c_str());
      return Status::FromErrno("closing " + uri_, err);
    }
    fd_ = -1;
    if (!temp_.empty() && ::rename(temp_.c_str(), uri_.c_str()) != 0) {
      int err = errno;
      ::unlink(temp_.c_str());
      return Status::FromErrno("renaming " + temp_ + " to " + uri_, err);
    }
    return Status::Ok();
  }

  void Abort() override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!temp_.empty()) ::unlink(temp_.c_str());
    temp_.clear();
  }

  const std::string& uri() const override { return uri_; }

 private:
  int fd_;
  std::string uri_;
  std::string temp_;  // empty for caller-owned descriptors
};

}  // namespace

Result<std::unique_ptr<Sink>> CreateFileSink(const std::string& path) {
  std::random_device rd;
  for (int attempt = 0; attempt < 16; ++attempt) {
    char suffix[64];
    snprintf(suffix, sizeof suffix, ".%d.%08x.tmp", static_cast<int>(::getpid()), rd());
    std::string temp = path + suffix;
    // 0666 so the process umask decides, as for any file the user creates.
    int fd = ::open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return std::unique_ptr<Sink>(std::make_unique<FileSink>(fd, path, temp));
    if (errno != EEXIST) return Status::FromErrno("creating " + temp, errno);
  }
  return Status::IoError("could not find a free temporary name beside " + path);
}

Result<std::unique_ptr<Sink>> CreateFdSink(int fd, const std::string& name) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return Status::FromErrno("duplicating descriptor of " + name, errno);
  return std::unique_ptr<Sink>(std::make_unique<FileSink>(dup, name, ""));
}

Result<std::unique_ptr<Sink>> CreateSink(const std::string& uri, const SinkOptions& options) {
  auto scheme_end = uri.find("://");
  if (scheme_end == std::string::npos) return CreateFileSink(uri);
  std::string scheme = uri.substr(0, scheme_end);
  for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme == "file") return CreateFileSink(uri.substr(scheme_end + 3));
  if (scheme == "s3") return CreateS3Sink(uri, options.s3, options.http, options.s3_upload);
  return Status::InvalidArgument("cannot write to '" + scheme + "' URIs (" + uri +
                                 "): only local paths and s3:// are writable");
}

}  // namespace tensorizer
