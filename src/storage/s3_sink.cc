// S3Sink: a .tensors file streamed into an S3 multipart upload.
//
// Steps:
//  1. Create: resolve the endpoint and credentials, then
//     CreateMultipartUpload (POST ?uploads) gives the upload id.
//  2. WriteAt copies bytes into part buffers (PartAt: part_bytes each for
//     the first 1000 parts, doubling every 1000). The Writer writes every byte
//     past the file-header region exactly once (writes_once()), so a part
//     whose bytes have all arrived is final and goes to the upload queue;
//     `parallel_uploads` threads send queued parts (UploadPart).
//  3. Part 1 (k = 0) holds the file header and the metadata block, which the
//     Writer rewrites until the end: it stays in memory and is sent by
//     Commit(), with the last, partial part. S3 orders parts by number, not
//     by arrival, so sending part 1 last is fine.
//  4. Commit() waits for the queue, sends part 1 and the tail, then
//     CompleteMultipartUpload: only now does the object exist. An object
//     no bigger than one part is sent with one PutObject instead (and the
//     multipart upload aborted): S3 refuses a multipart upload of no parts.
//     The completion counts only when its whole body parses (namespaces
//     and all) as a CompleteMultipartUploadResult: S3 may answer 200 and
//     then an <Error>, after minutes of keep-alive whitespace. Then a HEAD
//     must find the object with the size written before Commit() succeeds
//     (a 403 to the HEAD, from credentials that may write but not read,
//     leaves the completion's word as the proof).
//  5. Abort(), a failed request or destruction without Commit() sends
//     AbortMultipartUpload: no partial object is ever visible.
//
// Invariants: host memory is part 1, the parts being filled (about one per
// writer thread, plus one per record whose header is written after its
// data), and at most max_queued_parts full parts waiting plus
// parallel_uploads in flight; a writer that gets further ahead waits. A byte
// written into a part already sent is an error, never a silent loss.
//
// Requests are retried with backoff on dropped connections, timeouts, 5xx and
// 429 (the body is in memory, so a part is simply sent again); other 4xx
// fail at once with a message naming the endpoint, bucket and key id.
// Payloads are sent as UNSIGNED-PAYLOAD: hashing every part with SHA-256
// would cost a core's worth of throughput for what TLS already protects.
#include <curl/curl.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "storage/curl_common.h"
#include "storage/http_protocol.h"
#include "storage/s3_auth.h"
#include "storage/s3_config.h"
#include "storage/s3_xml.h"
#include "tensorizer/write.h"
#include "util/cancel_wait.h"
#include "util/thread_annotations.h"

namespace tensorizer {
namespace {

// S3's minimum size for every part but the last.
constexpr uint64_t kMinPartBytes = 5ull << 20;
constexpr uint64_t kMaxParts = 10000;
constexpr uint64_t kMaxPartBytes = 5ull << 30;

// An ETag comes from the server: escaped, it cannot add part entries to the
// CompleteMultipartUpload body.
std::string XmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

using internal::Reply;

// One S3 client connection: sends signed requests about one object.
// Not thread-safe; each uploader thread has its own.
class S3Connection {
 public:
  S3Connection(const s3::ResolvedConfig& config, const s3::Location& location,
               const HttpOptions& http)
      : config_(config), location_(location), http_(http), handle_(curl_easy_init()) {}
  ~S3Connection() {
    if (handle_) curl_easy_cleanup(handle_);
  }
  S3Connection(const S3Connection&) = delete;
  S3Connection& operator=(const S3Connection&) = delete;

