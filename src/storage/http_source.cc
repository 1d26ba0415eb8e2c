// HttpSource: a Source over an http:// or https:// URL, through libcurl.
//
// Steps:
//  1. Open sends one GET for "Range: bytes=0-0". A 206 gives the size (from
//     Content-Range) and proves the server honours ranges; a 200 means it
//     does not (Content-Length gives the size, and the body is not read). A
//     ranged GET is used rather than HEAD because it answers the range
//     question for certain (Accept-Ranges is advisory) and because presigned
//     URLs are often signed for GET only. The ETag and Last-Modified of that
//     answer are the object's identity for the rest of the load.
//  2. ReadAt/ReadAtV send "Range: bytes=a-b" with If-Match (a strong ETag) or
//     If-Unmodified-Since (no ETag, or a weak one), and the libcurl write
//     callback copies the body straight into the caller's buffers.
//  3. A dropped connection, a stall, a timeout, a 5xx, a 408 or a 429 is
//     retried with exponential backoff and full jitter, resuming from the
//     first byte not yet received; any other 4xx fails at once.
//  4. A server without range support must say the object's size
//     (Content-Length) at open. It is read into a growing prefix of the
//     object (PrefixBuffer): a read past the prefix sends one GET without a
//     Range, skips (and compares) the bytes already held, and extends the
//     prefix to at least twice its size or to the read's end, whichever is
//     more, then stops the transfer. Memory is what the load has read so far
//     (never more than twice that, never more than the size seen at open),
//     and the traffic about twice the prefix. Such a GET cannot resume, so
//     every retry costs the bytes before the break again: its failures never
//     reset, and max_retries bounds the bytes it moves to (max_retries + 1)
//     times its target.
//
// Retry budget: a request gives up after max_retries failed attempts in a
// row that made no progress; an attempt progresses when it delivered at
// least min(kProgressBytes, what was still missing), so a trickle or a
// stream of short answers cannot retry for ever.
//
// Invariants: the write callback never writes outside the caller's buffers;
// a response whose range, total size or validators differ from what was asked
// or seen at open is an error, never bytes of two versions of the object; a
// Status names the URL and the byte range.
//
// Thread-safety: ReadAt may run on many threads at once. Each call takes a
// CURL easy handle from a pool (creating one when all are busy) and gives it
// back afterwards, so connections stay open between requests (keep-alive)
// and the pool grows to the number of concurrent readers.
#include "storage/http_source.h"

#include <curl/curl.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <optional>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "storage/curl_common.h"
#include "storage/http_protocol.h"
#include "storage/parsed_uri.h"
#include "storage/read_range.h"
#include "storage/registry.h"
#include "tensorizer/format.h"
#include "tensorizer/source.h"
#include "tensorizer/uri.h"
#include "util/cancel_wait.h"
#include "util/thread_annotations.h"

namespace tensorizer {
namespace {

// Bytes of an error response kept for the message.
constexpr size_t kErrorBodyBytes = 1024;

// What an attempt must deliver (or all that was missing, if less) to reset
// the count of failures.
constexpr uint64_t kProgressBytes = 1 << 20;

// The first prefix of an object without range support: the index read
// (262,217 bytes in files tensorizer writes) and some tensors.
constexpr uint64_t kFirstPrefixBytes = 4 << 20;

using internal::ByteRange;

using http::ContentRange;
using http::OneLine;
using http::ParseContentRange;
using http::Response;

std::string ChangedMessage() {
  return "the object changed during the load (its ETag, Last-Modified or size differs from "
         "when it was opened)";
}

// --- Transfers -----------------------------------------------------------------

struct HandleDeleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
using Handle = std::unique_ptr<CURL, HandleDeleter>;

struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using Slist = std::unique_ptr<curl_slist, SlistDeleter>;

// Bytes [0, size()) of an object, in fixed blocks so that growing it never
// copies what it holds. Not thread-safe.
class PrefixBuffer {
 public:
  uint64_t size() const { return size_; }

