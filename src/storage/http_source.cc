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
//     (Content-Length) at open. Its object is read as one stream
//     (WholeObjectStream): a GET without Range, run on a thread of the
//     source's own, whose body is copied as it arrives into the buffers of
//     the reads waiting for those bytes, and into a ring of the last
//     kStreamWindowBytes. A read of bytes the stream has not reached waits
//     for them; a read of bytes still in the ring is served from it; a read
//     of bytes already gone (the stream is past them: a lazy load reading
//     tensors out of file order) stops the stream and starts a new GET from
//     byte 0, whose skipped bytes it costs. With no read waiting, the stream
//     reads ahead kStreamReadAheadBytes and then holds (TCP backpressure).
//     Memory is the ring, whatever the object's size; the body is bounded by
//     the size seen at open. Such a GET cannot resume, so every retry costs
//     the bytes before the break again: a read's failures never reset, and
//     max_retries bounds the GETs one read waits through to max_retries + 1
//     after its own first, each at most the object's size.
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
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
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

// A stream of an object without range support keeps its last
// kStreamWindowBytes (for a read that arrives just after its bytes went by:
// load workers do not ask in exact file order), and reads up to
// kStreamReadAheadBytes past the furthest read while none waits.
constexpr uint64_t kStreamWindowBytes = 8 << 20;
constexpr uint64_t kStreamReadAheadBytes = 4 << 20;

// How long the stream waits, before pushing a read's end out of its window,
// for the reader that just finished there to ask for what follows (a load
// worker reading the next piece of a tensor).
constexpr auto kContinuationHold = std::chrono::milliseconds(200);

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