  // Sends `method` with `query` and `body`, retrying transient failures.
  // `what` names the request in errors ("UploadPart 3").
  Result<Reply> Send(const std::string& method, const s3::QueryList& query,
                     const std::string& body_data, const std::string& what) {
    if (!handle_) return Status::IoError("curl_easy_init failed");
    Result<Reply> r = Status::IoError("not sent");
    Status st = internal::RetryRequest(http_, what + " of " + ObjectName(), [&] {
      internal::Attempt a;
      r = SendOnce(method, query, body_data, &a.retriable);
      a.http_status = r.ok() ? r->response.status : 0;
      if (r.ok() && r->response.status >= 200 && r->response.status < 300) {
        // CompleteMultipartUpload may fail after a 200 with an Error body.
        if (s3::ParseXml(r->body).root != "Error") return a;
        a.retriable = true;
        a.status = Status::IoError(
            s3::DescribeFailure(config_, location_, r->response.StatusText(), r->body));
      } else if (r.ok()) {
        a.retriable = internal::IsRetriableStatus(a.http_status);
        a.status = Status::IoError(
            s3::DescribeFailure(config_, location_, r->response.StatusText(), r->body),
            a.retriable ? EIO : internal::ErrnoForStatus(a.http_status));
      } else {
        a.status = r.status();
      }
      return a;
    });
    if (!st.ok()) return st;
    return r;
  }

  std::string ObjectName() const { return "s3://" + location_.bucket + "/" + location_.key; }

 private:
  Result<Reply> SendOnce(const std::string& method, const s3::QueryList& query,
                         const std::string& body_data, bool* retriable) {
    std::string url = config_.ObjectUrl(location_);
    std::string qs;
    for (const auto& [k, v] : query) {
      qs += (qs.empty() ? "?" : "&") + s3::UriEncode(k, false);
      if (!v.empty()) qs += "=" + s3::UriEncode(v, false);
    }
    url += qs;
    const std::vector<std::string> headers = s3::AuthHeaders(
        config_, location_, method, query, std::string(s3::kUnsignedPayload), std::time(nullptr));
    internal::RequestBody body;
    if (method == "PUT" || method == "POST") body.bytes = &body_data;
    return internal::PerformRequest(handle_, http_, method, url, headers, body, retriable);
  }

  const s3::ResolvedConfig& config_;
  const s3::Location& location_;
  const HttpOptions& http_;
  CURL* handle_;
};

class S3Sink final : public Sink {
 public:
  S3Sink(std::string uri, s3::ResolvedConfig config, s3::Location location, HttpOptions http,
         S3UploadOptions upload)
      : uri_(std::move(uri)),
        config_(std::move(config)),
        location_(std::move(location)),
        http_(std::move(http)),
        upload_(upload) {}

  ~S3Sink() override {
    if (!finished_) Abort();
  }

  Status Start() {
    S3Connection conn(config_, location_, http_);
    auto reply = conn.Send("POST", {{"uploads", ""}}, "", "CreateMultipartUpload");
    if (!reply.ok()) return reply.status();
    const s3::XmlDocument doc = s3::ParseXml(reply->body);
    if (doc.well_formed && doc.root == "InitiateMultipartUploadResult") {
      upload_id_ = doc.Child("UploadId");
    }
    if (upload_id_.empty()) {
      return Status::IoError("CreateMultipartUpload of " + uri_ +
                             " answered without an InitiateMultipartUploadResult holding an "
                             "UploadId" +
                             (doc.problem.empty() ? "" : " (" + doc.problem + ")"));
    }
    int n = std::max(1, upload_.parallel_uploads);
    for (int i = 0; i < n; ++i) uploaders_.emplace_back([this] { UploadLoop(); });
    return Status::Ok();
  }

