// Internal: what every libcurl-based backend (the HTTP source, the S3 sink)
// shares: global init, how HttpOptions map onto a handle, which failures are
// worth retrying, the errno a final HTTP status becomes, and the backoff.
#pragma once

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "storage/http_protocol.h"
#include "tensorizer/source.h"

namespace tensorizer::internal {

// curl_global_init, once per process.
void CurlGlobalInit();

// "tensorizer/<version> (curl)".
const char* CurlUserAgent();

// Cancellation (a progress callback aborts the transfer once the calling
// thread's cancel flag is set: tensorizer/cancel.h), keep-alive, Nagle off,
// the connect timeout, the stall (low-speed) timeout and TLS trust from
// `options`. The handle must outlive nothing here: no
// pointer into `options` is kept by libcurl (it copies strings).
void ApplyHttpOptions(CURL* handle, const HttpOptions& options);

// Which protocols a handle may speak and be redirected to: http and https
// only (never ftp://, file://...), and never from https down to http.
// `follow_redirects` false (every signed request: S3 clients re-sign for the
// new region or fail, and a redirect would carry x-amz-security-token to
// another host) makes a 3xx the final answer.
void ApplyRedirectPolicy(CURL* handle, const std::string& url, bool follow_redirects);

// Failures of the transfer itself that a new attempt may not meet: DNS,
// connect, timeouts and stalls, dropped or reset connections, TLS setup.
bool IsRetriableCurl(CURLcode rc);

// The message for a failed transfer: libcurl's error buffer, else its text
// for `rc`. Before the body (`in_headers`), CURLE_OUT_OF_MEMORY is how
// libcurl refuses a response header line over its 100 KiB limit, and says so.
std::string CurlFailureText(CURLcode rc, const char* errbuf, bool in_headers);

// The Status of a failed curl_easy_perform: kCancelled when the calling
// thread's cancel flag stopped it (see ApplyHttpOptions), else an IoError
// with CurlFailureText's message and `sys_errno` (ErrnoForCurl).
Status CurlFailure(CURLcode rc, const char* errbuf, int sys_errno, bool in_headers);

// 5xx, 429 (slow down) and 408 (request timeout).
bool IsRetriableStatus(long status);

// Retries of answers that say "not now" rather than "no": throttling (503,
// S3's SlowDown, and 429) and server errors (500, 502, 504, S3's
// InternalError "please try again", a store failing over). A store that
// throttles is asking its clients to slow down, so those are retried with
// backoff for HttpOptions::throttle_retry_ms from the first one, apart from
// max_retries: a fleet that meets a prefix's request rate slows down instead
// of failing (docs/scaling.md). Server errors get the same for at most
// kServerErrorRetryMs, enough for a storage node's restart or failover
// (bench/cluster_faults.py) without hiding a broken endpoint for minutes.
inline constexpr uint32_t kServerErrorRetryMs = 30000;
class ThrottleRetries {
 public:
  // Whether an attempt that got `status` is retried as throttled; counts it.
  bool Retry(long status, const HttpOptions& options);
  // Throttled attempts so far, for the backoff's exponent.
  int count() const { return count_; }

 private:
  int count_ = 0;
  std::chrono::steady_clock::time_point first_;
};

// The errno a failed transfer becomes, so Python raises the OSError
// subclass a socket would: the connect(2) errno of a failed connection
// (ECONNREFUSED, ENETUNREACH...), ETIMEDOUT for a timeout, else EIO. Call it
// before the handle runs another transfer.
int ErrnoForCurl(CURL* handle, CURLcode rc);

// The errno a final HTTP status becomes, so Python raises the OSError a
// local open would: 404/410 ENOENT, 401/403 EACCES, anything else EIO.
int ErrnoForStatus(long status);

// Full-jitter exponential backoff: a random delay in
// [0, min(retry_max_delay_ms, retry_base_delay_ms * 2^attempt)].
uint64_t BackoffDelayMs(const HttpOptions& options, int attempt, std::mt19937_64& rng);

// The answer to a request that sends a whole body (an upload, a control
// request): the response's header fields and up to kMaxReplyBody bytes of
// its body (an error document, a few hundred bytes of XML); a longer body
// fails the request.
inline constexpr size_t kMaxReplyBody = 1 << 20;
struct Reply {
  http::Response response;
  std::string body;
};

// A request's body: `bytes` in memory, or the first `file_size` bytes of
// the file `fd` (read with pread, so a retry sends them again).
struct RequestBody {
  const std::string* bytes = nullptr;
  int fd = -1;
  uint64_t file_size = 0;
};

// Performs one request on `handle` (reset first, then ApplyHttpOptions and
// a redirect policy that follows none: a 3xx is the answer): `method` to
// `url` with `headers` ("Name: value" lines) and `body`. Any HTTP status is
// a Reply; a failed transfer is an error, with *retriable set when a new
// attempt may not meet it (IsRetriableCurl). "Expect: 100-continue" is
// never sent: servers that do not answer it would cost a second per request.
Result<Reply> PerformRequest(CURL* handle, const HttpOptions& options, const std::string& method,
                             const std::string& url, const std::vector<std::string>& headers,
                             const RequestBody& body, bool* retriable);

// What one attempt of a request with a whole, re-sendable body came to.
struct Attempt {
  Status status;         // ok: the request is done
  long http_status = 0;  // the final answer's status, 0 when there was none
  bool retriable = false;
};

// Runs `attempt` until it succeeds, fails in a way not worth retrying, or
// the retries run out: max_retries consecutive failures, throttling and
// server errors apart (ThrottleRetries), full-jitter backoff between
// attempts, kCancelled as soon as the calling thread is cancelled. The
// final failure gets `what` as context ("UploadPart 3 of s3://b/k").
// Requests whose body is in memory or in a file (the S3 sink, the HTTP
// upload) share this loop; reads, which resume mid-object, have their own.
Status RetryRequest(const HttpOptions& options, const std::string& what,
                    const std::function<Attempt()>& attempt);

}  // namespace tensorizer::internal
