// The local save path: how CreateFileSink writes a path.
//
//  1. Resolve the target. A symlink is followed, so the file it points to is
//     replaced and the link stays. An existing target must be a regular
//     file: a FIFO, device, socket or directory is refused, naming it,
//     rather than replaced by a regular file (as root, `cp x /dev/null`
//     would otherwise replace /dev/null).
//  2. Remove our own dead temporaries for this name: ones whose writer, on
//     this host and in this pid namespace, no longer runs (it was SIGKILLed,
//     or the machine lost power, mid-save). Another live writer's are kept.
//  3. Create the temporary ".<name>.tzr-tmp-<host>-<pid>-<random>" beside
//     the target (O_EXCL). <name> is the target's name, cut and tagged with
//     a hash of the whole when the temporary would pass NAME_MAX, so every
//     legal name can be saved. <host> hashes the host name and the pid
//     namespace, so temporaries from another machine sharing the directory
//     are never taken for ours.
//  4. Before any byte is written, give the temporary the replaced file's
//     owner, group and mode. A new file gets 0666 & ~umask.
//  5. Commit(): fsync the data, rename over the target, fsync the directory.
//     The data is on disk before the name points at it, so a crash leaves
//     the old file or the complete new one, never an empty or partial one.
//
// In place: when the directory refuses the temporary (EACCES/EPERM: a
// writable file in a read-only directory) or the temporary cannot take the
// old file's owner or mode (not root), the existing file is truncated and
// written in place, as torch.save and tensorizer always do, which keeps its
// owner, mode, hard links and ACLs but gives up atomicity. A save that fails
// then truncates the file to zero bytes, so a partial file never loads as a
// model; a crash mid-save can still leave one.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string_view>
#include <utility>

#include "storage/parsed_uri.h"
#include "storage/registry.h"
#include "tensorizer/uri.h"
#include "tensorizer/write.h"
#include "util/decimal.h"