  Status WriteAt(uint64_t offset, const void* data, uint64_t length) override {
    const auto* src = static_cast<const uint8_t*>(data);
    while (length > 0) {
      const PartSpan span = PartAt(offset);
      const uint64_t index = span.index;
      const uint64_t in_part = offset - span.start;
      const uint64_t n = std::min(length, span.size - in_part);
      if (index >= kMaxParts) {
        return Status::ResourceExhausted("writing " + uri_ + ": the object would need more than " +
                                         std::to_string(kMaxParts) + " parts (raise part_bytes)");
      }
      uint8_t* dst;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (!error_.ok()) return error_;
        auto it = parts_.find(index);
        if (it == parts_.end()) {
          if (sent_.count(index)) {
            return Status::IoError("writing " + uri_ + ": bytes at " + std::to_string(offset) +
                                   " belong to part " + std::to_string(index + 1) +
                                   ", which was already uploaded");
          }
          // Back-pressure: wait for an upload slot before taking more memory.
          bool room = internal::WaitUnlessCancelled(space_cv_, lock, [&] {
            return !error_.ok() || queue_.size() < static_cast<size_t>(upload_.max_queued_parts);
          });
          if (!room) return CancelledStatus("writing " + uri_);
          if (!error_.ok()) return error_;
          it = parts_.emplace(index, Part()).first;
          it->second.bytes.resize(span.size);
        }
        dst = reinterpret_cast<uint8_t*>(it->second.bytes.data()) + in_part;
      }
      std::memcpy(dst, src, n);
      {
        std::lock_guard<std::mutex> lock(mu_);
        Part& part = parts_[index];
        end_ = std::max(end_, offset + n);
        if (index != 0) {
          part.written += n;
          if (part.written == span.size) Enqueue(index);
        }
      }
      src += n;
      offset += n;
      length -= n;
    }
    return Status::Ok();
  }

  void Preallocate(uint64_t, uint64_t) override {}

  Status Commit() override {
    if (finished_) return Status::InvalidArgument(uri_ + " is already closed");
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (error_.ok() && end_ <= upload_.part_bytes && sent_.empty()) {
        // The whole object fits in part 1: one PutObject, and the open
        // multipart upload is aborted. A multipart upload would need at
        // least one part, and AWS refuses an empty one.
        std::string body;
        if (parts_.count(0)) body = std::move(parts_[0].bytes);
        body.resize(end_);
        parts_.clear();
        lock.unlock();
        StopUploaders();
        const uint64_t size = body.size();
        S3Connection conn(config_, location_, http_);
        auto reply = conn.Send("PUT", {}, body, "PutObject");
        AbortUpload();
        finished_ = true;
        return reply.ok() ? ConfirmObject(size, "PutObject") : reply.status();
      }
      // What is left: part 1 and the last part. Anything else was never
      // completely written, which the Writer never does.
      const uint64_t last = end_ == 0 ? 0 : PartAt(end_ - 1).index;
      for (auto& [index, part] : parts_) {
        if (index == 0 || part.queued) continue;
        const uint64_t size = end_ - PartAt(end_ - 1).start;
        if (index != last || part.written != size) {
          error_ = Status::IoError("writing " + uri_ + ": part " + std::to_string(index + 1) +
                                   " has bytes that were never written");
          break;
        }
        part.bytes.resize(size);
        Enqueue(index);
      }
      if (error_.ok() && parts_.count(0)) {
        parts_[0].bytes.resize(std::min<uint64_t>(end_, upload_.part_bytes));
        Enqueue(0);
      }
      bool idle = internal::WaitUnlessCancelled(
          idle_cv_, lock, [&] { return !error_.ok() || (queue_.empty() && in_flight_ == 0); });
      if (!idle) {
        error_ = CancelledStatus("the upload of " + uri_);
        uploads_cancel_->Cancel();
      }
    }
    StopUploaders();
    Status st;
    uint64_t size;
    {
      std::lock_guard<std::mutex> lock(mu_);
      st = error_;
      size = end_;
    }
    if (st.ok()) st = Complete();
    if (st.ok()) st = ConfirmObject(size, "CompleteMultipartUpload");
    if (!st.ok()) {
      AbortUpload();
      finished_ = true;
      return st;
    }
    finished_ = true;
    return Status::Ok();
  }

  void Abort() override {
    if (finished_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (error_.ok()) error_ = Status::Cancelled("the upload of " + uri_ + " was aborted");
    }
    space_cv_.notify_all();
    idle_cv_.notify_all();
    uploads_cancel_->Cancel();  // parts in flight stop mid-transfer
    StopUploaders();
    AbortUpload();
    finished_ = true;
  }