// Where one request's body goes. Exactly one of: the caller's buffers (iov),
// a sink (the stream of a GET without Range), or nowhere (probe).
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
  // A GET without Range: each piece of the body, bytes [got, got + n) of
  // the object, in order; false stops the transfer (with `enough` set).
  std::function<bool(const char* data, size_t n)> sink;
  bool probe = false;
  uint64_t got = 0;
  std::string error_body;
  // Set by the callbacks when they stop the transfer on purpose, with the
  // errno the failure maps to (ESTALE: the object changed).
  std::string abort_reason;
  int abort_errno = EIO;
  // The probe or the sink has what it needs; the rest is cut off.
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
size_t WriteSink(Transfer* t, const char* data, size_t n) {
  if (t->got + n > t->object_size) {
    t->abort_reason =
        "the server sent more than the object's " + std::to_string(t->object_size) + " bytes";
    return 0;
  }
  if (!t->sink(data, n)) {
    t->enough = true;
    return 0;
  }
  t->got += n;
  return n;
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
  if (t->sink) return WriteSink(t, data, n);
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

// The object of a server without range support, as one stream shared by
// every read (step 4 at the top of this file).
//
// Invariants: a read's buffers are written only while it is registered (in
// requests_), and only with the bytes at their offsets, in order; the ring
// holds bytes [WindowStart(), pos_) of the current (or last) stream; one GET
// runs at a time, on the producer thread.
class WholeObjectStream {
 public:
  // Runs one GET without Range on the calling thread; the body goes to the
  // Transfer's sink. Sets *retriable for a failure worth another GET.
  using Get = std::function<Status(Transfer* t, bool* retriable)>;
  // Sleeps before retry number `attempt` (from 0) after answer `r`.
  using Backoff = std::function<void(int attempt, const Response& r)>;

  WholeObjectStream(uint64_t size, HttpOptions options, Get get, Backoff backoff)
      : size_(size),
        options_(std::move(options)),
        get_(std::move(get)),
        backoff_(std::move(backoff)),
        producer_cancel_(std::make_shared<CancelFlag>()) {}

  WholeObjectStream(const WholeObjectStream&) = delete;
  WholeObjectStream& operator=(const WholeObjectStream&) = delete;

  ~WholeObjectStream() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    // Also ends a GET waiting on the network (its progress callback).
    producer_cancel_->Cancel();
    cv_.notify_all();
    if (producer_.joinable()) producer_.join();
  }

  // Bytes [offset, offset + total) into the buffers; total > 0.
  Status Read(uint64_t offset, uint64_t total, const struct iovec* iov, int iovcnt) {
    std::unique_lock<std::mutex> lock(mu_);
    Request r(offset, total, iov, iovcnt);
    ClaimContinuation(offset);
    FromWindow(&r);
    if (r.done()) return Status::Ok();
    requests_.push_back(&r);
    furthest_end_ = std::max(furthest_end_, r.end);
    struct Unregister {
      std::vector<Request*>& requests;
      Request* r;
      ~Unregister() { requests.erase(std::find(requests.begin(), requests.end(), r)); }
    } unregister{requests_, &r};
    if (!producer_.joinable()) producer_ = std::thread([this] { Produce(); });

    int failures = 0;
    internal::ThrottleRetries throttled;
    uint64_t ends_seen = ends_;  // GETs that ended before this read began are not its own
    while (!r.done()) {
      if (CancelRequested()) return CancelledStatus("the transfer");
      if (ends_ > ends_seen) {
        ends_seen = ends_;
        if (!end_status_.ok()) {
          if (!end_retriable_) return end_status_;
          const Status failed = end_status_;
          const Response answer = end_response_;
          int attempt;
          if (throttled.Retry(answer.status, options_)) {
            attempt = throttled.count() - 1;
          } else if (++failures > options_.max_retries) {
            return Status(failed.code(),
                          failed.message() + " (gave up after " + std::to_string(failures) +
                              " attempts)",
                          failed.sys_errno());
          } else {
            attempt = failures - 1;
          }
          lock.unlock();
          backoff_(attempt, answer);
          lock.lock();
          continue;
        }
      }
      // Bytes this read needs are behind the stream: only a new GET has them.
      if (streaming_ && r.next < WindowStart()) abort_ = true;
      if (!streaming_ && !start_requested_) {
        start_requested_ = true;
        cv_.notify_all();
      }
      cv_.wait_for(lock, std::chrono::milliseconds(internal::kCancelPollMs));
    }
    return Status::Ok();
  }

 private:
  // One read waiting for its bytes: [next, end) are still missing.
  struct Request {
    Request(uint64_t offset, uint64_t total, const struct iovec* v, int n)
        : next(offset), end(offset + total), iov(v), iovcnt(n) {}
    bool done() const { return next == end; }
    // Copies the part of bytes [pos, pos + n) that continues it.
    void Take(uint64_t pos, const char* data, size_t n) {
      if (next < pos || next >= pos + n) return;
      size_t skip = static_cast<size_t>(next - pos);
      size_t left = static_cast<size_t>(std::min<uint64_t>(end - next, n - skip));
      data += skip;
      next += left;
      while (left > 0) {
        const struct iovec& v = iov[iov_index];
        const size_t take = std::min(v.iov_len - iov_offset, left);
        std::memcpy(static_cast<char*>(v.iov_base) + iov_offset, data, take);
        data += take;
        left -= take;
        iov_offset += take;
        if (iov_offset == v.iov_len) {
          ++iov_index;
          iov_offset = 0;
        }
      }
    }
    uint64_t next, end;
    const struct iovec* iov;
    int iovcnt;
    int iov_index = 0;
    size_t iov_offset = 0;
  };

  struct Continuation {
    uint64_t offset;
    std::chrono::steady_clock::time_point since;
  };

  uint64_t WindowStart() const TZR_REQUIRES(mu_) {
    return pos_ > kStreamWindowBytes ? pos_ - kStreamWindowBytes : 0;
  }

  // Serves the part of `r` that the ring holds.
  void FromWindow(Request* r) TZR_REQUIRES(mu_) {
    while (!r->done() && r->next >= WindowStart() && r->next < pos_) {
      const uint64_t at = r->next % kStreamWindowBytes;
      const uint64_t n = std::min({pos_ - r->next, kStreamWindowBytes - at, r->end - r->next});
      r->Take(r->next, window_.data() + at, static_cast<size_t>(n));
    }
    if (r->done()) Finished(*r);
  }

  void Finished(const Request& r) TZR_REQUIRES(mu_) {
    if (r.end < size_) continuations_.push_back({r.end, std::chrono::steady_clock::now()});
  }

  void ClaimContinuation(uint64_t offset) TZR_REQUIRES(mu_) {
    continuations_.erase(std::remove_if(continuations_.begin(), continuations_.end(),
                                        [&](const Continuation& c) { return c.offset == offset; }),
                         continuations_.end());
  }

  // Whether the stream may take bytes [pos_, pos_ + n): a read waits for
  // them (or for later ones) or they are within the read-ahead, and no read
  // that just finished is about to be pushed out of the window.
  bool MayAdvance(size_t n) TZR_REQUIRES(mu_) {
    const uint64_t end = pos_ + n;
    bool wanted = end <= furthest_end_ + kStreamReadAheadBytes;
    for (const Request* r : requests_) wanted = wanted || r->end > pos_;
    if (!wanted) return false;
    const auto now = std::chrono::steady_clock::now();
    continuations_.erase(std::remove_if(continuations_.begin(), continuations_.end(),
                                        [&](const Continuation& c) {
                                          return now - c.since > kContinuationHold;
                                        }),
                         continuations_.end());
    const uint64_t window_start = end > kStreamWindowBytes ? end - kStreamWindowBytes : 0;
    for (const Continuation& c : continuations_) {
      if (c.offset < window_start) return false;
    }
    return true;
  }

  // The sink of the stream's GET: bytes [pos_, pos_ + n).
  bool Deliver(const char* data, size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!MayAdvance(n)) {
      if (stop_ || abort_) return false;
      cv_.wait_for(lock, std::chrono::milliseconds(internal::kCancelPollMs));
    }
    if (stop_ || abort_) return false;
    for (Request* r : requests_) {
      if (r->done()) continue;
      r->Take(pos_, data, n);
      if (r->done()) Finished(*r);
    }
    if (window_.empty()) window_.resize(kStreamWindowBytes);
    for (size_t done = 0; done < n;) {
      const uint64_t at = (pos_ + done) % kStreamWindowBytes;
      const size_t k = static_cast<size_t>(std::min<uint64_t>(n - done, kStreamWindowBytes - at));
      std::memcpy(window_.data() + at, data + done, k);
      done += k;
    }
    pos_ += n;
    cv_.notify_all();
    return true;
  }

  // The producer thread: one GET from byte 0 each time a read asks.
  void Produce() {
    CancelScope scope(producer_cancel_);
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || start_requested_; });
      if (stop_) return;
      start_requested_ = false;
      streaming_ = true;
      abort_ = false;
      pos_ = 0;
      furthest_end_ = 0;
      for (const Request* r : requests_) furthest_end_ = std::max(furthest_end_, r->end);
      lock.unlock();
      Transfer t;
      t.ranged = false;
      t.object_size = size_;
      t.size_known = true;
      t.sink = [this](const char* data, size_t n) { return Deliver(data, n); };
      bool retriable = false;
      Status st = get_(&t, &retriable);
      if (st.ok() && !t.enough && t.got < size_) {
        st = Status::IoError("the response ended after " + std::to_string(t.got) + " of " +
                             std::to_string(size_) + " bytes");
        retriable = true;
      }
      lock.lock();
      streaming_ = false;
      ++ends_;
      end_status_ = st;
      end_retriable_ = retriable;
      end_response_ = t.response;
      cv_.notify_all();
    }
  }

  const uint64_t size_;
  const HttpOptions options_;
  const Get get_;
  const Backoff backoff_;
  const std::shared_ptr<CancelFlag> producer_cancel_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::thread producer_ TZR_GUARDED_BY(mu_);
  std::vector<Request*> requests_ TZR_GUARDED_BY(mu_);
  std::vector<Continuation> continuations_ TZR_GUARDED_BY(mu_);
  std::vector<char> window_ TZR_GUARDED_BY(mu_);  // the ring, allocated with the first byte
  uint64_t pos_ TZR_GUARDED_BY(mu_) = 0;           // bytes the current (or last) GET delivered
  uint64_t furthest_end_ TZR_GUARDED_BY(mu_) = 0;  // of the reads of the current GET
  bool stop_ TZR_GUARDED_BY(mu_) = false;
  bool start_requested_ TZR_GUARDED_BY(mu_) = false;
  bool streaming_ TZR_GUARDED_BY(mu_) = false;
  bool abort_ TZR_GUARDED_BY(mu_) = false;
  // How the last GET ended; ends_ counts the GETs that ended.
  uint64_t ends_ TZR_GUARDED_BY(mu_) = 0;
  Status end_status_ TZR_GUARDED_BY(mu_);
  bool end_retriable_ TZR_GUARDED_BY(mu_) = false;
  Response end_response_ TZR_GUARDED_BY(mu_);
};

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
    stream_ = std::make_unique<WholeObjectStream>(
        size_, options_,
        [this](Transfer* t, bool* retriable) {
          Status st = Perform(t, /*conditional=*/true);
          *retriable = retriable_;
          return st;
        },
        [this](int attempt, const Response& answer) { Backoff(attempt, answer); });
    return Status::Ok();
  }

  Status ReadRange(uint64_t offset, uint64_t total, const struct iovec* iov,
                   int iovcnt) const override {
    if (!ranges_) {
      return stream_->Read(offset, total, iov, iovcnt)
          .WithContext("reading " + name_ + " " + ByteRange(offset, total) +
                       " (the server does not honour Range: streaming the object from byte 0)");
    }

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
    if (!t->probe && !t->body_checked && (t->want > 0 || t->sink)) {
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

  // Without range support: the stream every read shares. Last, so that it
  // stops (joining its thread) before the handles it uses are freed.
  std::unique_ptr<WholeObjectStream> stream_;

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