namespace tensorizer {

namespace {

constexpr size_t kNameMax = 255;  // NAME_MAX of every Linux filesystem we write to
constexpr std::string_view kTempTag = ".tzr-tmp-";
// "." <stem> ".tzr-tmp-" <host:8> "-" <pid:at most 10> "-" <random:8>
constexpr size_t kTempOverhead = 1 + kTempTag.size() + 8 + 1 + 10 + 1 + 8;
constexpr size_t kStemMax = kNameMax - kTempOverhead;

enum class Mode {
  kTemporary,  // writes temp_, renamed over final_ on Commit()
  kInPlace,    // writes the target itself, truncated when opened
  kCallerFd,   // writes a descriptor the caller owns
};

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string Hex(uint64_t v, int digits) {
  std::string out(static_cast<size_t>(digits), '0');
  for (int i = digits - 1; i >= 0; --i, v >>= 4) out[static_cast<size_t>(i)] = "0123456789abcdef"[v & 15];
  return out;
}

// Stands for this host and pid namespace in temporary names: a pid says
// whether a writer is alive only where that pid was taken.
const std::string& HostTag() {
  static const std::string tag = [] {
    char host[256] = {};
    (void)::gethostname(host, sizeof host - 1);
    char ns[64] = {};
    ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
    std::string id = std::string(host) + '\n' + std::string(ns, n > 0 ? static_cast<size_t>(n) : 0);
    return Hex(Fnv1a(id), 8);
  }();
  return tag;
}

// The part of a temporary's name that stands for the target name `base`:
// `base` itself, or its first bytes and a hash of the whole when the
// temporary's name would otherwise pass NAME_MAX.
std::string TempStem(const std::string& base) {
  if (base.size() <= kStemMax) return base;
  return base.substr(0, kStemMax - 17) + "~" + Hex(Fnv1a(base), 16);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir == ".") return name;
  return dir + (dir.back() == '/' ? "" : "/") + name;
}

const char* KindOf(mode_t mode) {
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

// Parses "<pid>-<8 hex digits>", the end of a temporary's name.
std::optional<pid_t> WriterPid(std::string_view rest) {
  size_t dash = rest.find('-');
  if (dash == std::string_view::npos || dash == 0 || dash > 10 || rest.size() != dash + 9) {
    return std::nullopt;
  }
  uint64_t pid = 0;
  if (!internal::ParseDecimal(rest.substr(0, dash), &pid)) return std::nullopt;
  for (char c : rest.substr(dash + 1)) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  if (pid == 0 || pid > INT32_MAX) return std::nullopt;
  return static_cast<pid_t>(pid);
}

// Removes the temporaries that earlier saves to this name left when their
// process died: names starting with `prefix` (same stem, same host tag)
// whose pid no longer exists. Best effort: it never fails the save.
void RemoveDeadTemporaries(const std::string& dir, const std::string& prefix) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (const dirent* e = ::readdir(d)) {
    std::string_view name(e->d_name);
    if (name.substr(0, prefix.size()) != prefix) continue;
    std::optional<pid_t> pid = WriterPid(name.substr(prefix.size()));
    // EPERM: alive, run by another user.
    if (!pid || ::kill(*pid, 0) == 0 || errno != ESRCH) continue;
    struct stat st {};
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    (void)::unlinkat(::dirfd(d), e->d_name, 0);
  }
  ::closedir(d);
}

// Where a save of `path` lands.
struct Target {
  std::string path;                     // `path`, or the file its symlink points to
  std::string dir;                      // the directory holding `path`
  std::string base;                     // its name there
  std::optional<struct stat> existing;  // the regular file being replaced
};

Result<Target> ResolveTarget(const std::string& path) {
  Target t;
  t.path = path;
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISLNK(st.st_mode)) {
      t.existing = st;
    } else if (::stat(path.c_str(), &st) == 0) {
      char* real = ::realpath(path.c_str(), nullptr);
      if (real == nullptr) return Status::FromErrno("resolving the symlink " + path, errno);
      t.path = real;
      std::free(real);
      t.existing = st;
    } else if (errno != ENOENT) {
      return Status::FromErrno("following the symlink " + path, errno);
    }  // else a dangling symlink: the new file replaces it
  } else if (errno != ENOENT) {
    return Status::FromErrno("saving to " + path, errno);
  }
  if (t.existing && S_ISDIR(t.existing->st_mode)) {
    return Status::IoError("cannot save to " + path + ": it is a directory", EISDIR);
  }
  if (t.existing && !S_ISREG(t.existing->st_mode)) {
    return Status::InvalidArgument("refusing to save to " + path + ": it is a " +
                                   KindOf(t.existing->st_mode) + ", not a regular file");
  }
  size_t slash = t.path.rfind('/');
  t.dir = slash == std::string::npos ? "." : slash == 0 ? "/" : t.path.substr(0, slash);
  t.base = slash == std::string::npos ? t.path : t.path.substr(slash + 1);
  if (t.base.empty() || t.base == "." || t.base == "..") {
    return Status::IoError("cannot save to " + path + ": it names a directory", EISDIR);
  }
  return t;
}

// Gives the new file `fd` the owner, group and mode of `old`; 0 or errno.
int CopyOwnerAndMode(int fd, const struct stat& old) {
  struct stat now {};
  if (::fstat(fd, &now) != 0) return errno;
  // Owner first: fchown clears the set-user-ID and set-group-ID bits.
  if ((now.st_uid != old.st_uid || now.st_gid != old.st_gid) &&
      ::fchown(fd, old.st_uid, old.st_gid) != 0) {
    return errno;
  }
  if (::fchmod(fd, old.st_mode & 07777) != 0) return errno;
  return 0;
}

Status SyncDirectory(const std::string& dir, const std::string& uri) {
  // A directory we may write but not read cannot be opened to sync; the
  // data itself is already on disk, so the rename is only less durable.
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::Ok();
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != ENOTSUP) {
    return Status::FromErrno("saved " + uri + ", but syncing its directory " + dir + " failed", err);
  }
  return Status::Ok();
}