  const std::string& uri() const override { return uri_; }
  bool writes_once() const override { return true; }

 private:
  struct PartSpan {
    uint64_t index;  // 0-based: part number index + 1
    uint64_t start;  // first byte
    uint64_t size;   // bytes, unless it is the last part
  };

  // Parts grow with the object so that S3's 10,000 parts reach far past any
  // model while small objects keep small parts (and little memory): the
  // first parts_per_size_step parts are part_bytes, the next as many twice
  // that, and so on, up to S3's 5 GiB. With the defaults the largest parts
  // of a 100 GB model are 64 MiB.
  PartSpan PartAt(uint64_t offset) const {
    const uint64_t parts_per_step = static_cast<uint64_t>(upload_.parts_per_size_step);
    uint64_t size = upload_.part_bytes, start = 0, index = 0;
    while (true) {
      const uint64_t tier_bytes = size * parts_per_step;
      if (offset - start < tier_bytes) {
        const uint64_t k = (offset - start) / size;
        return {index + k, start + k * size, size};
      }
      start += tier_bytes;
      index += parts_per_step;
      size = std::min<uint64_t>(size * 2, kMaxPartBytes);
    }
  }

  struct Part {
    std::string bytes;
    uint64_t written = 0;  // bytes received (parts after the first)
    bool queued = false;
  };

  // Called with mu_ held.
  void Enqueue(uint64_t index) TZR_REQUIRES(mu_) {
    parts_[index].queued = true;
    queue_.push_back(index);
    work_cv_.notify_one();
  }

