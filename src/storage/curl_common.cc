#include "storage/curl_common.h"

#include <algorithm>
#include <cerrno>
#include <mutex>

#include "tensorizer/cancel.h"

namespace tensorizer::internal {

namespace {

// Nonzero stops the transfer (CURLE_ABORTED_BY_CALLBACK): the thread that
// runs it was cancelled. libcurl calls this for every arrival, and about once
// a second while nothing arrives.
int AbortIfCancelled(void*, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return CancelRequested() ? 1 : 0;
}

}  // namespace

void CurlGlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

const char* CurlUserAgent() { return "tensorizer/" TENSORIZER_VERSION " (curl)"; }

void ApplyHttpOptions(CURL* c, const HttpOptions& options) {
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, CurlUserAgent());
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, AbortIfCancelled);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options.connect_timeout_ms));
  if (options.low_speed_timeout_ms > 0) {
    // libcurl measures stalls in whole seconds: round up.
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT,
                     static_cast<long>(std::max<uint32_t>(1, options.min_speed_bytes_per_s)));
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME,
                     static_cast<long>((options.low_speed_timeout_ms + 999) / 1000));
  }
  if (!options.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, options.ca_file.c_str());
  if (!options.ca_path.empty()) curl_easy_setopt(c, CURLOPT_CAPATH, options.ca_path.c_str());
  if (!options.verify_tls) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
  }
}

void ApplyRedirectPolicy(CURL* c, const std::string& url, bool follow_redirects) {
  const bool https = url.rfind("https://", 0) == 0;
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, https ? "https" : "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, https ? "https" : "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, follow_redirects ? 1L : 0L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  // Credentials of the URL's userinfo go to its own host only.
  curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
}

bool IsRetriableCurl(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
      return true;
    default:
      return false;
  }
}

std::string CurlFailureText(CURLcode rc, const char* errbuf, bool in_headers) {
  if (rc == CURLE_OUT_OF_MEMORY && in_headers) {
    return "the server sent a response header line longer than libcurl accepts (100 KiB)";
  }
  return errbuf[0] ? std::string(errbuf) : curl_easy_strerror(rc);
}

int ErrnoForCurl(CURL* handle, CURLcode rc) {
  if (rc == CURLE_OPERATION_TIMEDOUT) return ETIMEDOUT;
  long os_errno = 0;
  if (rc == CURLE_COULDNT_CONNECT &&
      curl_easy_getinfo(handle, CURLINFO_OS_ERRNO, &os_errno) == CURLE_OK && os_errno > 0) {
    return static_cast<int>(os_errno);
  }
  return EIO;
}

Status CurlFailure(CURLcode rc, const char* errbuf, int sys_errno, bool in_headers) {
  if (rc == CURLE_ABORTED_BY_CALLBACK && CancelRequested()) return CancelledStatus("the transfer");
  return Status::IoError(CurlFailureText(rc, errbuf, in_headers), sys_errno);
}

bool IsRetriableStatus(long status) { return status >= 500 || status == 429 || status == 408; }

bool ThrottleRetries::Retry(long status, const HttpOptions& options) {
  uint32_t window_ms;
  if (status == 503 || status == 429) {
    window_ms = options.throttle_retry_ms;
  } else if (status == 500 || status == 502 || status == 504) {
    window_ms = std::min(options.throttle_retry_ms, kServerErrorRetryMs);
  } else {
    return false;
  }
  if (window_ms == 0) return false;
  auto now = std::chrono::steady_clock::now();
  if (count_++ == 0) first_ = now;
  return now - first_ < std::chrono::milliseconds(window_ms);
}

int ErrnoForStatus(long status) {
  switch (status) {
    case 404:
    case 410:
      return ENOENT;
    case 401:
    case 403:
      return EACCES;
    default:
      return EIO;
  }
}

uint64_t BackoffDelayMs(const HttpOptions& options, int attempt, std::mt19937_64& rng) {
  uint64_t cap = options.retry_base_delay_ms;
  for (int i = 0; i < attempt && cap < options.retry_max_delay_ms; ++i) cap *= 2;
  cap = std::min<uint64_t>(cap, options.retry_max_delay_ms);
  return std::uniform_int_distribution<uint64_t>(0, cap)(rng);
}

}  // namespace tensorizer::internal
