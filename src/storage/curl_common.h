// Internal: what every libcurl-based backend (the HTTP source, the S3 sink)
// shares: global init, how HttpOptions map onto a handle, which failures are
// worth retrying, the errno a final HTTP status becomes, and the backoff.
#pragma once

#include <curl/curl.h>

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

// The Status of a failed curl_easy_perform: kCancelled when the calling
// thread's cancel flag stopped it (see ApplyHttpOptions), else an IoError
// with libcurl's message (`errbuf`, else the code's description) and
// `sys_errno` (ErrnoForCurl).
Status CurlFailure(CURLcode rc, const char* errbuf, int sys_errno);

// 5xx, 429 (slow down) and 408 (request timeout).
bool IsRetriableStatus(long status);

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