  void Append(const char* data, size_t n) {
    while (n > 0) {
      const size_t in_block = size_ % kBlock;
      if (in_block == 0) blocks_.emplace_back(new char[kBlock]);
      const size_t take = std::min(n, kBlock - in_block);
      std::memcpy(blocks_.back().get() + in_block, data, take);
      data += take;
      n -= take;
      size_ += take;
    }
  }

  // Whether bytes [offset, offset + n) (all held) equal `data`.
  bool Equals(uint64_t offset, const char* data, size_t n) const {
    bool same = true;
    Visit(offset, n, [&](const char* held, size_t k) {
      same = same && std::memcmp(held, data, k) == 0;
      data += k;
    });
    return same;
  }

  void CopyOut(uint64_t offset, char* dst, size_t n) const {
    Visit(offset, n, [&](const char* held, size_t k) {
      std::memcpy(dst, held, k);
      dst += k;
    });
  }

 private:
  static constexpr size_t kBlock = 4 << 20;

  template <typename F>
  void Visit(uint64_t offset, size_t n, F f) const {
    while (n > 0) {
      const size_t in_block = offset % kBlock;
      const size_t k = std::min(n, kBlock - in_block);
      f(blocks_[offset / kBlock].get() + in_block, k);
      offset += k;
      n -= k;
    }
  }