class FileSink final : public Sink {
 public:
  FileSink(int fd, std::string uri, Mode mode, std::string temp = "", std::string final = "",
           std::string dir = "")
      : fd_(fd),
        uri_(std::move(uri)),
        mode_(mode),
        temp_(std::move(temp)),
        final_(std::move(final)),
        dir_(std::move(dir)) {}
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
    // A descriptor the caller gave us is the caller's to sync.
    if (mode_ != Mode::kCallerFd && ::fsync(fd_) != 0) {
      Status st = Status::FromErrno("syncing " + uri_ + " to disk", errno);
      Abort();
      return st;
    }
    if (::close(std::exchange(fd_, -1)) != 0) {
      int err = errno;
      if (mode_ == Mode::kTemporary) ::unlink(temp_.c_str());
      return Status::FromErrno("closing " + uri_, err);
    }
    if (mode_ != Mode::kTemporary) return Status::Ok();
    if (::rename(temp_.c_str(), final_.c_str()) != 0) {
      int err = errno;
      ::unlink(temp_.c_str());
      return Status::FromErrno("renaming " + temp_ + " to " + final_, err);
    }
    temp_.clear();
    return SyncDirectory(dir_, uri_);
  }

  void Abort() override {
    if (fd_ >= 0) {
      if (mode_ == Mode::kInPlace) (void)::ftruncate(fd_, 0);
      ::close(fd_);
      fd_ = -1;
    }
    if (mode_ == Mode::kTemporary && !temp_.empty()) ::unlink(temp_.c_str());
    temp_.clear();
  }

  const std::string& uri() const override { return uri_; }

 private:
  int fd_;
  std::string uri_;
  Mode mode_;
  std::string temp_;   // kTemporary: the file being written, until renamed
  std::string final_;  // kTemporary: what it is renamed to
  std::string dir_;    // kTemporary: the directory synced after the rename
};

// Truncates and writes the existing regular file `t.path` itself.
Result<std::unique_ptr<Sink>> OpenInPlace(const std::string& path, const Target& t) {
  // O_NONBLOCK: should the file have become a FIFO meanwhile, fail instead
  // of waiting for a reader.
  int fd = ::open(t.path.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno("opening " + path + " to write it in place", errno);
  struct stat st {};
  Status st_error;
  if (::fstat(fd, &st) != 0) {
    st_error = Status::FromErrno("stat " + path, errno);
  } else if (!S_ISREG(st.st_mode)) {
    st_error = Status::InvalidArgument("refusing to save to " + path + ": it is a " +
                                       KindOf(st.st_mode) + ", not a regular file");
  } else if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0 ||
             ::ftruncate(fd, 0) != 0) {
    st_error = Status::FromErrno("truncating " + path + " to write it in place", errno);
  }
  if (!st_error.ok()) {
    ::close(fd);
    return st_error;
  }
  return std::unique_ptr<Sink>(std::make_unique<FileSink>(fd, path, Mode::kInPlace));
}

}  // namespace

Result<std::unique_ptr<Sink>> CreateFileSink(const std::string& path) {
  if (path.empty()) return Status::InvalidArgument("cannot save to an empty path");
  TZR_ASSIGN_OR_RETURN(Target t, ResolveTarget(path));
  const std::string prefix = "." + TempStem(t.base) + std::string(kTempTag) + HostTag() + "-";
  RemoveDeadTemporaries(t.dir, prefix);
  std::random_device rd;
  std::string temp;
  int err = EEXIST;
  for (int attempt = 0; attempt < 16 && err == EEXIST; ++attempt) {
    temp = JoinPath(t.dir, prefix + std::to_string(::getpid()) + "-" + Hex(rd(), 8));
    // A replaced file's mode comes before any data, so its data is never
    // readable by more users than before. A new file: the umask decides.
    int fd = ::open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, t.existing ? 0600 : 0666);
    if (fd < 0) {
      err = errno;
      continue;
    }
    if (t.existing) {
      if (CopyOwnerAndMode(fd, *t.existing) != 0) {
        ::close(fd);
        ::unlink(temp.c_str());
        return OpenInPlace(path, t);
      }
    }
    return std::unique_ptr<Sink>(
        std::make_unique<FileSink>(fd, path, Mode::kTemporary, temp, t.path, t.dir));
  }
  if (t.existing && (err == EACCES || err == EPERM)) return OpenInPlace(path, t);
  if (err == EEXIST) return Status::IoError("could not find a free temporary name beside " + path);
  return Status::FromErrno("creating " + temp + " to save " + path, err);
}

Result<std::unique_ptr<Sink>> CreateFdSink(int fd, const std::string& name) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return Status::FromErrno("duplicating descriptor of " + name, errno);
  return std::unique_ptr<Sink>(std::make_unique<FileSink>(dup, name, Mode::kCallerFd));
}

Result<std::unique_ptr<Sink>> CreateSink(const std::string& uri, const SinkOptions& options) {
  const internal::Backend* backend = internal::FindBackend(uri);
  if (backend == nullptr || backend->create_sink == nullptr) {
    return Status::InvalidArgument("cannot write to '" +
                                   EscapeControls(internal::UriScheme(uri).value_or("")) +
                                   "' URIs (" + RedactUri(uri) +
                                   "): only " + internal::WritableSchemes() + " are writable");
  }
  return backend->create_sink(uri, options);
}

}  // namespace tensorizer
