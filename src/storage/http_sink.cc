// HttpSink: a .tensors file uploaded to an http(s):// URL with PUT.
//
// The Writer rewrites the file header and the metadata block at the start
// of the file until Close(), and its workers write records out of order, so
// no byte of a single PUT can leave before the last one is written. The
// bytes go to a spool instead: an unnamed temporary file ($TMPDIR, else
// /tmp; O_TMPFILE, so a crash leaves nothing behind), which keeps host
// memory flat (the page cache holds what the kernel likes) and lets a
// failed PUT be sent again from byte 0, which a streamed body could not.
// The cost: disk space for one file, and the upload starts at Commit().
// docs/storage.md ("HTTP uploads") has the reasoning.
//
// Steps of Commit():
//  1. A URL with a query (a presigned URL, whose signature covers this
//     path and method only) is PUT directly, with Content-Length.
//  2. Any other URL is PUT to a temporary name beside it,
//     ".<name>.tzr-tmp-<random>", then MOVEd over it (WebDAV, RFC 4918,
//     "Overwrite: T"): the name shows the old object or the whole new one.
//  3. A server without MOVE (405, 501) gets the PUT again, to the URL
//     itself, and the temporary is deleted.
//  4. Whatever fails after a temporary was sent deletes it (best effort).
// Abort() before Commit() sends nothing at all.
//
// Requests go through PerformRequest and RetryRequest (curl_common.h):
// dropped connections, timeouts, 5xx and 429 are retried with backoff.
// Messages show the URL only through RedactUri.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "storage/curl_common.h"
#include "storage/parsed_uri.h"
#include "storage/registry.h"
#include "tensorizer/cancel.h"
#include "tensorizer/uri.h"
#include "tensorizer/write.h"

namespace tensorizer {
namespace {

// An unnamed file for the upload's bytes, in $TMPDIR or /tmp.
Result<int> OpenSpool(const std::string& name) {
  const char* env = std::getenv("TMPDIR");
  const std::string dir = env != nullptr && env[0] != '\0' ? env : "/tmp";
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return fd;
  // File systems without O_TMPFILE: a named file, unlinked at once.
  std::string path = dir + "/.tzr-upload-XXXXXX";
  fd = ::mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) {
    return Status::FromErrno("creating a local spool in " + dir + " for the upload of " + name,
                             errno);
  }
  ::unlink(path.c_str());
  return fd;
}

std::string RandomHex(int digits) {
  std::random_device rd;
  std::string out;
  while (static_cast<int>(out.size()) < digits) {
    const uint32_t v = rd();
    for (int i = 0; i < 8 && static_cast<int>(out.size()) < digits; ++i) {
      out += "0123456789abcdef"[(v >> (4 * i)) & 15];
    }
  }
  return out;
}

class HttpSink final : public Sink {
 public:
  HttpSink(std::string url, internal::ParsedUri parsed, HttpOptions http, int spool)
      : url_(std::move(url)),
        name_(RedactUri(url_)),
        parsed_(std::move(parsed)),
        http_(std::move(http)),
        spool_(spool) {}

  ~HttpSink() override {
    if (!finished_) Abort();
    if (handle_ != nullptr) curl_easy_cleanup(handle_);
  }

  Status WriteAt(uint64_t offset, const void* data, uint64_t length) override {
    const auto* p = static_cast<const char*>(data);
    const uint64_t end = offset + length;
    while (length > 0) {
      const ssize_t n = ::pwrite(spool_, p, length, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("spooling the upload of " + name_ + " (at byte " +
                                     std::to_string(offset) + ")",
                                 errno);
      }
      p += n;
      offset += static_cast<uint64_t>(n);
      length -= static_cast<uint64_t>(n);
    }
    uint64_t seen = end_.load();
    while (seen < end && !end_.compare_exchange_weak(seen, end)) {
    }
    return Status::Ok();
  }

  void Preallocate(uint64_t offset, uint64_t length) override {
    (void)::fallocate(spool_, 0, static_cast<off_t>(offset), static_cast<off_t>(length));
  }

  Status Commit() override {
    if (finished_) return Status::InvalidArgument(name_ + " is already closed");
    Status st = Upload();
    finished_ = true;
    CloseSpool();
    return st;
  }

  void Abort() override {
    if (finished_) return;
    finished_ = true;
    CloseSpool();
  }

  const std::string& uri() const override { return url_; }