  std::vector<std::unique_ptr<char[]>> blocks_;
  uint64_t size_ = 0;
};

// Where one request's body goes. Exactly one of: the caller's buffers (iov),
// the object's prefix (a GET without Range), or nowhere (probe).
struct Transfer {
  Response response;
  // Range asked for: [first, first + want); unused without `ranged`.
  uint64_t first = 0;
  uint64_t want = 0;
  bool ranged = true;
  // The size and validators seen at open; 0, false and "" while opening.
  uint64_t object_size = 0;
  bool size_known = false;
  std::string etag, last_modified;
  // Acceptable answers, checked once when the body starts.
  bool body_checked = false;
  bool body_ok = false;  // false: an error status, body kept for the message
  // Destination.
  const struct iovec* iov = nullptr;
  int iovcnt = 0;
  int iov_index = 0;
  size_t iov_offset = 0;
  // A GET without Range: the body from byte 0 extends `prefix` (skipping,
  // and comparing, the bytes it holds) up to `prefix_target` bytes.
  PrefixBuffer* prefix = nullptr;
  uint64_t prefix_target = 0;
  bool probe = false;
  uint64_t got = 0;
  std::string error_body;
  // Set by the callbacks when they stop the transfer on purpose, with the
  // errno the failure maps to (ESTALE: the object changed).
  std::string abort_reason;
  int abort_errno = EIO;
  // The probe or the prefix has what it needs; the rest is cut off.
  bool enough = false;
};

size_t HeaderCallback(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  t->response.AddLine(std::string(data, size * count));
  if (!t->response.header_problem.empty()) {
    t->abort_reason = t->response.header_problem;
    return 0;
  }
  return size * count;
}

bool Changed(Transfer* t, const std::string& detail) {
  t->abort_reason = ChangedMessage() + detail;
  t->abort_errno = ESTALE;
  return false;
}

// Decides, when the first body byte arrives, whether the body is the data.
bool CheckBodyStart(Transfer* t) {
  const Response& r = t->response;
  const uint64_t object_size = t->object_size;
  if ((r.status == 200 || r.status == 206) && !r.EncodingProblem().empty()) {
    t->abort_reason = r.EncodingProblem();
    return false;
  }
  if (t->probe) return true;
  if ((r.status == 200 || r.status == 206) &&
      ((!t->etag.empty() && !r.etag.empty() && r.etag != t->etag) ||
       (!t->last_modified.empty() && !r.last_modified.empty() &&
        r.last_modified != t->last_modified))) {
    return Changed(t, "");
  }
  if (r.status == 206 && t->ranged) {
    ContentRange cr;
    if (!ParseContentRange(r.content_range, &cr) || !cr.has_range) {
      t->abort_reason = "206 with an unreadable Content-Range '" + r.content_range + "'";
      return false;
    }
    if (cr.has_total && t->size_known && cr.total != object_size) {
      return Changed(t, ": the size is now " + std::to_string(cr.total));
    }
    if (cr.first != t->first || cr.last != t->first + t->want - 1) {
      t->abort_reason = "the server answered with Content-Range '" + r.content_range + "'";
      return false;
    }
    t->body_ok = true;
    return true;
  }
  if (r.status == 200) {
    // A server that ignores Range sends the whole object: usable only when
    // that is what was asked for.
    if (!t->ranged || (t->first == 0 && t->want == object_size)) {
      if (t->size_known && r.has_length && r.content_length != object_size) {
        return Changed(t, ": the size is now " + std::to_string(r.content_length));
      }
      t->body_ok = true;
      return true;
    }
    t->abort_reason = "the server ignored the Range header and sent the whole object";
    return false;
  }
  if (r.status == 206) {
    t->abort_reason = "the server answered 206 to a GET without a Range header";
    return false;
  }
  t->body_ok = false;  // an error status: keep the start of the body
  return true;
}

// The body of a GET without Range: bytes [got, got + n) of the object.
size_t WritePrefix(Transfer* t, const char* data, size_t n) {
  PrefixBuffer* prefix = t->prefix;
  if (t->got + n > t->object_size) {
    t->abort_reason =
        "the server sent more than the object's " + std::to_string(t->object_size) + " bytes";
    return 0;
  }
  size_t used = 0;
  if (t->got < prefix->size()) {
    used = static_cast<size_t>(std::min<uint64_t>(n, prefix->size() - t->got));
    if (!prefix->Equals(t->got, data, used)) {
      Changed(t,
              ": bytes before " + std::to_string(prefix->size()) + " differ from an earlier GET");
      return 0;
    }
  }
  const size_t take =
      static_cast<size_t>(std::min<uint64_t>(n - used, t->prefix_target - prefix->size()));
  prefix->Append(data + used, take);
  t->got += used + take;
  if (prefix->size() < t->prefix_target) return n;
  // The prefix is long enough: cut the rest of the object off.
  t->enough = true;
  return used + take == n && t->got == t->object_size ? n : 0;
}

size_t WriteCallback(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t n = size * count;
  if (t->probe) {
    // The probe needs the headers only. Its one byte is read (keeping the
    // connection for reuse); anything longer (a 200 with the whole object,
    // an error page) is cut off.
    long status = t->response.status;
    if (status == 206 && t->got + n <= 1) {
      t->got += n;
      return n;
    }
    if (status != 200 && status != 206) {
      // An error page: its start is kept for the message.
      const size_t room = kErrorBodyBytes - t->error_body.size();
      t->error_body.append(data, std::min(n, room));
      if (n <= room) return n;
    }
    t->enough = true;
    return 0;
  }
  if (!t->body_checked) {
    t->body_checked = true;
    if (!CheckBodyStart(t)) return 0;
  }
  if (!t->body_ok) {
    size_t keep = std::min(n, kErrorBodyBytes - std::min(kErrorBodyBytes, t->error_body.size()));
    t->error_body.append(data, keep);
    return n;
  }
  if (t->prefix) return WritePrefix(t, data, n);
  if (n > t->want - t->got) {
    t->abort_reason =
        "the server sent more bytes than the " + std::to_string(t->want) + " asked for";
    return 0;
  }
  size_t left = n;
  while (left > 0) {
    const struct iovec& v = t->iov[t->iov_index];
    size_t room = v.iov_len - t->iov_offset;
    size_t take = std::min(room, left);
    std::memcpy(static_cast<char*>(v.iov_base) + t->iov_offset, data, take);
    data += take;
    left -= take;
    t->iov_offset += take;
    if (t->iov_offset == v.iov_len) {
      ++t->iov_index;
      t->iov_offset = 0;
    }
  }
  t->got += n;
  return n;
}

// Skips `bytes` bytes of an iovec cursor (to resume after a partial
// transfer); empty buffers are skipped too.
void Advance(const struct iovec* iov, int iovcnt, uint64_t bytes, int* index, size_t* offset) {
  while (*index < iovcnt) {
    size_t room = iov[*index].iov_len - *offset;
    if (bytes < room || (bytes == 0 && room > 0)) {
      *offset += bytes;
      return;
    }
    bytes -= room;
    ++*index;
    *offset = 0;
  }
}

class HttpSource final : public internal::ScatterReadSource {
 public:
  HttpSource(std::string url, std::string name, HttpOptions options,
             std::shared_ptr<const internal::HttpRequestAuth> auth)
      : url_(std::move(url)),
        name_(std::move(name)),
        options_(std::move(options)),
        auth_(std::move(auth)),
        rng_(std::random_device{}()) {
    if (options_.deadline_ms > 0) {
      deadline_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.deadline_ms);
    }
  }

