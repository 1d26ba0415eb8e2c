// Internal: what every libcurl-based backend (the HTTP source, the S3 sink)
// shares: global init, how HttpOptions map onto a handle, which failures are
// worth retrying, the errno a final HTTP status becomes, and the backoff.
#pragma once

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>

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

}  // namespace tensorizer::internal