 private:
  Status Upload() {
    handle_ = curl_easy_init();
    if (handle_ == nullptr) return Status::IoError("curl_easy_init failed");
    if (parsed_.query) return Put(url_, name_);
    const size_t slash = parsed_.path.rfind('/');
    const std::string base = slash == std::string::npos ? "" : parsed_.path.substr(slash + 1);
    const std::string origin = parsed_.scheme + "://" + parsed_.authority;
    const std::string temp_path =
        parsed_.path.substr(0, slash + 1) + "." + base + ".tzr-tmp-" + RandomHex(16);
    const std::string temp_url = origin + temp_path;
    const std::string temp_name = RedactUri(temp_url);
    TZR_RETURN_IF_ERROR(Put(temp_url, temp_name).WithContext("uploading " + name_));
    Result<internal::Reply> moved = Move(temp_url);
    if (moved.ok() && moved->response.status / 100 == 2) return Status::Ok();
    if (moved.ok() && (moved->response.status == 405 || moved->response.status == 501)) {
      // No MOVE here: the object is PUT where it belongs, unguarded.
      Status st = Put(url_, name_);
      DeleteQuietly(temp_url);
      return st;
    }
    DeleteQuietly(temp_url);
    if (!moved.ok()) return moved.status();
    return Status::IoError("MOVE of " + temp_name + " to " + name_ + " answered " +
                               moved->response.StatusText(),
                           internal::ErrnoForStatus(moved->response.status));
  }

  // PUT of the spool to `url`; `name` is its redacted form.
  Status Put(const std::string& url, const std::string& name) {
    internal::RequestBody body;
    body.fd = spool_;
    body.file_size = end_.load();
    return internal::RetryRequest(http_, "PUT of " + name, [&] {
      return Try("PUT", url, {}, body, {200, 201, 204}, nullptr);
    });
  }

  // MOVE of `temp_url` over the sink's URL. A final answer (one not worth
  // retrying) is returned as a Reply for Upload() to judge.
  Result<internal::Reply> Move(const std::string& temp_url) {
    // The Destination names the target without its userinfo: a password
    // travels in the Authorization header, never in another header.
    const size_t at = parsed_.authority.rfind('@');
    const std::string host =
        at == std::string::npos ? parsed_.authority : parsed_.authority.substr(at + 1);
    const std::vector<std::string> headers = {
        "Destination: " + parsed_.scheme + "://" + host + parsed_.path, "Overwrite: T"};
    Result<internal::Reply> answer = Status::IoError("not sent");
    Status st = internal::RetryRequest(http_, "MOVE to " + name_, [&] {
      internal::Attempt a = Try("MOVE", temp_url, headers, {}, {}, &answer);
      if (answer.ok() && !a.retriable) a.status = Status::Ok();
      return a;
    });
    if (!st.ok()) return st;
    return answer;
  }

  void DeleteQuietly(const std::string& url) {
    CancelScope shield(nullptr);  // cleanup runs to the end, even when cancelled
    (void)internal::RetryRequest(http_, "DELETE", [&] {
      return Try("DELETE", url, {}, {}, {200, 202, 204, 404}, nullptr);
    });
  }

  // One request; ok for an answer in `good` (any 2xx when empty). The
  // reply, when there was one, goes to *answer.
  internal::Attempt Try(const std::string& method, const std::string& url,
                        const std::vector<std::string>& headers, const internal::RequestBody& body,
                        const std::vector<long>& good, Result<internal::Reply>* answer) {
    internal::Attempt a;
    Result<internal::Reply> r =
        internal::PerformRequest(handle_, http_, method, url, headers, body, &a.retriable);
    if (!r.ok()) {
      a.status = r.status();
    } else {
      a.http_status = r->response.status;
      const bool ok = good.empty()
                          ? a.http_status / 100 == 2
                          : std::find(good.begin(), good.end(), a.http_status) != good.end();
      if (!ok) {
        a.retriable = internal::IsRetriableStatus(a.http_status);
        a.status = Status::IoError("the server answered " + r->response.StatusText(),
                                   a.retriable ? EIO : internal::ErrnoForStatus(a.http_status));
      }
    }
    if (answer != nullptr) *answer = std::move(r);
    return a;
  }

  void CloseSpool() {
    if (spool_ >= 0) ::close(spool_);
    spool_ = -1;
  }

  const std::string url_;
  const std::string name_;  // url_ redacted, for messages
  const internal::ParsedUri parsed_;
  const HttpOptions http_;
  int spool_;
  std::atomic<uint64_t> end_{0};  // one past the last byte written
  bool finished_ = false;
  CURL* handle_ = nullptr;
};

}  // namespace

Result<std::unique_ptr<Sink>> CreateHttpSink(const std::string& url, const HttpOptions& http) {
  const internal::Backend* backend = internal::FindBackend(url);
  if (!internal::UriScheme(url) || backend == nullptr || std::strcmp(backend->kind, "http") != 0) {
    return Status::InvalidArgument("not an http:// or https:// URL: " + RedactUri(url));
  }
  TZR_ASSIGN_OR_RETURN(internal::ParsedUri parsed, internal::ParseUri(url));
  if (parsed.host_port.host.empty()) {
    return Status::InvalidArgument("cannot upload to " + RedactUri(url) + ": it has no host");
  }
  if (parsed.path.empty() || parsed.path.back() == '/') {
    return Status::InvalidArgument("cannot upload to " + RedactUri(url) +
                                   ": it names a directory, not a file");
  }
  internal::CurlGlobalInit();
  TZR_ASSIGN_OR_RETURN(int spool, OpenSpool(RedactUri(url)));
  return std::unique_ptr<Sink>(
      std::make_unique<HttpSink>(url, std::move(parsed), http, spool));
}

}  // namespace tensorizer