  ~HttpSource() override = default;

  uint64_t size() const override { return size_; }
  const std::string& uri() const override { return name_; }
  int concurrency_hint() const override { return kMinRequestsInFlight; }
  const std::vector<std::pair<std::string, std::string>>& open_headers() const {
    return open_headers_;
  }

  Status Open() {
    Transfer t;
    internal::ThrottleRetries throttled;
    for (int failures = 0;;) {
      t = Transfer();
      t.probe = true;
      t.first = 0;
      t.want = 1;
      Status st = Perform(&t, /*conditional=*/false);
      if (st.ok()) break;
      if (retriable_ && throttled.Retry(t.response.status, options_)) {
        Backoff(throttled.count() - 1, t.response);
        continue;
      }
      if (!retriable_ || ++failures > options_.max_retries) {
        return st.WithContext("opening " + name_ + " (GET of bytes [0, 1))");
      }
      Backoff(failures - 1, t.response);
    }
    const Response& r = t.response;
    open_headers_ = r.fields;
    etag_ = r.etag;
    last_modified_ = r.last_modified;
    if (r.status == 206 || r.status == 416) {
      ContentRange cr;
      if (!ParseContentRange(r.content_range, &cr) || !cr.has_total) {
        return Status::IoError("opening " + name_ + ": " + r.StatusText() +
                               " without the object's size in Content-Range '" + r.content_range +
                               "'");
      }
      size_ = cr.total;
      size_known_ = true;
      ranges_ = true;
      return Status::Ok();
    }
    // 200: the server ignores Range. Its size must be known before any
    // byte is kept, or a body without end would be read into memory.
    ranges_ = false;
    if (!r.has_length) {
      return Status::IoError("opening " + name_ +
                             ": the server ignores Range and sends no Content-Length, so the "
                             "object's size cannot be known without reading all of it");
    }
    size_ = r.content_length;
    size_known_ = true;
    return Status::Ok();
  }