  void UploadLoop() {
    CancelScope scope(uploads_cancel_);
    S3Connection conn(config_, location_, http_);
    while (true) {
      uint64_t index;
      std::string body;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_ || !error_.ok()) return;
        index = queue_.front();
        queue_.pop_front();
        // No writer is copying into a queued part: a full part is queued by
        // the copy that finished it, and part 1 and the tail only by Commit.
        body = std::move(parts_[index].bytes);
        parts_.erase(index);
        sent_.insert(index);
        in_flight_++;
        space_cv_.notify_all();
      }
      const std::string number = std::to_string(index + 1);
      auto reply = conn.Send("PUT", {{"partNumber", number}, {"uploadId", upload_id_}}, body,
                             "UploadPart " + number);
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_--;
      if (!reply.ok()) {
        if (error_.ok()) error_ = reply.status();
        space_cv_.notify_all();
      } else if (reply->response.etag.empty() ||
                 std::any_of(reply->response.etag.begin(), reply->response.etag.end(), [](char ch) {
                   return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
                 })) {
        if (error_.ok()) {
          error_ =
              Status::IoError("UploadPart " + number + " of " + uri_ + " answered without a well-formed ETag");
        }
        space_cv_.notify_all();
      } else {
        etags_[index + 1] = reply->response.etag;
      }
      idle_cv_.notify_all();
    }
  }

  void StopUploaders() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : uploaders_) t.join();
    uploaders_.clear();
  }

  Status Complete() {
    std::string xml = "<CompleteMultipartUpload>";
    for (const auto& [number, etag] : etags_) {
      xml += "<Part><PartNumber>" + std::to_string(number) + "</PartNumber><ETag>" +
             XmlEscape(etag) + "</ETag></Part>";
    }
    xml += "</CompleteMultipartUpload>";
    S3Connection conn(config_, location_, http_);
    auto reply = conn.Send("POST", {{"uploadId", upload_id_}}, xml, "CompleteMultipartUpload");
    if (!reply.ok()) return reply.status();
    const s3::XmlDocument doc = s3::ParseXml(reply->body);
    if (!doc.well_formed || doc.root != "CompleteMultipartUploadResult") {
      return Status::IoError("CompleteMultipartUpload of " + uri_ + " answered " +
                             reply->response.StatusText() +
                             " without a CompleteMultipartUploadResult (" +
                             (doc.problem.empty() ? "the root element is <" +
                                                        s3::ServerText(doc.root, config_) + ">"
                                                  : doc.problem) +
                             "): the object may not exist");
    }
    return Status::Ok();
  }

  // A HEAD of the object after `what` said it was stored: it must exist
  // with `size` bytes. Credentials allowed to write but not to read get a
  // 403, and then the answer to `what` is all the proof there is.
  Status ConfirmObject(uint64_t size, const std::string& what) {
    S3Connection conn(config_, location_, http_);
    auto reply = conn.Send("HEAD", {}, "", "HEAD");
    if (!reply.ok()) {
      if (reply.status().sys_errno() == EACCES) return Status::Ok();
      return reply.status().WithContext(what + " of " + uri_ +
                                        " succeeded, but the object cannot be confirmed");
    }
    const http::Response& r = reply->response;
    if (!r.has_length || r.content_length != size) {
      return Status::IoError(
          what + " of " + uri_ + " succeeded, but a HEAD finds " +
          (r.has_length ? std::to_string(r.content_length) + " bytes" : "no Content-Length") +
          " where " + std::to_string(size) + " were written");
    }
    return Status::Ok();
  }

  void AbortUpload() {
    if (upload_id_.empty()) return;
    CancelScope shield(nullptr);  // runs to the end, even for a cancelled save
    S3Connection conn(config_, location_, http_);
    // Best effort: if this fails too, the store's lifecycle rules are the
    // only cleanup left; either way no object was created.
    (void)conn.Send("DELETE", {{"uploadId", upload_id_}}, "", "AbortMultipartUpload");
    upload_id_.clear();
  }

  const std::string uri_;
  const s3::ResolvedConfig config_;
  const s3::Location location_;
  const HttpOptions http_;
  const S3UploadOptions upload_;
  std::string upload_id_;
  bool finished_ = false;

  std::mutex mu_;  // guards everything below
  std::condition_variable work_cv_, space_cv_, idle_cv_;
  std::map<uint64_t, Part> parts_ TZR_GUARDED_BY(mu_);
  std::deque<uint64_t> queue_ TZR_GUARDED_BY(mu_);
  std::set<uint64_t> sent_ TZR_GUARDED_BY(mu_);
  std::map<uint64_t, std::string> etags_ TZR_GUARDED_BY(mu_);  // part number -> ETag
  uint64_t end_ TZR_GUARDED_BY(mu_) = 0;
  int in_flight_ TZR_GUARDED_BY(mu_) = 0;
  bool stop_ TZR_GUARDED_BY(mu_) = false;
  Status error_ TZR_GUARDED_BY(mu_);
  std::vector<std::thread> uploaders_;
  // The uploaders' cancel flag: set when the upload is given up.
  const std::shared_ptr<CancelFlag> uploads_cancel_ = std::make_shared<CancelFlag>();
};

}  // namespace

Result<std::unique_ptr<Sink>> CreateS3Sink(const std::string& uri, const S3Options& s3,
                                           const HttpOptions& http, const S3UploadOptions& upload) {
  if (upload.part_bytes < kMinPartBytes || upload.part_bytes > kMaxPartBytes) {
    return Status::InvalidArgument("S3 part size " + std::to_string(upload.part_bytes) +
                                   " is outside S3's 5 MiB .. 5 GiB");
  }
  if (upload.max_queued_parts < 1 || upload.parts_per_size_step < 1) {
    return Status::InvalidArgument("max_queued_parts and parts_per_size_step must be at least 1");
  }
  TZR_ASSIGN_OR_RETURN(s3::Location location, s3::ParseS3Uri(uri));
  auto config = s3::ResolveConfig(s3, s3::Environment::FromProcess());
  if (!config.ok()) return config.status().WithContext("opening " + uri + " for writing");
  internal::CurlGlobalInit();
  auto sink =
      std::make_unique<S3Sink>(uri, std::move(config).value(), std::move(location), http, upload);
  TZR_RETURN_IF_ERROR(sink->Start());
  return std::unique_ptr<Sink>(std::move(sink));
}

}  // namespace tensorizer