  Status ReadRange(uint64_t offset, uint64_t total, const struct iovec* iov,
                   int iovcnt) const override {
    if (!ranges_) return ReadFromPrefix(offset, total, iov, iovcnt);

    uint64_t done = 0;
    int failures = 0;
    internal::ThrottleRetries throttled;
    while (done < total) {
      Transfer t;
      t.first = offset + done;
      t.want = total - done;
      t.object_size = size_;
      t.size_known = true;
      t.iov = iov;
      t.iovcnt = iovcnt;
      Advance(iov, iovcnt, done, &t.iov_index, &t.iov_offset);
      Status st = Perform(&t, /*conditional=*/true);
      done += t.got;
      if (st.ok()) {
        if (t.got == t.want) return Status::Ok();
        st = Status::IoError("the response ended after " + std::to_string(t.got) + " of " +
                             std::to_string(t.want) + " bytes");
        retriable_ = true;
      }
      if (!retriable_) return st.WithContext("reading " + name_ + " " + ByteRange(offset, total));
      if (throttled.Retry(t.response.status, options_)) {
        Backoff(throttled.count() - 1, t.response);
        continue;
      }
      failures = t.got >= std::min(kProgressBytes, t.want) ? 1 : failures + 1;
      if (failures > options_.max_retries) {
        return st.WithContext("reading " + name_ + " " + ByteRange(offset, total) +
                              " (gave up after " + std::to_string(failures) +
                              " attempts without progress)");
      }
      Backoff(failures - 1, t.response);
    }
    return Status::Ok();
  }

 private:
  // Runs one request on a pooled handle. On return, `retriable_` (thread
  // local) says whether a failure is worth another attempt.
  Status Perform(Transfer* t, bool conditional) const {
    retriable_ = false;
    if (CancelRequested()) return CancelledStatus("the request");
    int64_t left_ms = DeadlineLeftMs();
    if (left_ms == 0) return DeadlineError();
    Handle h = Acquire();
    if (!h) return Status::IoError("curl_easy_init failed");
    Slist headers;
    auto add = [&headers](const std::string& line) {
      curl_slist* next = curl_slist_append(headers.get(), line.c_str());
      if (next) {
        headers.release();
        headers.reset(next);
      }
    };
    add("Accept-Encoding: identity");
    if (auth_) {
      for (const std::string& line : auth_->Headers()) add(line);
    }
    if (t->ranged) {
      add("Range: bytes=" + std::to_string(t->first) + "-" +
          std::to_string(t->first + t->want - 1));
    }
    if (conditional) {
      if (!etag_.empty() && etag_.rfind("W/", 0) != 0) {
        add("If-Match: " + etag_);
      } else if (!last_modified_.empty()) {
        add("If-Unmodified-Since: " + last_modified_);
      }
    }
    if (!t->probe) {
      t->etag = etag_;
      t->last_modified = last_modified_;
    }
    CURL* c = h.get();
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, HeaderCallback);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, WriteCallback);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
    // The deadline bounds the whole transfer (0: none); pooled handles are
    // reset to none after it.
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(std::max<int64_t>(left_ms, 0)));
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    CURLcode rc = curl_easy_perform(c);
    const int transfer_errno = internal::ErrnoForCurl(c, rc);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, nullptr);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, nullptr);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 0L);
    Release(std::move(h));

    const Response& r = t->response;
    if (rc != CURLE_OK && DeadlineLeftMs() == 0) return DeadlineError();
    if (rc == CURLE_WRITE_ERROR && t->enough) rc = CURLE_OK;
    if (rc == CURLE_WRITE_ERROR && !t->abort_reason.empty()) {
      return Status::IoError(t->abort_reason, t->abort_errno);
    }
    if (rc != CURLE_OK) {
      retriable_ = internal::IsRetriableCurl(rc);
      return internal::CurlFailure(rc, errbuf, transfer_errno, !t->body_checked);
    }
    if (r.status == 412) return Status::IoError(ChangedMessage() + " (HTTP 412)", ESTALE);
    if (r.status == 416 && !t->probe) {
      return Status::IoError(ChangedMessage() + " (HTTP 416: the range is past its end)", ESTALE);
    }
    if ((r.status == 200 || r.status == 206) && !r.EncodingProblem().empty()) {
      return Status::IoError(r.EncodingProblem());
    }
    if (r.status >= 300 && r.status < 400 && auth_) {
      return Status::IoError(r.StatusText() + ": the endpoint redirects to " +
                             RedactUri(r.location) +
                             "; signed requests are not redirected (check the endpoint and region)");
    }
    bool good = r.status == 200 || r.status == 206 || (t->probe && r.status == 416);
    if (!good) {
      retriable_ = internal::IsRetriableStatus(r.status);
      std::string body = OneLine(t->error_body);
      // A plain server's page: escaped and cut, so it cannot forge lines.
      std::string message =
          auth_ ? auth_->DescribeFailure(r.StatusText(), body)
                : r.StatusText() + (body.empty() ? "" : ": " + PrintableName(body));
      return Status::IoError(message, retriable_ ? EIO : internal::ErrnoForStatus(r.status));
    }
    // A 206 or 200 with no body bytes skips the checks in the write callback.
    if (!t->probe && !t->body_checked && (t->want > 0 || t->prefix)) {
      t->body_checked = true;
      if (!CheckBodyStart(t)) {
        return Status::IoError(t->abort_reason, t->abort_errno);
      }
    }
    if ((!etag_.empty() && !r.etag.empty() && r.etag != etag_) ||
        (!last_modified_.empty() && !r.last_modified.empty() &&
         r.last_modified != last_modified_)) {
      if (!t->probe) return Status::IoError(ChangedMessage(), ESTALE);
    }
    return Status::Ok();
  }

  void Backoff(int attempt, const Response& r) const {
    uint64_t delay_ms;
    {
      std::lock_guard<std::mutex> lock(mu_);
      delay_ms = internal::BackoffDelayMs(options_, attempt, rng_);
    }
    // Retry-After in seconds, when the server says, within our maximum.
    uint64_t after_ms = 0;
    if (http::RetryAfterMs(r.retry_after, options_.retry_max_delay_ms, &after_ms)) {
      delay_ms = std::max<uint64_t>(delay_ms, after_ms);
    }
    int64_t left_ms = DeadlineLeftMs();
    if (left_ms >= 0) delay_ms = std::min<uint64_t>(delay_ms, static_cast<uint64_t>(left_ms));
    // A cancelled sleep ends early; the next attempt then stops at once.
    internal::SleepUnlessCancelled(delay_ms);
  }

  // Milliseconds to the load's deadline: -1 with none, 0 once it passed.
  int64_t DeadlineLeftMs() const {
    if (!deadline_) return -1;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    *deadline_ - std::chrono::steady_clock::now())
                    .count();
    return std::max<int64_t>(left, 0);
  }

  Status DeadlineError() const {
    retriable_ = false;
    return Status::IoError("the deadline of the load (" + std::to_string(options_.deadline_ms) +
                               " ms from the open) passed",
                           ETIMEDOUT);
  }

  // Bytes [offset, offset + total) of an object whose server ignores Range.
  Status ReadFromPrefix(uint64_t offset, uint64_t total, const struct iovec* iov,
                        int iovcnt) const {
    std::lock_guard<std::mutex> lock(prefix_mu_);
    if (prefix_.size() < offset + total) {
      const uint64_t target =
          std::min(size_, std::max({offset + total, 2 * prefix_.size(), kFirstPrefixBytes}));
      TZR_RETURN_IF_ERROR(FetchPrefix(target).WithContext(
          "reading " + name_ + " " + ByteRange(offset, total) +
          " (bytes [0, " + std::to_string(target) + "): the server does not honour Range)"));
    }
    for (int i = 0; i < iovcnt; ++i) {
      prefix_.CopyOut(offset, static_cast<char*>(iov[i].iov_base), iov[i].iov_len);
      offset += iov[i].iov_len;
    }
    return Status::Ok();
  }

  // Extends prefix_ to `target` bytes with GETs from byte 0.
  Status FetchPrefix(uint64_t target) const TZR_REQUIRES(prefix_mu_) {
    internal::ThrottleRetries throttled;
    for (int failures = 0;;) {
      Transfer t;
      t.ranged = false;
      t.prefix = &prefix_;
      t.prefix_target = target;
      t.object_size = size_;
      t.size_known = true;
      Status st = Perform(&t, /*conditional=*/true);
      if (st.ok()) {
        if (prefix_.size() >= target) return Status::Ok();
        st = Status::IoError("the response ended after " + std::to_string(t.got) + " of " +
                             std::to_string(size_) + " bytes");
        retriable_ = true;
      }
      if (!retriable_) return st;
      if (throttled.Retry(t.response.status, options_)) {
        Backoff(throttled.count() - 1, t.response);
        continue;
      }
      // Every retry starts again at byte 0: progress does not reset the count.
      if (++failures > options_.max_retries) {
        return Status(st.code(), st.message() + " (gave up after " + std::to_string(failures) +
                                     " attempts)", st.sys_errno());
      }
      Backoff(failures - 1, t.response);
    }
  }

  Handle Acquire() const {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        Handle h = std::move(idle_.back());
        idle_.pop_back();
        return h;
      }
    }
    Handle h(curl_easy_init());
    if (!h) return h;
    CURL* c = h.get();
    curl_easy_setopt(c, CURLOPT_URL, url_.c_str());
    // Signed requests (auth_) never follow a redirect: the new host would
    // receive x-amz-security-token, which libcurl does not strip.
    internal::ApplyRedirectPolicy(c, url_, /*follow_redirects=*/!auth_);
    // Bigger socket reads than the 16 KiB default: fewer callbacks at GB/s.
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
    internal::ApplyHttpOptions(c, options_);
    return h;
  }

  void Release(Handle h) const {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(std::move(h));
  }

  std::string url_;
  std::string name_;  // uri(): the URL, or s3://bucket/key
  HttpOptions options_;
  std::shared_ptr<const internal::HttpRequestAuth> auth_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  uint64_t size_ = 0;
  bool size_known_ = false;
  bool ranges_ = true;
  std::string etag_, last_modified_;
  std::vector<std::pair<std::string, std::string>> open_headers_;

  mutable std::mutex mu_;  // guards idle_ and rng_
  mutable std::vector<Handle> idle_ TZR_GUARDED_BY(mu_);
  mutable std::mt19937_64 rng_ TZR_GUARDED_BY(mu_);

  // Without range support: the bytes read so far.
  mutable std::mutex prefix_mu_;
  mutable PrefixBuffer prefix_ TZR_GUARDED_BY(prefix_mu_);

  // Whether the last Perform on this thread failed in a way worth retrying.
  static thread_local bool retriable_;
};

thread_local bool HttpSource::retriable_ = false;

}  // namespace

Result<std::unique_ptr<Source>> OpenHttpSource(const std::string& url, const HttpOptions& options) {
  const internal::Backend* backend = internal::FindBackend(url);
  if (!internal::UriScheme(url) || backend == nullptr || std::strcmp(backend->kind, "http") != 0) {
    return Status::InvalidArgument("not an http:// or https:// URL: " + RedactUri(url));
  }
  internal::CurlGlobalInit();
  auto source = std::make_unique<HttpSource>(url, RedactUri(url), options, nullptr);
  TZR_RETURN_IF_ERROR(source->Open());
  return std::unique_ptr<Source>(std::move(source));
}

namespace internal {

Result<std::unique_ptr<Source>> OpenAuthenticatedHttpSource(
    const std::string& url, const std::string& name, const HttpOptions& options,
    std::shared_ptr<const HttpRequestAuth> auth) {
  internal::CurlGlobalInit();
  auto source = std::make_unique<HttpSource>(url, name, options, std::move(auth));
  TZR_RETURN_IF_ERROR(source->Open());
  return std::unique_ptr<Source>(std::move(source));
}

std::vector<std::pair<std::string, std::string>> OpenResponseHeaders(const Source& source) {
  const auto* http = dynamic_cast<const HttpSource*>(&source);
  if (http == nullptr) return {};
  return http->open_headers();
}

}  // namespace internal

}  // namespace tensorizer
